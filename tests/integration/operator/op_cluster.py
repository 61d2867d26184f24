"""Run the real operator (kopf) against the emulator, and play the cluster's controllers in tests.

    async with emulator_server() as emu, operator_running(emu, tmp_path, fast_config()) as op:
        await create_run(emu, "examples/quickstart.yaml", namespace="ns1")
        cluster = Cluster(emu)
        await cluster.ready_deployments(); await cluster.complete_jobs(); ...
        await wait_for(lambda: run_condition(emu, "ns1", "quickstart", "Succeeded") == "True")

The test plays what a cluster does on its own: Deployments become ready, Jobs complete or fail,
PyTorchJobs and TrainJobs succeed or fail (op_training.py has the training operators' stand-ins),
and pods serve metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from op_emulator import RecordingEmulator, write_kubeconfig

from kubefusion_operator.handlers import OperatorConfig
from kubefusion_operator.main import run_operator
from kubefusion_operator.metrics import OperatorMetrics

REPO = Path(__file__).resolve().parents[3]
RUNS = "kubefusion.dev/v1alpha1/fusionruns"
DEPLOYMENTS, JOBS, PYTORCHJOBS, SERVICES = (
    "apps/v1/deployments",
    "batch/v1/jobs",
    "kubeflow.org/v1/pytorchjobs",
    "v1/services",
)
TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"


def fast_config(**overrides: Any) -> OperatorConfig:
    """Tight timings so that tests take seconds."""
    values = dict(
        progress_interval=0.5,
        watch_timeout=30,
        reconnect_backoff=0.1,
        batch_window=0.02,
        exit_timeout=0.1,
        discovery_interval=0.5,
    )
    values.update(overrides)
    return OperatorConfig(**values)


@contextlib.asynccontextmanager
async def operator_running(
    emulator: RecordingEmulator,
    tmp_path: Path,
    config: OperatorConfig | None = None,
    metrics: OperatorMetrics | None = None,
    namespaces: list[str] | None = None,
    kubeconfig: Path | None = None,
) -> AsyncIterator[OperatorMetrics]:
    """The real kopf operator in this event loop, logged in through a kubeconfig (by default one with a
    token for the emulator's plain-HTTP URL); cancelled on exit."""
    kubeconfig = kubeconfig or write_kubeconfig(tmp_path / "kubeconfig", str(emulator.url))
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    metrics = metrics or OperatorMetrics()
    ready = asyncio.Event()
    task = asyncio.create_task(
        run_operator(config or fast_config(), metrics=metrics, ready_flag=ready, namespaces=namespaces)
    )
    try:
        await asyncio.wait_for(ready.wait(), 20)
        yield metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll until predicate() is truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


CLUSTER_STORAGE = {"pvc": "kubefusion-runs"}  # what a cluster run needs (validation.cluster_errors)


def example(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """An example as a cluster run: a local-folder storage.uri (the quickstart's) becomes a PVC."""
    doc = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    if not doc["spec"].get("storage", {}).get("pvc"):
        doc["spec"]["storage"] = dict(CLUSTER_STORAGE)
    doc["spec"].update(copy.deepcopy(spec_overrides))
    return doc


async def create_run(
    emulator: RecordingEmulator, doc: dict[str, Any], namespace: str = "ns1"
) -> dict[str, Any]:
    resp = await emulator.post(f"/apis/kubefusion.dev/v1alpha1/namespaces/{namespace}/fusionruns", json=doc)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def run_status(emulator: RecordingEmulator, namespace: str, name: str) -> dict[str, Any]:
    obj = emulator.find(RUNS, namespace, name)
    return (obj or {}).get("status") or {}


def condition(emulator: RecordingEmulator, namespace: str, name: str, type_: str) -> str | None:
    for cond in run_status(emulator, namespace, name).get("conditions", []):
        if cond["type"] == type_:
            return cond["status"]
    return None


def children(
    emulator: RecordingEmulator, key: str, namespace: str = "ns1", run: str | None = None
) -> list[str]:
    return sorted(
        o["metadata"]["name"]
        for o in emulator.live(key, namespace)
        if run is None or o["metadata"]["labels"].get("kubefusion.dev/run") == run
    )


class Cluster:
    """Plays the cluster's controllers by writing child status, as they would."""

    def __init__(self, emulator: RecordingEmulator, namespace: str = "ns1") -> None:
        self.emu = emulator
        self.ns = namespace

    async def ready(self, name: str) -> None:
        await self.emu.write(DEPLOYMENTS, self.ns, name, {"status": {"readyReplicas": 1, "replicas": 1}})

    async def complete(self, name: str) -> None:
        await self.emu.write(
            JOBS,
            self.ns,
            name,
            {
                "status": {
                    "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}],
                }
            },
        )

    async def fail(
        self,
        name: str,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> None:
        await self.emu.write(
            JOBS,
            self.ns,
            name,
            {
                "status": {
                    "failed": 4,
                    "conditions": [
                        {"type": "Failed", "status": "True", "reason": reason, "message": message}
                    ],
                }
            },
        )

    async def train(self, name: str, outcome: str = "Succeeded") -> None:
        await self.emu.write(
            PYTORCHJOBS,
            self.ns,
            name,
            {
                "status": {
                    "conditions": [{"type": outcome, "status": "True", "reason": f"PyTorchJob{outcome}"}]
                }
            },
        )

    async def trainjob(self, name: str, outcome: str = "Complete") -> None:
        """Trainer v2's verdict on a TrainJob: Complete or Failed (JobSet finished)."""
        await self.emu.write(
            TRAINJOBS,
            self.ns,
            name,
            {
                "status": {
                    "conditions": [
                        {
                            "type": outcome,
                            "status": "True",
                            "reason": f"JobSet{outcome}",
                            "message": f"jobset {outcome.lower()}",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ]
                }
            },
        )

    async def advance(self) -> list[str]:
        """Move every live child one step (ready / complete / succeed); return what moved."""
        moved = []
        for obj in self.emu.live(DEPLOYMENTS, self.ns):
            if not (obj.get("status") or {}).get("readyReplicas") and obj["spec"].get("replicas", 1) > 0:
                await self.ready(obj["metadata"]["name"])
                moved.append(f"Deployment/{obj['metadata']['name']}")
        for obj in self.emu.live(JOBS, self.ns):
            if not (obj.get("status") or {}).get("conditions") and not obj["spec"].get("suspend"):
                await self.complete(obj["metadata"]["name"])
                moved.append(f"Job/{obj['metadata']['name']}")
        for obj in self.emu.live(PYTORCHJOBS, self.ns):
            if not (obj.get("status") or {}).get("conditions") and not obj["spec"]["runPolicy"].get(
                "suspend"
            ):
                await self.train(obj["metadata"]["name"])
                moved.append(f"PyTorchJob/{obj['metadata']['name']}")
        for obj in self.emu.live(TRAINJOBS, self.ns):
            if not (obj.get("status") or {}).get("conditions") and not obj["spec"].get("suspend"):
                await self.trainjob(obj["metadata"]["name"])
                moved.append(f"TrainJob/{obj['metadata']['name']}")
        return moved


async def drive_to_end(
    emulator: RecordingEmulator,
    name: str,
    namespace: str = "ns1",
    timeout: float = 30.0,
    on_step: Callable[[list[str]], Awaitable[None]] | None = None,
) -> list[str]:
    """Play the cluster until the run has Succeeded or Failed; the order in which children moved."""
    cluster = Cluster(emulator, namespace)
    order: list[str] = []
    deadline = time.monotonic() + timeout
    while (
        condition(emulator, namespace, name, "Succeeded") != "True"
        and condition(emulator, namespace, name, "Failed") != "True"
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"run {name} did not finish: {run_status(emulator, namespace, name)}")
        moved = await cluster.advance()
        order += moved
        if moved and on_step is not None:
            await on_step(moved)
        await asyncio.sleep(0.02)
    return order
