"""Work counts, GPU-hours and a wall-clock critical path for `kubefusion plan`. Pure arithmetic.

Every figure follows from the spec, the tables in model_table.py (sizes, decode throughput per GPU type,
each with its source) and the ASSUMPTIONS below, all of which the plan prints. Anything unknown (a dataset
without rowLimit that is not in the table, a model of unknown size) makes the figures that need it, and the
totals, "not estimated" with the reason, instead of a smaller number that looks complete.

Wall-clock: each stage runs on the GPUs it gets (sampling: serving.replicas x serving.gpus per source, at
most serving.maxConcurrentSources sources at once; scoring: scoring.shards pods x rewardModel.gpus, with
the CPU checks beside it; training: nodes x gpusPerNode), and the stages run one after another, so the
critical path is their sum (sampling: the makespan of the sources over the concurrent-source lanes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubefusion_operator.api import FusionRunSpec, ServingConfig
from kubefusion_operator.model_table import (
    GPU_TYPES,
    KNOWN_DATASETS,
    decode_throughput,
    model_size,
    size_from_name,
)
from kubefusion_operator.render.sandbox import CONCURRENCY as SANDBOX_CPUS
from kubefusion_trainer.training.replay import replay_count

MEAN_ANSWER_TOKENS = 500
MEAN_PROMPT_TOKENS = 200
TRAIN_MFU = 0.35  # training, ZeRO-3 over several nodes
SCORE_MFU = 0.40  # the reward model's forward passes: prefill-like, large batches
SERVER_START_HOURS = 0.25  # pulling weights from a warm cache and loading them, per server start
CODE_RUN_SECONDS = 1.0  # one code answer against its tests, on one CPU (bench_sandbox: 0.05 on tiny tests)
MATH_CHECK_SECONDS = 0.05  # one math-verify comparison, on one CPU
PREPARE_ROWS_PER_SECOND = 2000.0  # reading, filtering and normalising hub rows (download excluded)
BUILD_ANSWERS_PER_SECOND = 10000.0  # reading scores, pairing and writing datasets

ASSUMPTIONS = [
    f"mean answer {MEAN_ANSWER_TOKENS} tokens, mean prompt {MEAN_PROMPT_TOKENS} tokens",
    "decode throughput per GPU at full batch: the table in kubefusion_operator/model_table.py (source per row)",
    f"server start {SERVER_START_HOURS:g} h (warm weight cache); not in GPU-hours",
    f"reward model forward: 2 x params FLOPs per token at {SCORE_MFU:.0%} of peak",
    f"code answer {CODE_RUN_SECONDS:g} CPU-s (sandbox pods, verify-code), math check {MATH_CHECK_SECONDS:g} CPU-s "
    "(score pods, beside the reward model)",
    f"training: 6 x params FLOPs per token (SFT), 8 with the frozen reference (DPO/WRPO), {TRAIN_MFU:.0%} MFU",
    f"prepare {PREPARE_ROWS_PER_SECOND:,.0f} rows/s, build {BUILD_ANSWERS_PER_SECOND:,.0f} answers/s (CPU)",
    "stages run one after another (allowGpuOverlap aside); eval prompts (held out) counted as sampled",
]


def parameters_billions(model: str) -> float | None:
    """A model's size from its name (kept for callers of the old name; see model_table.model_size)."""
    return size_from_name(model)


@dataclass
class DatasetWork:
    name: str
    domain: str
    prompts: int | None
    sources: list[str]
    samples_per_source: int
    sft_prompts: int | None
    pref_prompts: int | None
    existing_answers: int = 0  # answer columns taken from the dataset: scored, not sampled

    @property
    def responses(self) -> int | None:
        if self.prompts is None:
            return None
        return self.prompts * len(self.sources) * self.samples_per_source


@dataclass
class StageEstimate:
    stage: str
    gpus: int  # GPUs the stage holds while it runs (0: CPU only)
    gpu_hours: float | None  # None: not estimated
    wall_hours: float | None
    detail: str
    parts: list[StageEstimate] = field(default_factory=list)


