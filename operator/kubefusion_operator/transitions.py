"""Kubernetes Events and metrics for a run's stage and phase transitions, from the old and new status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubefusion_operator.metrics import OperatorMetrics

Emit = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)


def record_transitions(previous: Any, new: Any, emit: Emit, metrics: OperatorMetrics) -> None:
    """Emit an Event and count each stage that changed state, and the run's phase if it changed."""
    before = {r.name: r.state for r in previous.stages}
    for record in new.stages:
        old = before.get(record.name, "Pending")
        if record.state == old:
            continue
        metrics.transitions.labels(record.name, record.state).inc()
        if record.state == "Running" and old == "Pending":
            emit("Normal", "StageStarted", f"stage {record.name} started")
        elif record.state == "Succeeded":
            emit("Normal", "StageSucceeded", f"stage {record.name} succeeded")
            if record.start_time and record.end_time:
                metrics.durations.labels(record.name).observe(
                    (record.end_time - record.start_time).total_seconds()
                )
        elif record.state == "Failed":
            emit("Warning", "StageFailed", f"stage {record.name} failed: {record.message or ''}"[:1000])
        elif record.state == "Suspended":
            emit("Normal", "StageSuspended", f"stage {record.name} suspended")
    old_phase, new_phase = _phase(previous), _phase(new)
    if new_phase != old_phase and new_phase is not None:
        emit("Warning" if new_phase == "Failed" else "Normal", f"Run{new_phase}", new.message or new_phase)


def _phase(status: Any) -> str | None:
    """The run's terminal or suspended condition that is True, if any."""
    return next(
        (
            c.type
            for c in status.conditions
            if c.status == "True" and c.type in ("Succeeded", "Failed", "Suspended")
        ),
        None,
    )
