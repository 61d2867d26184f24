"""The training backends (TrainJob, PyTorchJob) as the reconciler sees them: one entry per kind.

Each says how to read its child's state and progress, and how to suspend it; the builders live in
render/trainjob.py and render/pytorchjob.py, discovery and the choice between them in discovery.py.
The planner, observer and status never name a backend: they get these functions by kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubefusion_operator.api import StageProgress
from kubefusion_operator.discovery import PYTORCHJOB, TRAINJOB, OptionalKind
from kubefusion_operator.observe import condition_true, pytorchjob_state, task_of
from kubefusion_operator.planner import TaskState

StateFn = Callable[[Mapping[str, Any], bool], TaskState]  # (child, queued_by_kueue) -> state


def trainjob_state(job: Mapping[str, Any], queued_by_kueue: bool) -> TaskState:
    if condition_true(job, "Complete"):
        return TaskState.SUCCEEDED
    if condition_true(job, "Failed"):
        return TaskState.FAILED
    if (job.get("spec") or {}).get("suspend") or condition_true(job, "Suspended"):
        # Kueue keeps a TrainJob suspended until the queue admits it: that is waiting, not pausing.
        return TaskState.RUNNING if queued_by_kueue else TaskState.SUSPENDED
    return TaskState.RUNNING


def trainjob_progress(job: Mapping[str, Any]) -> StageProgress | None:
    """Trainer v2.2+ progress tracking (status.trainerStatus), where the runtime reports it."""
    trainer = (job.get("status") or {}).get("trainerStatus") or {}
    percent = trainer.get("progressPercentage")
    if percent is None:
        return None
    loss = next((m.get("value") for m in trainer.get("metrics") or [] if m.get("name") == "loss"), None)
    try:
        last_loss = float(loss) if loss is not None else None
    except ValueError:
        last_loss = None
    return StageProgress(done=int(percent), total=100, unit="percent", last_loss=last_loss)


@dataclass(frozen=True)
class TrainingBackend:
    api: OptionalKind
    state: StateFn
    suspend_patch: Callable[[bool], dict[str, Any]]
    progress: Callable[[Mapping[str, Any]], StageProgress | None] = lambda _obj: None


BACKENDS: dict[str, TrainingBackend] = {
    "trainjob": TrainingBackend(
        TRAINJOB, trainjob_state, lambda s: {"spec": {"suspend": s}}, progress=trainjob_progress
    ),
    "pytorchjob": TrainingBackend(
        PYTORCHJOB,
        lambda job, queued: pytorchjob_state(job, queued_by_kueue=queued),
        lambda s: {"spec": {"runPolicy": {"suspend": s}}},
    ),
}
BY_KIND = {b.api.kind: b for b in BACKENDS.values()}
TRAINING_STATES: dict[str, StateFn] = {kind: b.state for kind, b in BY_KIND.items()}


def training_progress(children: dict[str, list[dict[str, Any]]]) -> dict[str, StageProgress]:
    """Progress a training child reports in its own status (TrainJob trainerStatus), by task."""
    out: dict[str, StageProgress] = {}
    for kind, objs in children.items():
        backend = BY_KIND.get(kind)
        if backend is None:
            continue
        for obj in objs:
            task = task_of(obj)
            progress = backend.progress(obj) if task else None
            if task and progress is not None:
                out[task] = progress
    return out
