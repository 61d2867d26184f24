"""Which training backend a run gets from what the API server serves, and when discovery asks again."""

from __future__ import annotations

import asyncio

import pytest

from kubefusion_operator.discovery import Discovery, choose_backend, probe

TRAINER = "/apis/trainer.kubeflow.org/v1alpha1"
KUBEFLOW = "/apis/kubeflow.org/v1"
RESOURCES = {
    TRAINER: {"kind": "APIResourceList", "resources": [{"name": "trainjobs"}, {"name": "trainjobs/status"}]},
    KUBEFLOW: {"kind": "APIResourceList", "resources": [{"name": "pytorchjobs"}, {"name": "tfjobs"}]},
}


def fetcher(served: dict[str, dict]) -> tuple[object, list[str]]:
    calls: list[str] = []

    async def fetch(path: str) -> dict | None:
        calls.append(path)
        return served.get(path)

    return fetch, calls


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        ({}, frozenset()),
        ({TRAINER: RESOURCES[TRAINER]}, frozenset({"TrainJob"})),
        ({KUBEFLOW: RESOURCES[KUBEFLOW]}, frozenset({"PyTorchJob"})),
        (RESOURCES, frozenset({"TrainJob", "PyTorchJob"})),
        # the group is served but not the kind (e.g. only TFJob from an old operator)
        ({KUBEFLOW: {"resources": [{"name": "tfjobs"}]}}, frozenset()),
    ],
)
def test_probe_reads_discovery(served: dict, expected: frozenset) -> None:
    fetch, _ = fetcher(served)
    assert asyncio.run(probe(fetch)) == expected


@pytest.mark.parametrize(
    ("requested", "served", "recorded", "backend"),
    [
        ("auto", {"TrainJob", "PyTorchJob"}, None, "trainjob"),
        ("auto", {"TrainJob"}, None, "trainjob"),
        ("auto", {"PyTorchJob"}, None, "pytorchjob"),
        ("pytorchjob", {"TrainJob", "PyTorchJob"}, None, "pytorchjob"),
        ("trainjob", {"PyTorchJob"}, None, None),
        ("auto", set(), None, None),
        # training started on PyTorchJob: installing Trainer v2 later does not switch the run
        ("auto", {"TrainJob", "PyTorchJob"}, "pytorchjob", "pytorchjob"),
        ("auto", {"TrainJob"}, "pytorchjob", None),
    ],
)
def test_choose_backend(requested: str, served: set, recorded: str | None, backend: str | None) -> None:
    choice = choose_backend(requested, frozenset(served), recorded)
    assert choice.backend == backend
    if backend is None:
        assert choice.reason == "TrainingBackendMissing"
        assert "docs/install.md" in choice.message


def test_waiting_message_names_the_missing_crds() -> None:
    auto = choose_backend("auto", frozenset())
    assert "trainjobs.trainer.kubeflow.org" in auto.message and "pytorchjobs.kubeflow.org" in auto.message
    only = choose_backend("trainjob", frozenset({"PyTorchJob"}))
    assert "trainjobs.trainer.kubeflow.org" in only.message and "pytorchjobs" not in only.message


def test_discovery_asks_again_at_most_every_interval() -> None:
    served: dict[str, dict] = {}
    fetch, calls = fetcher(served)
    now = [0.0]
    discovery = Discovery(fetch, min_interval=10.0, clock=lambda: now[0])

    async def scenario() -> list[frozenset[str]]:
        seen = [await discovery.current()]
        served[TRAINER] = RESOURCES[TRAINER]  # Trainer v2 installed
        seen.append(await discovery.refresh())  # too soon: the cached answer
        now[0] = 10.0
        seen.append(await discovery.refresh())
        seen.append(await discovery.current())
        return seen

    assert asyncio.run(scenario()) == [frozenset(), frozenset(), {"TrainJob"}, {"TrainJob"}]
    assert len(calls) == 4  # two probes of two group/versions


def test_backend_for_asks_again_only_when_nothing_fits() -> None:
    served: dict[str, dict] = {KUBEFLOW: RESOURCES[KUBEFLOW]}
    fetch, calls = fetcher(served)
    now = [0.0]
    discovery = Discovery(fetch, min_interval=5.0, clock=lambda: now[0])

    async def scenario() -> list:
        first = await discovery.backend_for("auto", None)  # probes once: PyTorchJob
        probes = len(calls)
        served[TRAINER] = RESOURCES[TRAINER]
        again = await discovery.backend_for("auto", None)  # a backend fits: no new probe
        assert len(calls) == probes
        waiting = await discovery.backend_for("trainjob", None)  # none fits, too soon to ask again
        now[0] = 5.0
        found = await discovery.backend_for("trainjob", None)  # asks again: Trainer v2 is there now
        return [first.backend, again.backend, waiting.backend, found.backend]

    assert asyncio.run(scenario()) == ["pytorchjob", "pytorchjob", None, "trainjob"]
