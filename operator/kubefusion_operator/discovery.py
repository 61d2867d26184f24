"""Which optional APIs the cluster serves, and the training backend a run gets. Decisions are pure.

The operator touches two APIs that a cluster may lack: Kubeflow Trainer v2's TrainJob and the v1
training operator's PyTorchJob. It asks the API server's discovery (GET /apis/<group>/<version>,
readable by every authenticated user) at start and again when a run needs a kind it has not seen;
a kind that is not served is simply absent, never an error.

    served = await probe(api_get_path)                 # frozenset of Kind names, e.g. {"TrainJob"}
    choice = choose_backend("auto", served, recorded)  # BackendChoice(backend="trainjob", ...)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

INSTALL_DOC = "docs/install.md#training-operator"


@dataclass(frozen=True)
class OptionalKind:
    kind: str
    group: str
    version: str
    plural: str
    backend: str  # the spec.training.backend value that selects it

    @property
    def crd(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def discovery_path(self) -> str:
        return f"/apis/{self.group}/{self.version}"


TRAINJOB = OptionalKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "trainjob")
PYTORCHJOB = OptionalKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "pytorchjob")
OPTIONAL_KINDS = (TRAINJOB, PYTORCHJOB)  # in auto's order of preference
BY_BACKEND = {k.backend: k for k in OPTIONAL_KINDS}

Fetch = Callable[[str], Awaitable[dict[str, Any] | None]]  # GET a path; None on 404


def served_kinds(discovery: dict[str, dict[str, Any] | None]) -> frozenset[str]:
    """Kinds whose plural appears in their group/version's APIResourceList (path -> body or None)."""
    served = set()
    for kind in OPTIONAL_KINDS:
        body = discovery.get(kind.discovery_path) or {}
        if any(r.get("name") == kind.plural for r in body.get("resources") or []):
            served.add(kind.kind)
    return frozenset(served)


async def probe(fetch: Fetch, kinds: Iterable[OptionalKind] = OPTIONAL_KINDS) -> frozenset[str]:
    """Ask discovery which of the optional kinds the API server serves now."""
    bodies = {}
    for path in {k.discovery_path for k in kinds}:
        bodies[path] = await fetch(path)
    return served_kinds(bodies)


@dataclass(frozen=True)
class BackendChoice:
    backend: str | None  # trainjob | pytorchjob; None: the run must wait for one to be installed
    reason: str = ""  # CamelCase, for the condition while waiting
    message: str = ""


def choose_backend(requested: str, served: frozenset[str], recorded: str | None = None) -> BackendChoice:
    """The backend for a run: `recorded` once its training started (never switch mid-run), else
    the requested one, auto preferring TrainJob. Waiting, the message names the missing CRD(s)."""
    if recorded is not None:
        wanted = [BY_BACKEND[recorded]]
    elif requested == "auto":
        wanted = list(OPTIONAL_KINDS)
    else:
        wanted = [BY_BACKEND[requested]]
    for kind in wanted:
        if kind.kind in served:
            return BackendChoice(kind.backend)
    crds = " or ".join(f"{k.kind} ({k.crd})" for k in wanted)
    why = f"the run uses {recorded}" if recorded else f"spec.training.backend is {requested}"
    return BackendChoice(
        None,
        "TrainingBackendMissing",
        f"waiting for a training operator: no {crds} CRD is served ({why}); install Kubeflow "
        f"Trainer v2 or the training operator, see {INSTALL_DOC}",
    )


class Discovery:
    """The served optional kinds, probed at start and re-probed on demand at most every `min_interval`."""

    def __init__(
        self, fetch: Fetch, *, min_interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self._fetch = fetch
        self._min_interval = min_interval
        self._clock = clock
        self._checked: float | None = None
        self.served: frozenset[str] = frozenset()

    async def refresh(self, *, force: bool = False) -> frozenset[str]:
        now = self._clock()
        if force or self._checked is None or now - self._checked >= self._min_interval:
            self.served = await probe(self._fetch)
            self._checked = now
        return self.served

    async def backend_for(self, requested: str, recorded: str | None) -> BackendChoice:
        """choose_backend on what is served; with none, discovery is asked again (rate-limited), so a
        CRD installed since counts without an operator restart."""
        choice = choose_backend(requested, await self.current(), recorded)
        if choice.backend is None:
            choice = choose_backend(requested, await self.refresh(), recorded)
        return choice

    async def current(self) -> frozenset[str]:
        """The last probe's answer (probing first if there was none)."""
        if self._checked is None:
            return await self.refresh()
        return self.served
