"""The FusionRun status from what was observed. Pure: no API calls, the time is an argument.

Conditions (all set from the first reconcile on, each with observedGeneration):
    phase        Ready  Succeeded  Failed  Progressing/Reconciling  Stalled  Suspended
    Progressing  False  Unknown    False   True                     False    False
    Suspended    False  Unknown    False   False                    False    True
    Succeeded    True   True       False   False                    False    False
    Failed       False  False      True    False                    True     False
Reconciling mirrors Progressing for kstatus (Flux); Argo CD reads them through argocd/health.lua.
ReconcileFailed (True, with the error's reason and message) appears while reconciles fail and the
operator retries with backoff; the next successful reconcile drops it (build_status never carries it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from kubefusion_operator.api import (
    Condition,
    FusionRunSpec,
    FusionRunStatus,
    RunCounts,
    StageProgress,
    StageRecord,
)
from kubefusion_operator.observe import ChildFailure
from kubefusion_operator.planner import TaskState, plan_tasks, stage_states
from kubefusion_operator.stages import recipe_stages
from kubefusion_trainer.layout import RunLayout

Phase = Literal["Progressing", "Suspended", "Succeeded", "Failed"]

_CONDITIONS: dict[str, dict[str, str]] = {
    # phase: condition type -> status
    "Progressing": {
        "Ready": "False",
        "Succeeded": "Unknown",
        "Failed": "False",
        "Progressing": "True",
        "Reconciling": "True",
        "Stalled": "False",
        "Suspended": "False",
    },
    "Suspended": {
        "Ready": "False",
        "Succeeded": "Unknown",
        "Failed": "False",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "False",
        "Suspended": "True",
    },
    "Succeeded": {
        "Ready": "True",
        "Succeeded": "True",
        "Failed": "False",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "False",
        "Suspended": "False",
    },
    "Failed": {
        "Ready": "False",
        "Succeeded": "False",
        "Failed": "True",
        "Progressing": "False",
        "Reconciling": "False",
        "Stalled": "True",
        "Suspended": "False",
    },
}
TRAIN_STAGES = ("sft", "dpo", "wrpo")


@dataclass
class Observation:
    """What one reconcile saw and decided."""

    generation: int
    phase: Phase
    task_states: Mapping[str, TaskState]
    children: Mapping[str, list[str]] = field(default_factory=dict)  # task -> Kind/name
    failure: ChildFailure | None = None
    progress: Mapping[str, StageProgress] = field(default_factory=dict)  # task -> latest scraped progress
    message: str | None = None  # overrides the summary (e.g. an invalid spec)
    reason: str | None = None
    training_backend: str | None = None  # trainjob | pytorchjob, once known


def previous_status(raw: Mapping[str, Any] | None) -> FusionRunStatus:
    try:
        return FusionRunStatus.model_validate(dict(raw or {}))
    except ValidationError:
        return FusionRunStatus()  # someone wrote junk: start over rather than fail forever


def stage_outputs(spec: FusionRunSpec, layout: RunLayout, stage: str) -> list[str]:
    sources_by_dataset = [(s.name, d.name) for d in spec.datasets for s in spec.dataset_sources(d)]
    paths = {
        "prepare": [layout.prompts_file(d.name) for d in spec.datasets],
        "sample": [layout.samples_dir("sources", s, d) for s, d in sources_by_dataset],
        "score": [layout.scores_dir("sources", s, d) for s, d in sources_by_dataset],
        "build": [layout.data_dir("sft"), layout.data_dir("dpo")],
        "sample-target": [layout.samples_dir("target", "target", d.name) for d in spec.datasets],
        "score-target": [layout.scores_dir("target", "target", d.name) for d in spec.datasets],
        "build-wrpo": [layout.data_dir("wrpo")],
        "evaluate": [layout.eval_dir, layout.report],
        **{s: [layout.final_model(s)] for s in TRAIN_STAGES},  # type: ignore[arg-type]
    }.get(stage, [])
    return [str(p) for p in paths]


def _conditions(
    previous: list[Condition], phase: Phase, reason: str, message: str, generation: int, now: datetime
) -> list[Condition]:
    before = {c.type: c for c in previous}
    out = []
    for type_, status in _CONDITIONS[phase].items():
        old = before.get(type_)
        changed = old is None or old.status != status
        out.append(
            Condition(
                type=type_,
                status=status,  # type: ignore[arg-type]
                reason=reason if status == "True" or type_ in ("Ready", "Succeeded") else "AsExpected",
                message=message if status == "True" or type_ in ("Ready", "Succeeded") else "",
                last_transition_time=now if changed else old.last_transition_time,  # type: ignore[union-attr]
                observed_generation=generation,
            )
        )
    return out


def _sum_progress(items: list[StageProgress]) -> StageProgress | None:
    if not items:
        return None
    totals = [p.total for p in items]
    return StageProgress(
        done=sum(p.done for p in items),
        total=None if any(t is None for t in totals) else sum(t or 0 for t in totals),
        unit=items[0].unit,
        last_loss=next((p.last_loss for p in reversed(items) if p.last_loss is not None), None),
    )


def build_status(
    spec: FusionRunSpec,
    run_name: str,
    storage_root: str,
    previous: FusionRunStatus,
    obs: Observation,
    now: datetime,
) -> FusionRunStatus:
    tasks = plan_tasks(spec)
    layout = RunLayout(storage_root)
    states = stage_states(spec, obs.task_states)
    old_records = {r.name: r for r in previous.stages}
    records: list[StageRecord] = []
    for stage in recipe_stages(spec):
        state = states[stage.name]
        stage_tasks = [t for t in tasks if t.stage == stage.name]
        old = old_records.get(stage.name)
        record = StageRecord(name=stage.name, state=state)  # type: ignore[arg-type]
        if state == "Suspended" or (state == "Running" and obs.phase == "Suspended"):
            record.state = "Suspended"
        record.start_time = (
            old.start_time if old and old.start_time else (now if state != "Pending" else None)
        )
        if state in ("Succeeded", "Failed"):
            record.end_time = old.end_time if old and old.end_time and old.state == state else now
        progress = [obs.progress[t.name] for t in stage_tasks if t.name in obs.progress]
        record.progress = _sum_progress(progress) or (old.progress if old else None)
        if state == "Succeeded" and record.progress and record.progress.total is not None:
            record.progress.done = record.progress.total
        children = sorted({c for t in stage_tasks for c in obs.children.get(t.name, [])})
        record.children = children or (old.children if old else [])
        if state == "Succeeded":
            record.outputs = stage_outputs(spec, layout, stage.name)
        if obs.failure and obs.failure.task in {t.name for t in stage_tasks}:
            f = obs.failure
            record.message = f"{f.child} failed: {f.reason}" + (f": {f.message}" if f.message else "")
        elif state == "Failed" and old:
            record.message = old.message
        records.append(record)

    done = sum(1 for r in records if r.state == "Succeeded")
    current = next((r for r in records if r.state != "Succeeded"), None)
    if obs.phase == "Failed":
        failed = next((r for r in records if r.state == "Failed"), current)
        stage_name = failed.name if failed else None
        reason = obs.reason or "StageFailed"
        message = obs.message or (
            f"stage {stage_name}: {failed.message}"
            if failed and failed.message
            else f"stage {stage_name} failed"
        )
    elif obs.phase == "Succeeded":
        stage_name, reason, message = "done", "Succeeded", obs.message or "every stage has succeeded"
    elif obs.phase == "Suspended":
        stage_name = current.name if current else None
        reason, message = "Suspended", obs.message or f"suspended at stage {stage_name}"
    else:
        stage_name = current.name if current else None
        running = [r.name for r in records if r.state == "Running"]
        reason = obs.reason or "Running"
        message = obs.message or f"running {', '.join(running) or stage_name}"
    progress_text = f"{done}/{len(records)} stages"
    if current is not None and current.progress and current.progress.total and obs.phase == "Progressing":
        pct = 100 * current.progress.done // max(current.progress.total, 1)
        progress_text += f", {current.name} {pct}%"
    counts = _counts(records, previous.counts)
    kept = {k: v for k, v in previous.tasks.items() if k in {t.name for t in tasks}}
    task_states = {**kept, **{name: str(s) for name, s in obs.task_states.items() if s != TaskState.READY}}
    task_states.update({n: "Running" for n, s in obs.task_states.items() if s == TaskState.READY})
    return FusionRunStatus(
        observed_generation=obs.generation,
        stage=stage_name,
        progress=progress_text[:63],
        conditions=_conditions(previous.conditions, obs.phase, reason, message, obs.generation, now),
        stages=records,
        counts=counts,
        message=message,
        tasks={k: v for k, v in task_states.items() if v != "Pending"},  # type: ignore[misc]
        training_backend=obs.training_backend or previous.training_backend,  # type: ignore[arg-type]
    )


RECONCILE_FAILED = "ReconcileFailed"


def reconcile_failed_status(
    previous: FusionRunStatus, reason: str, message: str, generation: int, now: datetime
) -> FusionRunStatus:
    """The previous status plus a ReconcileFailed condition (its transition time kept while it holds)."""
    new = previous.model_copy(deep=True)
    old = next((c for c in previous.conditions if c.type == RECONCILE_FAILED), None)
    condition = Condition(
        type=RECONCILE_FAILED,
        status="True",
        reason=reason,
        message=message[:32768],
        last_transition_time=old.last_transition_time if old and old.status == "True" else now,
        observed_generation=generation,
    )
    new.conditions = [c for c in previous.conditions if c.type != RECONCILE_FAILED] + [condition]
    return new


def invalid_spec_status(previous: FusionRunStatus, obs: Observation, now: datetime) -> FusionRunStatus:
    """A spec the operator cannot run: Failed and Stalled, the rest of the status left as it was."""
    new = previous.model_copy()
    new.observed_generation = obs.generation
    new.conditions = _conditions(
        previous.conditions, "Failed", obs.reason or "InvalidSpec", obs.message or "", obs.generation, now
    )
    new.message = obs.message
    return new


def _counts(records: list[StageRecord], previous: RunCounts | None) -> RunCounts:
    by_name = {r.name: r.progress.done for r in records if r.progress is not None}
    counts = previous.model_copy() if previous else RunCounts()
    counts.prompts = by_name.get("prepare", counts.prompts)
    counts.samples = by_name.get("sample", counts.samples)
    counts.scored = by_name.get("score", counts.scored)
    counts.pairs = by_name.get("build", counts.pairs)
    return counts
