"""Training on whatever the cluster has: TrainJob (Trainer v2), PyTorchJob (v1), both, or neither yet.

Each cluster serves only the CRDs a test installs (others answer 404 and are absent from discovery),
and TrainJob/PyTorchJob writes are checked against the real CRD schemas (emulator_admission/crd_schemas).
"""
# ruff: noqa: F811

from __future__ import annotations

import pytest
from op_cluster import (
    PYTORCHJOBS,
    TRAINJOBS,
    Cluster,
    children,
    condition,
    create_run,
    drive_to_end,
    example,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import emulator  # noqa: F401
from op_training import advance_until, install, trainer_cluster

pytestmark = pytest.mark.integration

CHILD_PLURALS = ("deployments", "services", "jobs", "pytorchjobs", "trainjobs")
CLUSTERS = {
    "trainjob-only": ({"trainjob": True, "pytorchjob": False}, "trainjob"),
    "pytorchjob-only": ({"trainjob": False, "pytorchjob": True}, "pytorchjob"),
    "both": ({"trainjob": True, "pytorchjob": True}, "trainjob"),  # auto prefers Trainer v2
}
RUNS = {"fusechat3": "quickstart", "wrpo": "wrpo-llama3-8b"}
TRAIN_STAGES = {"fusechat3": ["sft", "dpo"], "wrpo": ["sft", "wrpo"]}
KEYS = {"trainjob": TRAINJOBS, "pytorchjob": PYTORCHJOBS}


def added_children(emulator) -> list[tuple[str, str]]:
    return [(p, n) for t, p, n in emulator.timeline if t == "ADDED" and p in CHILD_PLURALS]


async def drive_with_restarts(emulator, tmp_path, name: str, rounds: int = 60) -> None:
    """A fresh operator for every step the cluster takes, until the run has Succeeded."""
    cluster = Cluster(emulator)
    for _ in range(rounds):
        async with operator_running(emulator, tmp_path):
            await wait_for(lambda: run_status(emulator, "ns1", name).get("observedGeneration"))
            seen = len(emulator.timeline)
            await cluster.advance()
            await wait_for(
                lambda seen=seen: (
                    any(t[0] == "ADDED" and t[1] in CHILD_PLURALS for t in emulator.timeline[seen:])
                    or condition(emulator, "ns1", name, "Succeeded") == "True"
                    or len(emulator.timeline) > seen + 2
                ),
                what="the operator's reaction",
            )
        if condition(emulator, "ns1", name, "Succeeded") == "True":
            return
    raise AssertionError(f"{name} did not finish: {run_status(emulator, 'ns1', name)}")


@pytest.mark.parametrize("recipe", RUNS)
@pytest.mark.parametrize("cluster", CLUSTERS)
async def test_auto_backend_runs_to_the_end_across_restarts(emulator, tmp_path, cluster, recipe) -> None:
    served, expected = CLUSTERS[cluster]
    trainer_cluster(emulator, **served)
    doc = example(RUNS[recipe])
    name = doc["metadata"]["name"]
    assert doc["spec"].get("training", {}).get("backend", "auto") == "auto"
    await create_run(emulator, doc)
    await drive_with_restarts(emulator, tmp_path, name)

    status = run_status(emulator, "ns1", name)
    assert status["trainingBackend"] == expected
    assert {s["name"]: s["state"] for s in status["stages"]} == {
        s["name"]: "Succeeded" for s in status["stages"]
    }
    plurals = {"trainjob": "trainjobs", "pytorchjob": "pytorchjobs"}
    training = [(p, n) for p, n in added_children(emulator) if p in plurals.values()]
    assert training == [(plurals[expected], f"{name}-{stage}") for stage in TRAIN_STAGES[recipe]]
    # restarts at every step created nothing twice (a server's Deployment and Service share a name)
    names = added_children(emulator)
    assert len(names) == len(set(names))
    sft = emulator.find(KEYS[expected], "ns1", f"{name}-sft")
    assert sft is not None and status["stages"][[s["name"] for s in status["stages"]].index("sft")][
        "children"
    ] == [f"{'TrainJob' if expected == 'trainjob' else 'PyTorchJob'}/{name}-sft"]


@pytest.mark.parametrize("recipe", RUNS)
async def test_without_a_training_operator_the_run_waits_then_finishes_once_one_is_installed(
    emulator, tmp_path, recipe
) -> None:
    trainer_cluster(emulator, trainjob=False, pytorchjob=False)
    doc = example(RUNS[recipe])
    name = doc["metadata"]["name"]

    def waiting() -> bool:
        conds = {c["type"]: c for c in run_status(emulator, "ns1", name).get("conditions", [])}
        return conds.get("Progressing", {}).get("reason") == "TrainingBackendMissing"

    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        await wait_for(lambda: children(emulator, "batch/v1/jobs"), what="prepare")
        await advance_until(emulator, waiting, "prepare to build, then the wait", run=name)
    status = run_status(emulator, "ns1", name)
    stages = {s["name"]: s["state"] for s in status["stages"]}
    assert [stages[s] for s in ("prepare", "sample", "score", "build")] == ["Succeeded"] * 4
    assert stages["sft"] == "Pending" and status.get("trainingBackend") is None
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "True"
    assert "trainjobs.trainer.kubeflow.org" in progressing["message"]
    assert "pytorchjobs.kubeflow.org" in progressing["message"]
    assert "docs/install.md" in progressing["message"]
    assert condition(emulator, "ns1", name, "Failed") == "False"

    # A restart while waiting changes nothing; installing Trainer v2 lets the same operator go on.
    before, seen = added_children(emulator), len(emulator.api_requests)
    async with operator_running(emulator, tmp_path):
        await wait_for(
            lambda: any(r.verb == "list" and r.resource == "jobs" for r in emulator.api_requests[seen:]),
            what="a reconcile by the new operator",
        )
        await wait_for(waiting, what="still waiting after a restart")
        assert added_children(emulator) == before
        install(emulator, "trainjob")
        await wait_for(lambda: children(emulator, TRAINJOBS), timeout=20, what="the sft TrainJob")
        await drive_to_end(emulator, name)
    status = run_status(emulator, "ns1", name)
    assert condition(emulator, "ns1", name, "Succeeded") == "True", status
    assert status["trainingBackend"] == "trainjob"
    assert not waiting()


async def test_a_requested_backend_that_is_missing_waits_even_when_the_other_is_there(
    emulator, tmp_path
) -> None:
    trainer_cluster(emulator, trainjob=False, pytorchjob=True)
    doc = example("quickstart", training={**example("quickstart")["spec"]["training"], "backend": "trainjob"})
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)

        def reason() -> str | None:
            conds = run_status(emulator, "ns1", "quickstart").get("conditions", [])
            return next((c["reason"] for c in conds if c["type"] == "Progressing"), None)

        await advance_until(emulator, lambda: reason() == "TrainingBackendMissing", "the wait")
        message = run_status(emulator, "ns1", "quickstart")["message"]
        assert "trainjobs.trainer.kubeflow.org" in message and "pytorchjobs" not in message
        assert children(emulator, PYTORCHJOBS) == []


