"""Pods that cannot be created or scheduled are reported on the run (condition Blocked, an Event), not
counted as failures; a server waiting for a GPU past its progress deadline is not failed."""
# ruff: noqa: F811

from __future__ import annotations

import datetime
from typing import Any

import pytest
from op_cluster import (
    DEPLOYMENTS,
    JOBS,
    Cluster,
    children,
    create_run,
    drive_to_end,
    example,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration
PODS = "v1/pods"


def blocked(emulator, name: str = "quickstart") -> dict[str, Any]:
    return next(
        (c for c in run_status(emulator, "ns1", name).get("conditions", []) if c["type"] == "Blocked"), {}
    )


def kopf_events(emulator, reason: str) -> list[dict[str, Any]]:
    return [e for e in emulator.live("v1/events", "ns1") if e.get("reason") == reason]


async def add_pod(emulator, name: str, task_label: str, status: dict[str, Any]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"kubefusion.dev/run": "quickstart", "kubefusion.dev/task": task_label},
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
    }
    resp = await emulator.post("/api/v1/namespaces/ns1/pods", json=pod)
    assert resp.status == 201, await resp.text()
    await emulator.write(PODS, "ns1", name, {"status": status})


def ago(seconds: int) -> str:
    when = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


DEADLINE = {
    "status": {
        "conditions": [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "x" has timed out progressing.',
            }
        ]
    }
}
UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        }
    ],
}


async def test_a_job_whose_pods_are_refused_is_blocked_not_failed(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        message = 'pods "quickstart-prepare-x7k2p" is forbidden: exceeded quota: team-a'
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "quickstart-prepare.1"},
            "involvedObject": {"kind": "Job", "name": "quickstart-prepare", "namespace": "ns1"},
            "reason": "FailedCreate",
            "type": "Warning",
            "message": f"Error creating: {message}",
            "lastTimestamp": ago(0),
        }
        assert (await emulator.post("/api/v1/namespaces/ns1/events", json=event)).status == 201
        await emulator.write(JOBS, "ns1", "quickstart-prepare", {"status": {"active": 0}})
        await wait_for(lambda: blocked(emulator).get("status") == "True", what="Blocked")
        cond = blocked(emulator)
        assert cond["reason"] == "PodCreateRefused"
        assert cond["message"] == f"Job/quickstart-prepare: Error creating: {message}"
        await wait_for(lambda: kopf_events(emulator, "PodCreateRefused"), what="an Event on the run")
        assert run_status(emulator, "ns1", "quickstart")["stage"] == "prepare"
        # The quota is raised, the Job's pods run and it completes: the condition clears.
        await Cluster(emulator).complete("quickstart-prepare")
        await wait_for(lambda: blocked(emulator).get("status") == "False", what="Blocked cleared")
        assert blocked(emulator)["reason"] == "AsExpected"


async def test_a_server_waiting_for_gpus_past_its_deadline_is_not_failed(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2, what="servers")
        # The adder's pod has waited for a GPU longer than the Deployment's progress deadline.
        await add_pod(emulator, "quickstart-adder-serve-abc", "serve-sources.adder", UNSCHEDULABLE)
        await emulator.write(DEPLOYMENTS, "ns1", "quickstart-adder-serve", DEADLINE)
        await wait_for(lambda: blocked(emulator).get("reason") == "WaitingForCapacity", what="waiting")
        cond = blocked(emulator)
        assert cond["message"].startswith(
            "Deployment/quickstart-adder-serve: pod quickstart-adder-serve-abc: 0/4"
        )
        status = run_status(emulator, "ns1", "quickstart")
        assert status["tasks"]["serve-sources/adder"] == "Running"
        assert not any(c["type"] == "Failed" and c["status"] == "True" for c in status["conditions"])
        # Capacity arrives: the pod runs, the server becomes ready, the run carries on to the end.
        await emulator.write(
            PODS, "ns1", "quickstart-adder-serve-abc", {"status": {"phase": "Running", "conditions": []}}
        )
        await emulator.write(
            DEPLOYMENTS, "ns1", "quickstart-adder-serve", {"status": {"conditions": None, "readyReplicas": 1}}
        )
        await drive_to_end(emulator, "quickstart")
    status = run_status(emulator, "ns1", "quickstart")
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in status["conditions"]), status
    assert blocked(emulator)["status"] == "False"


