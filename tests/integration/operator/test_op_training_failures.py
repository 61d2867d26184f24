"""A rank fails in a multi-node training stage: the stage fails as a whole, no GPU stays held, and a
retry starts it again. Also: the emulator refuses training objects its real CRD schema refuses."""
# ruff: noqa: F811

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from op_cluster import (
    DEPLOYMENTS,
    PYTORCHJOBS,
    TRAINJOBS,
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
from op_training import TrainingOperators, advance_until, crd_schemas, trainer_cluster

from kubefusion_operator.api import RETRY_ANNOTATION

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
RUN_URL = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
MERGE = {"Content-Type": "application/merge-patch+json"}
KINDS = {"pytorchjob": ("PyTorchJob", PYTORCHJOBS), "trainjob": ("TrainJob", TRAINJOBS)}


def two_node_run() -> dict:
    doc = example("quickstart")
    doc["spec"]["training"]["sft"]["resources"] = {"nodes": 2, "gpusPerNode": 4, "zeroStage": 3}
    doc["spec"]["training"]["sft"]["globalBatchSize"] = 16
    doc["spec"]["training"]["sft"]["microBatchSize"] = 2
    return doc


async def advance_until_training(emulator, key: str) -> str:
    """Play the cluster until the run's sft training job exists; its name."""
    (name,) = await advance_until(emulator, lambda: children(emulator, key), "the sft training job")
    return name


def stage(emulator, name: str) -> dict:
    return next(s for s in run_status(emulator, "ns1", "quickstart")["stages"] if s["name"] == name)


def shipped_runtime(max_restarts: int) -> dict:
    """The ClusterTrainingRuntime the Helm chart renders (real Helm), as `helm install` would apply it."""
    sys.path.insert(0, str(REPO / "tests" / "unit" / "packaging"))
    from packaging_chart import only, render

    return only(
        render({"trainingRuntime": {"create": True, "maxRestarts": max_restarts}}), "ClusterTrainingRuntime"
    )


async def test_a_trainjob_on_the_shipped_runtime_restarts_its_whole_gang_then_fails(
    emulator, tmp_path
) -> None:
    trainer_cluster(emulator, trainjob=True, pytorchjob=False)
    runtime = shipped_runtime(max_restarts=1)
    resp = await emulator.post("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", json=runtime)
    assert resp.status == 201, await resp.text()  # the chart's runtime passes the CRD schema check
    ops = TrainingOperators(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, two_node_run())
        sft = await advance_until_training(emulator, TRAINJOBS)
        uid = ops.job("TrainJob", sft)["metadata"]["uid"]
        await ops.start_pods("TrainJob", sft)
        before = {p["metadata"]["uid"] for p in ops.pods(sft)}

        await ops.fail_rank("TrainJob", sft, rank=1)  # JobSet recreates both nodes
        after = {p["metadata"]["uid"] for p in ops.pods(sft)}
        assert len(after) == 2 and not before & after and ops.gpus_held(sft) == 8
        seen = len(emulator.api_requests)
        await wait_for(
            lambda: any(r.resource == "trainjobs" and r.verb == "list" for r in emulator.api_requests[seen:]),
            what="a reconcile after the restart",
        )
        assert stage(emulator, "sft")["state"] == "Running"  # a restarting gang is not a failed stage
        assert condition(emulator, "ns1", "quickstart", "Failed") == "False"
        assert ops.job("TrainJob", sft)["metadata"]["uid"] == uid  # the operator left its TrainJob alone

        await ops.fail_rank("TrainJob", sft, rank=0)  # maxRestarts spent: the TrainJob fails
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Failed") == "True", what="Failed")
        assert stage(emulator, "sft")["message"].startswith(f"TrainJob/{sft} failed: JobSetFailed")
        assert ops.gpus_held(sft) == 0


@pytest.mark.parametrize("backend", KINDS)
async def test_a_failed_rank_fails_the_stage_frees_the_gpus_and_a_retry_runs_it_again(
    emulator, tmp_path, backend
) -> None:
    kind, key = KINDS[backend]
    trainer_cluster(emulator, trainjob=backend == "trainjob", pytorchjob=backend == "pytorchjob")
    ops = TrainingOperators(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, two_node_run())
        sft = await advance_until_training(emulator, key)
        assert await ops.start_pods(kind, sft) and ops.gpus_held(sft) == 8
        await wait_for(lambda: stage(emulator, "sft")["state"] == "Running", what="sft running")

        await ops.fail_rank(kind, sft, rank=1)
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Failed") == "True", what="Failed")
        assert stage(emulator, "sft")["state"] == "Failed"
        assert stage(emulator, "sft")["message"].startswith(f"{kind}/{sft} failed")
        assert ops.gpus_held(sft) == 0, ops.pods(sft)  # no rank waits on its peers holding GPUs
        assert children(emulator, DEPLOYMENTS) == []  # nothing else of the run holds GPUs either

        failed_uid = ops.job(kind, sft)["metadata"]["uid"]
        resp = await emulator.patch(
            RUN_URL, json={"metadata": {"annotations": {RETRY_ANNOTATION: "sft"}}}, headers=MERGE
        )
        assert resp.status == 200
        await wait_for(
            lambda: (
                (emulator.find(key, "ns1", sft) or {}).get("metadata", {}).get("uid")
                not in (None, failed_uid)
            ),
            what=f"a new {kind}",
        )
        await wait_for(lambda: stage(emulator, "sft")["state"] == "Running", what="sft running again")
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"


async def test_per_pod_restarts_would_leave_the_group_hanging(emulator, tmp_path) -> None:
    """Why PyTorchJob pods never restart alone: under OnFailure the stand-in, like the v1 operator,
    restarts only the failed rank and the job never fails, while its peers hold their GPUs."""
    trainer_cluster(emulator, trainjob=False, pytorchjob=True)
    ops = TrainingOperators(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, two_node_run())
        sft = await advance_until_training(emulator, PYTORCHJOBS)
        job = ops.job("PyTorchJob", sft)
        assert {r["restartPolicy"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"Never"}
        on_failure = {
            role: {**spec, "restartPolicy": "OnFailure"}
            for role, spec in job["spec"]["pytorchReplicaSpecs"].items()
        }
        await emulator.write(PYTORCHJOBS, "ns1", sft, {"spec": {"pytorchReplicaSpecs": on_failure}})
        await ops.start_pods("PyTorchJob", sft)
        await ops.fail_rank("PyTorchJob", sft, rank=1)
        assert not (ops.job("PyTorchJob", sft).get("status") or {}).get("conditions")
        assert ops.gpus_held(sft) == 8


@pytest.mark.skipif(not crd_schemas.schemas_available(), reason=crd_schemas.MISSING_REASON)
@pytest.mark.parametrize("backend", KINDS)
async def test_the_emulator_refuses_a_training_object_its_crd_schema_refuses(emulator, backend) -> None:
    trainer_cluster(emulator, trainjob=True, pytorchjob=True)
    kind, _ = KINDS[backend]
    group, plural = {"trainjob": ("trainer.kubeflow.org/v1alpha1", "trainjobs")}.get(
        backend, ("kubeflow.org/v1", "pytorchjobs")
    )
    spec = (
        {"runtimeRef": {"name": "kubefusion-torch"}, "trainer": {"numNodes": "two"}}
        if backend == "trainjob"
        else {"pytorchReplicaSpecs": {"Master": {"replicas": "one", "template": {}}}, "cleanPodPolicy": "x"}
    )
    bad = {"apiVersion": group, "kind": kind, "metadata": {"name": "bad"}, "spec": spec}
    resp = await emulator.post(f"/apis/{group}/namespaces/ns1/{plural}", json=bad)
    assert resp.status == 422
    body = await resp.json()
    assert body["kind"] == "Status" and body["reason"] == "Invalid"
    assert "replicas" in body["message"] or "numNodes" in body["message"], body["message"]
    assert emulator.find(f"{group}/{plural}", "ns1", "bad") is None


@pytest.mark.parametrize(("length", "status"), [(54, 422), (53, 201)])
async def test_the_emulator_refuses_a_trainjob_whose_pod_hostnames_are_too_long(
    emulator, length, status
) -> None:
    """A JobSet names its pods <trainjob>-node-0-<index>: 53 characters + "-node-0-99" is the most that fits."""
    trainer_cluster(emulator, trainjob=True, pytorchjob=False)
    job = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "t" * length},
        "spec": {"runtimeRef": {"name": "kubefusion-torch"}, "trainer": {"numNodes": 100}},
    }
    resp = await emulator.post("/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns1/trainjobs", json=job)
    assert resp.status == status, await resp.text()
    if status == 422:
        assert "spec.trainer.numNodes: Invalid value" in (await resp.json())["message"]
