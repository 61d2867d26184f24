"""Work counts and a rough GPU-hours estimate for `kubefusion plan`. Pure arithmetic, assumptions stated."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kubefusion_operator.api import FusionRunSpec

# Stated assumptions (printed with the estimate).
ASSUMPTIONS = {
    "mean answer tokens": 500,
    "mean prompt tokens": 200,
    "vLLM decode throughput per GPU, tokens/s, for a model of P billion params": "60000 / P",
    "training MFU": 0.35,
    "GPU peak bf16 TFLOP/s": 989,
    "reward model scoring, answers/s per GPU": 50,
}
MEAN_ANSWER_TOKENS = 500
MEAN_PROMPT_TOKENS = 200
TRAIN_MFU = 0.35
GPU_PEAK_FLOPS = 989e12
RM_ANSWERS_PER_GPU_SECOND = 50.0


def parameters_billions(model: str) -> float | None:
    """Guess a model's size from its name ("Llama-3.1-70B-Instruct" -> 70); None when it has none."""
    match = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", model.replace("_", "-"))
    if not match:
        match = re.search(r"-(\d+(?:\.\d+)?)[bB]\b", model)
    return float(match.group(1)) if match else None


@dataclass
class DatasetWork:
    name: str
    domain: str
    prompts: int | None
    sources: list[str]
    samples_per_source: int
    sft_prompts: int | None
    pref_prompts: int | None

    @property
    def responses(self) -> int | None:
        if self.prompts is None:
            return None
        return self.prompts * len(self.sources) * self.samples_per_source


@dataclass
class Plan:
    datasets: list[DatasetWork]
    gpu_hours: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def total(self, attr: str) -> int | None:
        values = [getattr(d, attr) for d in self.datasets]
        return None if any(v is None for v in values) else sum(values)


def plan_work(spec: FusionRunSpec) -> Plan:
    datasets = []
    for dataset in spec.datasets:
        prompts = dataset.row_limit
        sft_share = 1.0 if dataset.sft_only else dataset.sft_fraction
        sft = None if prompts is None else round(prompts * sft_share)
        datasets.append(
            DatasetWork(
                name=dataset.name,
                domain=dataset.domain,
                prompts=prompts,
                sources=[s.name for s in spec.dataset_sources(dataset)],
                samples_per_source=dataset.samples_per_source,
                sft_prompts=sft,
                pref_prompts=None if prompts is None or sft is None else prompts - sft,
            )
        )
    plan = Plan(datasets)
    if any(d.prompts is None for d in datasets):
        plan.notes.append(
            "datasets without rowLimit have unknown size: their counts and GPU-hours are left out"
        )
    _estimate_gpu_hours(spec, plan)
    return plan


def _estimate_gpu_hours(spec: FusionRunSpec, plan: Plan) -> None:
    sampling = 0.0
    for source in spec.sources:
        size = parameters_billions(source.model)
        tokens = sum(
            (d.responses or 0) // max(len(d.sources), 1) * MEAN_ANSWER_TOKENS
            for d in plan.datasets
            if source.name in d.sources
        )
        if size is None:
            plan.notes.append(
                f"source {source.name}: size unknown from its model name, sampling not estimated"
            )
            continue
        throughput = 60000.0 / size * source.serving.gpus
        sampling += tokens / throughput / 3600 * source.serving.gpus
    plan.gpu_hours["sample"] = sampling
    responses = plan.total("responses") or 0
    plan.gpu_hours["score"] = responses / RM_ANSWERS_PER_GPU_SECOND / 3600

    target_size = parameters_billions(spec.target.model)
    if target_size is None:
        plan.notes.append("target size unknown from its model name: training not estimated")
        return
    sft_rows = plan.total("sft_prompts") or 0
    pairs = plan.total("pref_prompts") or 0
    seq = MEAN_PROMPT_TOKENS + MEAN_ANSWER_TOKENS
    for stage, hyper in spec.training_stages().items():
        sequences = sft_rows if stage == "sft" else pairs * (3 if stage == "wrpo" else 2)
        # 6 N D for training, plus a forward pass of the frozen reference for preference stages.
        flops_per_token = 6 if stage == "sft" else 8
        flops = flops_per_token * target_size * 1e9 * sequences * seq * hyper.epochs
        plan.gpu_hours[stage] = flops / (GPU_PEAK_FLOPS * TRAIN_MFU) / 3600


def format_plan(spec: FusionRunSpec, stages: list, plan: Plan) -> str:
    lines = [f"recipe: {spec.recipe.value}", f"training backend: {spec.training.backend}", "", "stages:"]
    for i, stage in enumerate(stages, 1):
        gpu = "GPU" if stage.uses_gpu else "CPU"
        lines.append(f"  {i:2d}. {stage.name:<14} [{gpu}] {stage.description}")
        lines.extend(f"        creates: {child}" for child in stage.children)
    lines += ["", "work:"]
    header = f"  {'dataset':<28} {'domain':<12} {'prompts':>9} {'sources':>7} {'N':>3} {'responses':>11} {'sft':>8} {'pairs<=':>8}"
    lines.append(header)

    def fmt(value: int | None) -> str:
        return "?" if value is None else f"{value:,}"

    for d in plan.datasets:
        lines.append(
            f"  {d.name:<28} {d.domain:<12} {fmt(d.prompts):>9} {len(d.sources):>7} {d.samples_per_source:>3} "
            f"{fmt(d.responses):>11} {fmt(d.sft_prompts):>8} {fmt(d.pref_prompts):>8}"
        )
    lines.append(
        f"  {'total':<28} {'':<12} {fmt(plan.total('prompts')):>9} {'':>7} {'':>3} "
        f"{fmt(plan.total('responses')):>11} {fmt(plan.total('sft_prompts')):>8} {fmt(plan.total('pref_prompts')):>8}"
    )
    sft_tokens = (plan.total("sft_prompts") or 0) * (MEAN_PROMPT_TOKENS + MEAN_ANSWER_TOKENS)
    lines.append(f"  training tokens per SFT epoch (estimated): {sft_tokens:,}")
    lines.append("  pairs<= : preference prompts; pairs outside the reward-margin range are dropped at build")
    lines += ["", "rough GPU-hours:"]
    for stage, hours in plan.gpu_hours.items():
        lines.append(f"  {stage:<8} {'?' if hours is None else f'{hours:,.1f}'}")
    known = [h for h in plan.gpu_hours.values() if h is not None]
    lines.append(f"  {'total':<8} {sum(known):,.1f}")
    lines += ["", "assumptions:"]
    lines.extend(f"  {k}: {v}" for k, v in ASSUMPTIONS.items())
    lines.extend(f"  note: {n}" for n in plan.notes)
    return "\n".join(lines)