async def test_a_server_that_ran_past_its_startup_budget_fails_the_run(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2, what="servers")
        running = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "vllm",
                    "restartCount": 1,
                    "ready": False,
                    "state": {"running": {"startedAt": ago(30)}},
                }
            ],
        }
        await add_pod(emulator, "quickstart-adder-serve-abc", "serve-sources.adder", running)
        await emulator.write(DEPLOYMENTS, "ns1", "quickstart-adder-serve", DEADLINE)
        await wait_for(
            lambda: any(
                c["type"] == "Failed" and c["status"] == "True"
                for c in run_status(emulator, "ns1", "quickstart").get("conditions", [])
            ),
            what="Failed",
        )
    assert "ProgressDeadlineExceeded" in run_status(emulator, "ns1", "quickstart")["message"]


async def test_suspend_with_kueue_stops_jobs_instead_of_fighting_it(emulator, tmp_path) -> None:
    """Kueue unsuspends a Job it admitted: a queued run's Jobs are deleted on suspend, recreated on resume."""
    cluster = Cluster(emulator)
    url = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart", queueName="team-a"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2, what="servers")
        await cluster.ready("quickstart-adder-serve")
        await wait_for(lambda: "quickstart-adder-sample" in children(emulator, JOBS), what="sampler")
        sample_uid = emulator.find(JOBS, "ns1", "quickstart-adder-sample")["metadata"]["uid"]
        await emulator.patch(url, json={"spec": {"suspend": True}}, headers=merge)
        await wait_for(
            lambda: "quickstart-adder-sample" not in children(emulator, JOBS), what="the sampler stopped"
        )
        await wait_for(
            lambda: [d["spec"]["replicas"] for d in emulator.live(DEPLOYMENTS, "ns1")] == [0, 0],
            what="scaled",
        )
        await wait_for(
            lambda: any(
                c["type"] == "Suspended" and c["status"] == "True"
                for c in run_status(emulator, "ns1", "quickstart").get("conditions", [])
            ),
            what="Suspended",
        )
        assert children(emulator, JOBS) == ["quickstart-prepare"]  # finished work is kept
        await emulator.patch(url, json={"spec": {"suspend": False}}, headers=merge)
        await wait_for(lambda: [d["spec"]["replicas"] for d in emulator.live(DEPLOYMENTS, "ns1")] == [1, 1])
        await cluster.ready("quickstart-adder-serve")
        await wait_for(lambda: "quickstart-adder-sample" in children(emulator, JOBS), what="sampler again")
        assert emulator.find(JOBS, "ns1", "quickstart-adder-sample")["metadata"]["uid"] != sample_uid
        await drive_to_end(emulator, "quickstart")
    status = run_status(emulator, "ns1", "quickstart")
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in status["conditions"]), status


async def test_a_deployment_whose_pods_are_refused_is_blocked(emulator, tmp_path) -> None:
    """The ReplicaSet's FailedCreate reaches the Deployment as ReplicaFailure: reported, not failed."""
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, DEPLOYMENTS)) == 2, what="servers")
        message = 'pods "quickstart-adder-serve-5d9f-x" is forbidden: exceeded quota: gpus'
        failure = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}
        await emulator.write(
            DEPLOYMENTS, "ns1", "quickstart-adder-serve", {"status": {"conditions": [failure]}}
        )
        await wait_for(lambda: blocked(emulator).get("reason") == "PodCreateRefused", what="Blocked")
        assert blocked(emulator)["message"] == f"Deployment/quickstart-adder-serve: {message}"
        assert run_status(emulator, "ns1", "quickstart")["tasks"]["serve-sources/adder"] == "Running"
        await emulator.write(
            DEPLOYMENTS, "ns1", "quickstart-adder-serve", {"status": {"conditions": None, "readyReplicas": 1}}
        )
        await wait_for(lambda: blocked(emulator).get("status") == "False", what="Blocked cleared")
