"""From a run's child objects to planner task states and failure details. Pure.

The inverse of render/: each child names its task in the kubefusion.dev/task annotation. Children
come grouped by the kind they were listed as: a real API server's list items carry no kind/apiVersion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubefusion_operator.planner import Task, TaskKind, TaskState
from kubefusion_operator.render.names import TASK_ANNOTATION


@dataclass(frozen=True)
class ChildFailure:
    task: str
    child: str  # Kind/name
    reason: str
    message: str


def task_of(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(TASK_ANNOTATION)


def child_ref(kind: str, obj: Mapping[str, Any]) -> str:
    return f"{kind}/{obj['metadata']['name']}"


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def condition_true(obj: Mapping[str, Any], type_: str) -> bool:
    return _condition(obj, type_) is not None


def job_state(job: Mapping[str, Any], *, queued_by_kueue: bool) -> TaskState:
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return TaskState.SUCCEEDED
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return TaskState.FAILED
    if (job.get("spec") or {}).get("suspend"):
        # Kueue keeps a Job suspended until the queue admits it: that is waiting, not pausing.
        return TaskState.RUNNING if queued_by_kueue else TaskState.SUSPENDED
    return TaskState.RUNNING


def pytorchjob_state(job: Mapping[str, Any], *, queued_by_kueue: bool) -> TaskState:
    if _condition(job, "Succeeded"):
        return TaskState.SUCCEEDED
    if _condition(job, "Failed"):
        return TaskState.FAILED
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return TaskState.RUNNING if queued_by_kueue else TaskState.SUSPENDED
    return TaskState.RUNNING


def deployment_state(deploy: Mapping[str, Any]) -> TaskState:
    spec, status = deploy.get("spec") or {}, deploy.get("status") or {}
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None)
    if (
        progressing
        and progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    ):
        return TaskState.FAILED
    if spec.get("replicas", 1) == 0:
        return TaskState.SUSPENDED
    if (status.get("readyReplicas") or 0) >= 1:
        return TaskState.READY
    return TaskState.RUNNING


StateFn = Callable[[Mapping[str, Any], bool], TaskState]  # (child, queued_by_kueue) -> its task's state
# The kinds whose state is their task's state (a Service or ConfigMap has none); training backends
# add theirs (training_backends.TRAINING_STATES).
CORE_STATES: dict[str, StateFn] = {
    "Deployment": lambda obj, _queued: deployment_state(obj),
    "Job": lambda obj, queued: job_state(obj, queued_by_kueue=queued),
    "PyTorchJob": lambda obj, queued: pytorchjob_state(obj, queued_by_kueue=queued),
}


def failure_of(kind: str, obj: Mapping[str, Any], task: str) -> ChildFailure:
    cond = None
    for type_ in ("Failed", "FailureTarget"):
        cond = cond or _condition(obj, type_)
    if cond is None:
        cond = next(
            (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Progressing"),
            {},
        )
    return ChildFailure(task, child_ref(kind, obj), cond.get("reason") or "Failed", cond.get("message") or "")


def observe(
    tasks: Iterable[Task],
    children: Mapping[str, Iterable[Mapping[str, Any]]],
    persisted: Mapping[str, str],
    *,
    queued_by_kueue: bool = False,
    child_states: Mapping[str, StateFn] = CORE_STATES,
) -> tuple[dict[str, TaskState], dict[str, list[str]], list[ChildFailure]]:
    """Task states, each task's live children (Kind/name), and failures, from the children and the status.

    `children` maps a kind to the objects listed for it (kind -> items).

    A task with no child keeps a Succeeded or Failed state the status recorded (finished work is never
    redone, even when someone deleted its Job); otherwise it is Pending.
    """
    tasks = list(tasks)
    by_task: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for kind, objs in children.items():
        for obj in objs:
            name = task_of(obj)
            terminating = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
            if terminating and kind in child_states and kind != "Deployment":
                continue  # a batch child being removed for a retry: the task is as good as cleared
            if name is not None:
                by_task.setdefault(name, []).append((kind, obj))
    states: dict[str, TaskState] = {}
    refs: dict[str, list[str]] = {}
    failures: list[ChildFailure] = []
    for task in tasks:
        objs = by_task.get(task.name, [])
        refs[task.name] = sorted(child_ref(kind, o) for kind, o in objs)
        # the child whose state is the task's (a Deployment, a Job, a training job)
        main_kind, main = next(((kind, o) for kind, o in objs if kind in child_states), ("", None))
        recorded = persisted.get(task.name)
        if main is None:
            keep = task.kind != TaskKind.SERVER and recorded in (TaskState.SUCCEEDED, TaskState.FAILED)
            state = TaskState(recorded) if keep and recorded else TaskState.PENDING
        elif recorded == TaskState.SUCCEEDED and task.kind != TaskKind.SERVER:
            state = TaskState.SUCCEEDED  # a Job once seen complete stays complete
        else:
            # A job we suspended ourselves (recorded Suspended) is paused even under Kueue, so that
            # resuming the run resumes it; any other suspended job is one Kueue has not admitted yet.
            queued = queued_by_kueue and recorded != TaskState.SUSPENDED
            state = child_states[main_kind](main, queued)
        if state == TaskState.FAILED and main is not None:
            failures.append(failure_of(main_kind, main, task.name))
        states[task.name] = state
    return states, refs, failures
