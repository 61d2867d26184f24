"""Suspend and resume, a failing Job and its retry, deletion, an invalid spec."""
# ruff: noqa: F811

from __future__ import annotations

import pytest
from op_cluster import (
    DEPLOYMENTS,
    JOBS,
    RUNS,
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

from kubefusion_operator.api import RETRY_ANNOTATION

pytestmark = pytest.mark.integration
RUN_URL = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def patch_run(emulator, patch: dict) -> None:
    resp = await emulator.patch(RUN_URL, json=patch, headers=MERGE)
    assert resp.status == 200, await resp.text()


async def test_suspend_and_resume(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2, what="servers")
        await cluster.ready("quickstart-adder-serve")
        await wait_for(lambda: "quickstart-adder-sample" in children(emulator, JOBS), what="sampler")

        await patch_run(emulator, {"spec": {"suspend": True}})
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Suspended") == "True", what="Suspended"
        )
        assert [d["spec"]["replicas"] for d in emulator.live(DEPLOYMENTS, "ns1")] == [0, 0]
        assert emulator.find(JOBS, "ns1", "quickstart-adder-sample")["spec"]["suspend"] is True
        status = run_status(emulator, "ns1", "quickstart")
        assert status["observedGeneration"] == 2
        assert condition(emulator, "ns1", "quickstart", "Progressing") == "False"
        assert {s["name"]: s["state"] for s in status["stages"]}["sample"] == "Suspended"
        # Nothing new starts while suspended, even when a server reports ready.
        seen = len(emulator.api_requests)
        await cluster.ready("quickstart-reverser-serve")
        await wait_for(
            lambda: any(
                r.verb == "list" and r.resource == "jobs" and r.namespaced
                for r in emulator.api_requests[seen:]
            ),
            what="a reconcile after the server became ready",
        )
        assert "quickstart-reverser-sample" not in children(emulator, JOBS)

        await patch_run(emulator, {"spec": {"suspend": False}})
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True", what="resumed"
        )
        await wait_for(lambda: [d["spec"]["replicas"] for d in emulator.live(DEPLOYMENTS, "ns1")] == [1, 1])
        assert emulator.find(JOBS, "ns1", "quickstart-adder-sample")["spec"]["suspend"] is False
        assert condition(emulator, "ns1", "quickstart", "Suspended") == "False"
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"


async def test_failing_job_fails_the_run_and_retry_resumes_it(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.fail("quickstart-prepare", message="row 17: prompt column 'prompt' is missing")
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Failed") == "True", what="Failed")
        status = run_status(emulator, "ns1", "quickstart")
        assert condition(emulator, "ns1", "quickstart", "Stalled") == "True"
        assert condition(emulator, "ns1", "quickstart", "Ready") == "False"
        assert status["stage"] == "prepare"
        assert "Job/quickstart-prepare" in status["message"] and "BackoffLimitExceeded" in status["message"]
        assert "row 17" in status["message"]
        prepare = status["stages"][0]
        assert prepare["state"] == "Failed" and "Job/quickstart-prepare" in prepare["message"]
        assert children(emulator, DEPLOYMENTS) == []  # nothing else started

        await patch_run(emulator, {"metadata": {"annotations": {RETRY_ANNOTATION: "prepare"}}})
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True", what="retry"
        )
        await wait_for(lambda: not (emulator.find(JOBS, "ns1", "quickstart-prepare") or {}).get("status"))
        await wait_for(
            lambda: (
                RETRY_ANNOTATION
                not in (emulator.find(RUNS, "ns1", "quickstart")["metadata"].get("annotations") or {})
            )
        )
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"
    assert condition(emulator, "ns1", "quickstart", "Failed") == "False"


async def test_deleting_a_run_deletes_its_children(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await create_run(emulator, {**example("quickstart"), "metadata": {"name": "other"}})
        await wait_for(lambda: children(emulator, JOBS) == ["other-prepare", "quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2)
        assert not emulator.find(RUNS, "ns1", "quickstart")["metadata"].get("finalizers")
        resp = await emulator.delete(RUN_URL)
        assert resp.status == 200
        await wait_for(
            lambda: (
                children(emulator, DEPLOYMENTS, run="quickstart") == []
                and children(emulator, JOBS, run="quickstart") == []
                and children(emulator, "v1/services", run="quickstart") == []
                and children(emulator, "v1/configmaps", run="quickstart") == []
            ),
            what="cleanup",
        )
        assert children(emulator, JOBS, run="other") == ["other-prepare"]  # other runs are untouched


async def test_deleting_while_the_operator_is_down_is_not_blocked(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
    resp = await emulator.delete(RUN_URL)
    assert resp.status == 200
    assert emulator.find(RUNS, "ns1", "quickstart") is None  # no finalizer kept it


async def test_invalid_spec_is_reported_not_retried(emulator, tmp_path) -> None:
    doc = example("quickstart")
    doc["spec"]["training"]["sft"]["globalBatchSize"] = 15  # not divisible by microBatchSize 16
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, doc)
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Failed") == "True")
    status = run_status(emulator, "ns1", "quickstart")
    assert "spec.training.sft.globalBatchSize" in status["message"]
    assert condition(emulator, "ns1", "quickstart", "Stalled") == "True"
    assert children(emulator, JOBS) == [] and emulator.live("v1/configmaps", "ns1") == []


async def test_namespaced_operator_serves_only_its_namespace(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path, namespaces=["ns1"]):
        await create_run(emulator, example("quickstart"), namespace="ns2")
        await create_run(emulator, example("quickstart"), namespace="ns1")
        await wait_for(lambda: children(emulator, JOBS, namespace="ns1") == ["quickstart-prepare"])
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True")
    assert children(emulator, JOBS, namespace="ns2") == []
    assert run_status(emulator, "ns2", "quickstart") == {}
    watched = [r for r in emulator.operator_requests() if r.verb == "watch" and r.resource != "namespaces"]
    assert watched and all(r.namespaced for r in watched)
