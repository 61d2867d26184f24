"""Pods that cannot be created or cannot be scheduled: reported on the run, not counted as failures. Pure.

Kubernetes reports these on different objects:
- a Job's pods refused at creation (Pod Security, quota, a webhook): `FailedCreate` Events on the Job;
- a Deployment's: the `ReplicaFailure` condition (reason FailedCreate) the Deployment copies from its
  ReplicaSet;
- pods no node can take: the pod's `PodScheduled=False` condition with reason `Unschedulable`.

Each becomes a Blocker for its task; the run gets a `Blocked` condition (reason PodCreateRefused or
WaitingForCapacity, the message naming the child) and an Event, and the condition clears when the cause
does. A server whose Deployment passed its progress deadline only fails when a pod of it really ran past
the startup budget (the vLLM container started that long ago, or was restarted by its startup probe):
time spent waiting for a node, a GPU or a quota does not count.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubefusion_operator.api import Condition, FusionRunStatus
from kubefusion_operator.planner import Task, TaskKind, TaskState
from kubefusion_operator.render.names import TASK_LABEL, label_value

CONDITION = "Blocked"
REFUSED, WAITING = "PodCreateRefused", "WaitingForCapacity"


@dataclass(frozen=True)
class Blocker:
    task: str
    child: str  # Kind/name of the object whose pods are blocked
    reason: str  # PodCreateRefused | WaitingForCapacity
    message: str

    def __str__(self) -> str:
        return f"{self.child}: {self.message}"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when no node can take the pod, else None."""
    for cond in _conditions(pod):
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return cond.get("message") or "no node can run the pod"
    return None


def pods_by_task(
    pods: Iterable[Mapping[str, Any]], tasks: Iterable[Task]
) -> dict[str, list[Mapping[str, Any]]]:
    by_label = {label_value(t.name): t.name for t in tasks}
    out: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        task = by_label.get((_meta(pod).get("labels") or {}).get(TASK_LABEL, ""))
        if task is not None and not _meta(pod).get("deletionTimestamp"):
            out.setdefault(task, []).append(pod)
    return out


def find_blockers(
    tasks: Iterable[Task],
    states: Mapping[str, TaskState],
    children: Mapping[str, Iterable[Mapping[str, Any]]],
    pods: Iterable[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    kinds: Mapping[str, str],
) -> list[Blocker]:
    """Blockers of live tasks. children: the run's workloads by kind (list items carry no kind);
    kinds: Kind/name -> task name."""
    tasks = list(tasks)
    live = {t.name for t in tasks if states.get(t.name) == TaskState.RUNNING}
    blockers: dict[tuple[str, str], Blocker] = {}
    for kind, child in ((k, c) for k, objs in children.items() for c in objs):
        ref = f"{kind}/{_meta(child).get('name')}"
        task = kinds.get(ref)
        if task not in live:
            continue
        for cond in _conditions(child):
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                blockers[(task, REFUSED)] = Blocker(task, ref, REFUSED, cond.get("message") or "FailedCreate")
    latest: dict[str, Mapping[str, Any]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        ref = f"{involved.get('kind')}/{involved.get('name')}"
        if event.get("reason") != "FailedCreate" or kinds.get(ref) not in live:
            continue
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        if ref not in latest or stamp >= (
            latest[ref].get("lastTimestamp") or latest[ref].get("eventTime") or ""
        ):
            latest[ref] = event
    for ref, event in latest.items():
        task = kinds[ref]
        blockers[(task, REFUSED)] = Blocker(task, ref, REFUSED, event.get("message") or "FailedCreate")
    owners = {task: ref for ref, task in kinds.items()}
    for task, task_pods in pods_by_task(pods, tasks).items():
        if task not in live or (task, REFUSED) in blockers:
            continue
        for pod in task_pods:
            message = unschedulable(pod)
            if message is not None:
                child = owners.get(task, f"Pod/{_meta(pod).get('name')}")
                blockers[(task, WAITING)] = Blocker(
                    task, child, WAITING, f"pod {_meta(pod).get('name')}: {message}"
                )
                break
    return sorted(blockers.values(), key=lambda b: (b.task, b.reason))


def server_ran_out_of_time(
    pods: Iterable[Mapping[str, Any]], budget_seconds: int, now: datetime.datetime
) -> bool:
    """Did a server pod use its whole startup budget while running (not while waiting to run)?"""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if (status.get("restartCount") or 0) >= 1:
                return True  # killed by its startup or liveness probe, or crashed
            started = _parse_time(((status.get("state") or {}).get("running") or {}).get("startedAt"))
            if started is not None and (now - started).total_seconds() >= budget_seconds:
                return True
    return False


def spare_waiting_servers(
    tasks: Iterable[Task],
    states: dict[str, TaskState],
    pods: Iterable[Mapping[str, Any]],
    budget_seconds: int,
    now: datetime.datetime,
) -> set[str]:
    """Servers observed Failed (progress deadline) whose pods never ran past the budget: Running again."""
    tasks = list(tasks)
    by_task = pods_by_task(pods, tasks)
    spared = set()
    for task in tasks:
        if task.kind != TaskKind.SERVER or states.get(task.name) != TaskState.FAILED:
            continue
        if not server_ran_out_of_time(by_task.get(task.name, []), budget_seconds, now):
            states[task.name] = TaskState.RUNNING
            spared.add(task.name)
    return spared


def with_blocked_condition(
    status: FusionRunStatus,
    previous: FusionRunStatus,
    blockers: list[Blocker],
    generation: int,
    now: datetime.datetime,
) -> FusionRunStatus:
    """The status with its Blocked condition set from the blockers (False, AsExpected, when none);
    its lastTransitionTime moves only when its status does."""
    old = next((c for c in previous.conditions if c.type == CONDITION), None)
    if blockers:
        first = blockers[0]
        reason = first.reason
        message = "; ".join(str(b) for b in blockers)[:4000]
        state = "True"
    else:
        reason, message, state = "AsExpected", "", "False"
    changed = old is None or old.status != state
    cond = Condition(
        type=CONDITION,
        status=state,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=now if changed or old is None else old.last_transition_time,
        observed_generation=generation,
    )
    status.conditions = [c for c in status.conditions if c.type != CONDITION] + [cond]
    return status