@dataclass
class Plan:
    datasets: list[DatasetWork]
    gpu: str = "h100"
    stages: list[StageEstimate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def total(self, attr: str) -> int | None:
        values = [getattr(d, attr) for d in self.datasets]
        return None if any(v is None for v in values) else sum(values)

    @property
    def gpu_hours(self) -> dict[str, float | None]:
        return {s.stage: s.gpu_hours for s in self.stages if s.gpus}

    def gpu_hours_total(self) -> float | None:
        values = list(self.gpu_hours.values())
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def critical_path_hours(self) -> float | None:
        values = [s.wall_hours for s in self.stages]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def plan_work(spec: FusionRunSpec, gpu: str = "h100") -> Plan:
    if gpu not in GPU_TYPES:
        raise ValueError(f"unknown GPU type {gpu!r} (known: {', '.join(GPU_TYPES)})")
    plan = Plan(_datasets(spec), gpu)
    for dataset, spec_dataset in zip(plan.datasets, spec.datasets, strict=True):
        if spec_dataset.row_limit is None and dataset.prompts is not None:
            plan.notes.append(
                f"dataset {dataset.name}: no rowLimit; {dataset.prompts:,} rows from the table of known datasets "
                "(before filters)"
            )
        elif dataset.prompts is None:
            plan.notes.append(f"dataset {dataset.name}: no rowLimit and not a known dataset: size unknown")
    _estimate(spec, plan)
    return plan


def _datasets(spec: FusionRunSpec) -> list[DatasetWork]:
    out = []
    for dataset in spec.datasets:
        prompts = dataset.row_limit or KNOWN_DATASETS.get(dataset.location.lower().rstrip("/"))
        sft_share = 1.0 if dataset.sft_only else dataset.sft_fraction
        sft = None if prompts is None else round(prompts * sft_share)
        out.append(
            DatasetWork(
                name=dataset.name,
                domain=dataset.domain,
                prompts=prompts,
                sources=[s.name for s in spec.dataset_sources(dataset)],
                samples_per_source=dataset.samples_per_source,
                sft_prompts=sft,
                pref_prompts=None if prompts is None or sft is None else prompts - sft,
                existing_answers=len(dataset.existing_answers),
            )
        )
    return out


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _sampling(
    name: str, model: str, size: float | None, answers: int | None, serving: ServingConfig, gpu: str
):
    gpus = max(serving.gpus, 1) * serving.replicas
    if size is None or answers is None:
        why = "model size unknown (set parametersBillions)" if size is None else "answer count unknown"
        return StageEstimate(name, gpus, None, None, f"not estimated: {why}")
    rate, source = decode_throughput(model, size, gpu)
    gpu_hours = answers * MEAN_ANSWER_TOKENS / rate / 3600
    wall = gpu_hours / gpus + SERVER_START_HOURS
    detail = f"{answers:,} answers x {MEAN_ANSWER_TOKENS} tok / {rate:,.0f} tok/s/GPU ({source})"
    return StageEstimate(name, gpus, gpu_hours, wall, detail)


def _lanes(parts: list[StageEstimate], lanes: int) -> float | None:
    """Makespan of running parts in order on `lanes` concurrent lanes (each starts when a lane frees)."""
    ends = [0.0] * max(lanes, 1)
    for part in parts:
        if part.wall_hours is None:
            return None
        i = ends.index(min(ends))
        ends[i] += part.wall_hours
    return max(ends)


def _estimate(spec: FusionRunSpec, plan: Plan) -> None:
    gpu = plan.gpu
    prompts = plan.total("prompts")
    plan.stages.append(_cpu("prepare", prompts, PREPARE_ROWS_PER_SECOND, "rows"))
    parts = []
    for source in spec.sources:
        datasets = [d for d in plan.datasets if source.name in d.sources]
        answers = _sum([None if d.prompts is None else d.prompts * d.samples_per_source for d in datasets])
        size, _ = model_size(source.model, source.parameters_billions)
        parts.append(
            _sampling(
                source.name,
                source.model,
                size,
                None if answers is None else int(answers),
                source.serving,
                gpu,
            )
        )
    lanes = spec.serving.max_concurrent_sources or len(spec.sources)
    plan.stages.append(
        StageEstimate(
            "sample",
            sum(p.gpus for p in parts[:lanes]),
            _sum([p.gpu_hours for p in parts]),
            _lanes(parts, lanes),
            f"{len(parts)} sources, {lanes} at a time",
            parts,
        )
    )
    sampled = plan.total("responses")
    existing = _sum([None if d.prompts is None else d.prompts * d.existing_answers for d in plan.datasets])
    code = _sum([d.responses for d in plan.datasets if d.domain == "code"])
    maths = _sum([d.responses for d in plan.datasets if d.domain == "math"])
    scored = None if sampled is None or existing is None else sampled + int(existing)
    if code:
        plan.stages.append(_verify_code("verify-code", spec, int(code)))
    plan.stages.append(_scoring("score", spec, scored, maths, gpu))
    plan.stages.append(_cpu("build", scored, BUILD_ANSWERS_PER_SECOND, "answers"))
    target_size, _ = model_size(spec.target.model, spec.target.parameters_billions)
    for stage, hyper in spec.training_stages().items():
        if stage == "wrpo":
            _target_sampling(spec, plan, target_size)
        plan.stages.append(_training(stage, spec, plan, hyper, target_size, gpu))


def _cpu(stage: str, count: float | None, rate: float, unit: str) -> StageEstimate:
    if count is None:
        return StageEstimate(stage, 0, 0.0, None, f"not estimated: {unit} unknown")
    return StageEstimate(stage, 0, 0.0, count / rate / 3600, f"{count:,.0f} {unit} at {rate:,.0f}/s (CPU)")


def _verify_code(stage: str, spec: FusionRunSpec, answers: int) -> StageEstimate:
    """Code answers run in sandbox pods (an Indexed Job, CPU only) before scoring."""
    pods = spec.scoring.code_execution.sandbox_pods
    cpu_hours = answers * CODE_RUN_SECONDS / 3600
    detail = f"{answers:,} code answers, {cpu_hours:,.0f} CPU-h on {pods} sandbox pods x {SANDBOX_CPUS} CPUs"
    return StageEstimate(stage, 0, 0.0, cpu_hours / (pods * SANDBOX_CPUS), detail)


def _scoring(stage: str, spec: FusionRunSpec, answers, maths, gpu: str) -> StageEstimate:
    scoring = spec.scoring
    rm = scoring.reward_model
    pods = scoring.shards
    gpus = max(rm.gpus, 1) * pods
    size, _ = model_size(str(rm.model), rm.parameters_billions)
    if answers is None or size is None:
        why = "answer count unknown" if answers is None else "reward model size unknown (parametersBillions)"
        return StageEstimate(stage, gpus, None, None, f"not estimated: {why}")
    flops = answers * (MEAN_PROMPT_TOKENS + MEAN_ANSWER_TOKENS) * 2 * size * 1e9
    gpu_hours = flops / (GPU_TYPES[gpu].peak_bf16_tflops * 1e12 * SCORE_MFU) / 3600
    cpu_seconds = (maths or 0) * MATH_CHECK_SECONDS  # code verdicts come from verify-code
    cpu_wall = cpu_seconds / (pods * scoring.cpus) / 3600
    wall = max(gpu_hours / gpus, cpu_wall)
    detail = (
        f"{answers:,} answers on {pods} pod(s) x {max(rm.gpus, 1)} GPU ({gpu_hours / gpus:.1f} h); "
        f"math checks {cpu_seconds / 3600:,.1f} CPU-h on {pods} x {scoring.cpus} CPUs ({cpu_wall:.2f} h)"
    )
    return StageEstimate(stage, gpus, gpu_hours, wall, detail)


def _target_sampling(spec: FusionRunSpec, plan: Plan, target_size: float | None) -> None:
    pairs = plan.total("pref_prompts")
    answers = None if pairs is None else pairs * spec.target.samples_per_prompt
    serving = spec.sources[0].serving  # the planner serves the target like the first source
    part = _sampling("sample-target", spec.target.model, target_size, answers, serving, plan.gpu)
    plan.stages.append(part)
    plan.stages.append(_scoring("score-target", spec, answers, 0, plan.gpu))
    plan.stages.append(_cpu("build-wrpo", answers, BUILD_ANSWERS_PER_SECOND, "answers"))


def _training(
    stage: str, spec: FusionRunSpec, plan: Plan, hyper, size: float | None, gpu: str
) -> StageEstimate:
    gpus = hyper.resources.nodes * max(hyper.resources.gpus_per_node, 1)
    sft_rows = plan.total("sft_prompts")
    rows = sft_rows if stage == "sft" else plan.total("pref_prompts")
    if size is None or rows is None:
        why = "target size unknown (set target.parametersBillions)" if size is None else "row count unknown"
        return StageEstimate(stage, gpus, None, None, f"not estimated: {why}")
    replayed = 0
    if stage != "sft":
        if sft_rows is None and hyper.sft_replay_fraction:
            return StageEstimate(stage, gpus, None, None, "not estimated: replayed SFT row count unknown")
        # A replayed SFT row is a pair like any other: both answers go through the model.
        replayed = replay_count(sft_rows or 0, hyper.sft_replay_fraction)
    sequences = rows if stage == "sft" else (rows + replayed) * (3 if stage == "wrpo" else 2)
    flops_per_token = 6 if stage == "sft" else 8
    tokens = sequences * (MEAN_PROMPT_TOKENS + MEAN_ANSWER_TOKENS) * hyper.epochs
    gpu_hours = (
        flops_per_token * size * 1e9 * tokens / (GPU_TYPES[gpu].peak_bf16_tflops * 1e12 * TRAIN_MFU) / 3600
    )
    detail = f"{sequences:,} sequences x {hyper.epochs:g} epochs on {hyper.resources.nodes} node(s) x {max(hyper.resources.gpus_per_node, 1)} GPUs"
    if replayed:
        detail += f" (with {replayed:,} replayed SFT rows)"
    return StageEstimate(stage, gpus, gpu_hours, gpu_hours / gpus, detail)
