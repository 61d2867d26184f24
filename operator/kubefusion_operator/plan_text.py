"""The text `kubefusion plan` prints: stages, work counts, the estimate and every assumption behind it."""

from __future__ import annotations

from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.estimate import (
    ASSUMPTIONS,
    MEAN_ANSWER_TOKENS,
    MEAN_PROMPT_TOKENS,
    Plan,
    StageEstimate,
)
from kubefusion_operator.model_table import GPU_TYPES, REFERENCES, model_size


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _hours(value: float | None) -> str:
    return "not estimated" if value is None else f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def format_plan(spec: FusionRunSpec, stages: list, plan: Plan) -> str:
    lines = [f"recipe: {spec.recipe.value}", f"training backend: {spec.training.backend}", "", "stages:"]
    for i, stage in enumerate(stages, 1):
        gpu = "GPU" if stage.uses_gpu else "CPU"
        lines.append(f"  {i:2d}. {stage.name:<14} [{gpu}] {stage.description}")
        lines.extend(f"        creates: {child}" for child in stage.children)
    lines += ["", "work:", _work_header()]
    for d in plan.datasets:
        lines.append(
            f"  {d.name:<28} {d.domain:<12} {_count(d.prompts):>9} {len(d.sources):>7} {d.samples_per_source:>3} "
            f"{_count(d.responses):>11} {_count(d.sft_prompts):>8} {_count(d.pref_prompts):>8}"
        )
    lines.append(
        f"  {'total':<28} {'':<12} {_count(plan.total('prompts')):>9} {'':>7} {'':>3} "
        f"{_count(plan.total('responses')):>11} {_count(plan.total('sft_prompts')):>8} "
        f"{_count(plan.total('pref_prompts')):>8}"
    )
    sft = plan.total("sft_prompts")
    sft_tokens = None if sft is None else sft * (MEAN_PROMPT_TOKENS + MEAN_ANSWER_TOKENS)
    lines.append(f"  training tokens per SFT epoch (estimated): {_count(sft_tokens)}")
    lines.append("  pairs<= : preference prompts; pairs outside the reward-margin range are dropped at build")
    lines += ["", *_estimate_lines(spec, plan)]
    return "\n".join(lines)


def _work_header() -> str:
    return (
        f"  {'dataset':<28} {'domain':<12} {'prompts':>9} {'sources':>7} {'N':>3} {'responses':>11} "
        f"{'sft':>8} {'pairs<=':>8}"
    )


def _estimate_lines(spec: FusionRunSpec, plan: Plan) -> list[str]:
    lines = [
        f"estimate on {plan.gpu.upper()} GPUs ({GPU_TYPES[plan.gpu].source}):",
        f"  {'stage':<21}{'GPUs':>5}{'GPU-hours':>15}{'wall-clock h':>15}  how",
    ]

    def row(s: StageEstimate, indent: str = "") -> str:
        gpus = str(s.gpus) if s.gpus else "CPU"
        gpu_hours = "-" if not s.gpus and s.gpu_hours == 0 else _hours(s.gpu_hours)
        return f"  {indent + s.stage:<21}{gpus:>5}{gpu_hours:>15}{_hours(s.wall_hours):>15}  {s.detail}"

    for stage in plan.stages:
        lines.append(row(stage))
        lines.extend(row(part, "  ") for part in stage.parts)
    lines.append(
        f"  {'total':<21}{'':>5}{_hours(plan.gpu_hours_total()):>15}"
        f"{_hours(plan.critical_path_hours()):>15}  GPU-hours; wall-clock = the critical path (stages in sequence)"
    )
    lines += ["", "model sizes (billions of parameters):"]
    models = [(s.name, s.model, s.parameters_billions) for s in spec.sources]
    models.append(("target", spec.target.model, spec.target.parameters_billions))
    rm = spec.scoring.reward_model
    models.append(("reward model", str(rm.model), rm.parameters_billions))
    for name, model, override in models:
        size, where = model_size(model, override)
        shown = "unknown: set parametersBillions" if size is None else f"{size:g} (from {where})"
        lines.append(f"  {name:<20} {model:<42} {shown}")
    lines += ["", "assumptions:"]
    lines.extend(f"  {a}" for a in ASSUMPTIONS)
    lines.append(
        f"  sampling GPU-hours = answers x {MEAN_ANSWER_TOKENS} tokens / (tok/s per GPU) / 3600 (docs/planning.md)"
    )
    lines.extend(f"  note: {n}" for n in plan.notes)
    lines += ["", "sources:", *(f"  {r}" for r in REFERENCES)]
    return lines
