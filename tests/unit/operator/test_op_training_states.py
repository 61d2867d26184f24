"""TrainJob and PyTorchJob map to the same task states and progress (training_backends.py)."""

from __future__ import annotations

import pytest

from kubefusion_operator.api import StageProgress
from kubefusion_operator.planner import TaskState
from kubefusion_operator.training_backends import BACKENDS, trainjob_progress


def trainjob(conditions=(), suspend=False, trainer_status=None) -> dict:
    status = {"conditions": [{"type": t, "status": "True"} for t in conditions]}
    if trainer_status is not None:
        status["trainerStatus"] = trainer_status
    return {"kind": "TrainJob", "spec": {"suspend": suspend}, "status": status}


def pytorchjob(conditions=(), suspend=False) -> dict:
    status = {"conditions": [{"type": t, "status": "True"} for t in conditions]}
    return {"kind": "PyTorchJob", "spec": {"runPolicy": {"suspend": suspend}}, "status": status}


# (what happened, TrainJob's way of saying it, PyTorchJob's, queued by Kueue?, the task state)
CASES = [
    ("created", trainjob(), pytorchjob(), False, TaskState.RUNNING),
    ("running", trainjob(["Created"]), pytorchjob(["Created", "Running"]), False, TaskState.RUNNING),
    ("succeeded", trainjob(["Complete"]), pytorchjob(["Succeeded"]), False, TaskState.SUCCEEDED),
    ("failed", trainjob(["Failed"]), pytorchjob(["Failed"]), False, TaskState.FAILED),
    (
        "suspended",
        trainjob(["Suspended"], suspend=True),
        pytorchjob(suspend=True),
        False,
        TaskState.SUSPENDED,
    ),
    (
        "held by Kueue",
        trainjob(["Suspended"], suspend=True),
        pytorchjob(suspend=True),
        True,
        TaskState.RUNNING,
    ),
    (
        "finished while suspended",
        trainjob(["Complete"], suspend=True),
        pytorchjob(["Succeeded"], True),
        False,
        TaskState.SUCCEEDED,
    ),
]


@pytest.mark.parametrize(("what", "tj", "pj", "queued", "state"), CASES, ids=[c[0] for c in CASES])
def test_both_backends_give_the_same_state(what, tj, pj, queued, state) -> None:
    assert BACKENDS["trainjob"].state(tj, queued) == state
    assert BACKENDS["pytorchjob"].state(pj, queued) == state


def test_trainer_status_progress() -> None:
    status = {
        "progressPercentage": 40,
        "lastUpdatedTime": "2026-01-01T00:00:00Z",
        "metrics": [{"name": "loss", "value": "0.75"}, {"name": "eval_accuracy", "value": "0.5"}],
    }
    assert trainjob_progress(trainjob(trainer_status=status)) == StageProgress(
        done=40, total=100, unit="percent", last_loss=0.75
    )
    assert trainjob_progress(trainjob()) is None
    assert trainjob_progress(trainjob(trainer_status={"lastUpdatedTime": "t"})) is None
    assert BACKENDS["pytorchjob"].progress(pytorchjob()) is None


@pytest.mark.parametrize(
    ("backend", "patch"),
    [("trainjob", {"spec": {"suspend": True}}), ("pytorchjob", {"spec": {"runPolicy": {"suspend": True}}})],
)
def test_suspend_patches(backend: str, patch: dict) -> None:
    assert BACKENDS[backend].suspend_patch(True) == patch