SUSPEND_FIELD = {
    "trainjob": lambda job: job["spec"].get("suspend"),
    "pytorchjob": lambda job: job["spec"]["runPolicy"].get("suspend"),
}
KUEUE_SUSPEND = {
    "trainjob": {"spec": {"suspend": True}},
    "pytorchjob": {"spec": {"runPolicy": {"suspend": True}}},
}


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
async def test_suspend_resume_and_kueue_with_either_backend(emulator, tmp_path, backend) -> None:
    trainer_cluster(emulator, trainjob=backend == "trainjob", pytorchjob=backend == "pytorchjob")
    key = KEYS[backend]
    url = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
    merge = {"Content-Type": "application/merge-patch+json"}

    def sft_stage() -> str:
        stages = run_status(emulator, "ns1", "quickstart").get("stages", [])
        return next((s["state"] for s in stages if s["name"] == "sft"), "")

    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart", queueName="gpu-queue"))
        (sft,) = await advance_until(emulator, lambda: children(emulator, key), "the sft training job")
        job = emulator.find(key, "ns1", sft)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"

        # Kueue holds the job suspended until the queue admits it: the stage is queued, not paused.
        await emulator.write(key, "ns1", sft, KUEUE_SUSPEND[backend])
        await wait_for(lambda: sft_stage() == "Running", what="queued counts as running")
        assert condition(emulator, "ns1", "quickstart", "Suspended") == "False"
        unsuspend = (
            {"spec": {"suspend": False}}
            if backend == "trainjob"
            else {"spec": {"runPolicy": {"suspend": False}}}
        )
        await emulator.write(key, "ns1", sft, unsuspend)  # admitted

        # The user pauses the run. Kueue would unsuspend a job it admitted, so the operator stops the
        # queued training job instead (it resumes from its checkpoint) and creates it again on resume.
        uid = job["metadata"]["uid"]
        assert (await emulator.patch(url, json={"spec": {"suspend": True}}, headers=merge)).status == 200
        await wait_for(lambda: emulator.find(key, "ns1", sft) is None, what="stopped")
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Suspended") == "True", what="Suspended"
        )
        assert (await emulator.patch(url, json={"spec": {"suspend": False}}, headers=merge)).status == 200
        await wait_for(
            lambda: (emulator.find(key, "ns1", sft) or {}).get("metadata", {}).get("uid") not in (None, uid),
            what="created again",
        )
        recreated = emulator.find(key, "ns1", sft)
        assert SUSPEND_FIELD[backend](recreated) is False
        assert recreated["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
async def test_suspend_without_kueue_suspends_the_training_job_in_place(emulator, tmp_path, backend) -> None:
    trainer_cluster(emulator, trainjob=backend == "trainjob", pytorchjob=backend == "pytorchjob")
    key = KEYS[backend]
    url = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        (sft,) = await advance_until(emulator, lambda: children(emulator, key), "the sft training job")
        uid = emulator.find(key, "ns1", sft)["metadata"]["uid"]
        assert (await emulator.patch(url, json={"spec": {"suspend": True}}, headers=merge)).status == 200
        await wait_for(
            lambda: SUSPEND_FIELD[backend](emulator.find(key, "ns1", sft)) is True, what="suspended"
        )
        assert (await emulator.patch(url, json={"spec": {"suspend": False}}, headers=merge)).status == 200
        await wait_for(
            lambda: SUSPEND_FIELD[backend](emulator.find(key, "ns1", sft)) is False, what="resumed"
        )
        assert emulator.find(key, "ns1", sft)["metadata"]["uid"] == uid  # the same job, paused in place
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"


async def test_trainjob_progress_reaches_the_run_status(emulator, tmp_path) -> None:
    trainer_cluster(emulator, trainjob=True, pytorchjob=False)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await advance_until(emulator, lambda: children(emulator, TRAINJOBS), "the sft TrainJob")
        trainer_status = {
            "progressPercentage": 40,
            "lastUpdatedTime": "2026-01-01T00:00:00Z",
            "metrics": [{"name": "loss", "value": "0.5"}],
        }
        await emulator.write(
            TRAINJOBS, "ns1", "quickstart-sft", {"status": {"trainerStatus": trainer_status}}
        )

        def sft_progress() -> dict:
            stages = run_status(emulator, "ns1", "quickstart").get("stages", [])
            return next(s for s in stages if s["name"] == "sft").get("progress") or {}

        await wait_for(lambda: sft_progress().get("done") == 40, what="the TrainJob's progress")
        assert sft_progress() == {"done": 40, "total": 100, "unit": "percent", "lastLoss": 0.5}
        assert run_status(emulator, "ns1", "quickstart")["progress"].endswith("sft 40%")
