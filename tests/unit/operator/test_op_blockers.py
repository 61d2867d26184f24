"""blockers.py: which pods count as refused or waiting, and when a server has really failed to start."""

from __future__ import annotations

import datetime
from pathlib import Path

from kubefusion_operator.blockers import find_blockers, server_ran_out_of_time, spare_waiting_servers
from kubefusion_operator.planner import TaskState, plan_tasks
from kubefusion_operator.validation import load_fusionrun

REPO = Path(__file__).resolve().parents[3]
NOW = datetime.datetime(2026, 12, 2, 8, 0, tzinfo=datetime.UTC)
SPEC = load_fusionrun(REPO / "examples" / "quickstart.yaml").spec
TASKS = plan_tasks(SPEC)


def pod(name: str, task_label: str, **status) -> dict:
    return {"metadata": {"name": name, "labels": {"kubefusion.dev/task": task_label}}, "status": status}


def started(seconds_ago: int, restarts: int = 0) -> dict:
    at = (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "containerStatuses": [
            {"name": "vllm", "restartCount": restarts, "state": {"running": {"startedAt": at}}}
        ]
    }


def test_a_deployments_replica_failure_blocks_its_server() -> None:
    deploy = {
        "metadata": {"name": "q-adder-serve"},
        "status": {
            "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota"}
            ]
        },
    }
    states = {"serve-sources/adder": TaskState.RUNNING}
    [blocker] = find_blockers(
        TASKS, states, {"Deployment": [deploy]}, [], [], {"Deployment/q-adder-serve": "serve-sources/adder"}
    )
    assert (blocker.reason, blocker.child, blocker.message) == (
        "PodCreateRefused",
        "Deployment/q-adder-serve",
        "quota",
    )
    # Not live (e.g. suspended): nothing to report.
    assert (
        find_blockers(
            TASKS, {}, {"Deployment": [deploy]}, [], [], {"Deployment/q-adder-serve": "serve-sources/adder"}
        )
        == []
    )


def test_the_newest_failed_create_event_wins_and_unschedulable_pods_wait() -> None:
    events = [
        {
            "involvedObject": {"kind": "Job", "name": "q-prepare"},
            "reason": "FailedCreate",
            "message": m,
            "lastTimestamp": t,
        }
        for m, t in (("new", "2026-12-02T08:00:00Z"), ("old", "2026-12-02T07:00:00Z"))
    ]
    states = {"prepare": TaskState.RUNNING, "score": TaskState.RUNNING}
    waiting = pod(
        "q-score-1",
        "score",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}
        ],
    )
    kinds = {"Job/q-prepare": "prepare", "Job/q-score": "score"}
    found = find_blockers(TASKS, states, {}, [waiting], events, kinds)
    assert [(b.task, b.reason, b.message) for b in found] == [
        ("prepare", "PodCreateRefused", "new"),
        ("score", "WaitingForCapacity", "pod q-score-1: no GPU"),
    ]


def test_only_time_spent_running_counts_against_the_startup_budget() -> None:
    assert not server_ran_out_of_time([pod("p", "x", phase="Pending")], 3600, NOW)
    assert not server_ran_out_of_time([pod("p", "x", **started(1800))], 3600, NOW)
    assert server_ran_out_of_time([pod("p", "x", **started(3600))], 3600, NOW)
    assert server_ran_out_of_time([pod("p", "x", **started(10, restarts=1))], 3600, NOW)
    states = {"serve-sources/adder": TaskState.FAILED, "serve-sources/reverser": TaskState.FAILED}
    pods = [
        pod("a", "serve-sources.adder", phase="Pending"),
        pod("r", "serve-sources.reverser", **started(4000)),
    ]
    assert spare_waiting_servers(TASKS, states, pods, 3600, NOW) == {"serve-sources/adder"}
    assert states == {"serve-sources/adder": TaskState.RUNNING, "serve-sources/reverser": TaskState.FAILED}
