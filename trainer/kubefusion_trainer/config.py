"""Config models the stages consume: sampling, datasets, scoring, training.

Pydantic only (no torch, no Kubernetes): the operator composes these into the
FusionRun API, and every stage reads them back from a run config file.
Field names are camelCase on the wire (the Kubernetes convention) and
snake_case in Python.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40,
        pattern=NAME_PATTERN,
        description="A DNS-1123 label (lower case letters, digits, '-'), at most 40 characters.",
    ),
]
RUN_NAME_MAX = 63  # a DNS-1123 label: the run name is a label value and the prefix of every child name
RunName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=RUN_NAME_MAX,
        pattern=NAME_PATTERN,
        description="A DNS-1123 label (lower case letters, digits, '-'), at most 63 characters: the "
        "FusionRun's metadata.name, used as a label value and as the prefix of child names.",
    ),
]
ModelRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        description="A Hugging Face model id (org/name) or a path on the run's storage.",
    ),
]


class CamelModel(BaseModel):
    """Strict base: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class Recipe(StrEnum):
    FUSECHAT3 = "fusechat3"
    WRPO = "wrpo"


KNOWN_DOMAINS = ("instruction", "math", "code", "chinese")


class SamplingParams(CamelModel):
    """How one model is sampled (OpenAI-compatible request parameters)."""

    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature. Default 0.8.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling probability mass. Default 0.95.")
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=5.0, description="Repetition penalty (vLLM extension). Default 1.0 (off)."
    )
    max_tokens: int = Field(2048, ge=1, le=131072, description="Most tokens per answer. Default 2048.")
    seed: int | None = Field(
        None, ge=0, description="Base seed; sample i of a prompt uses seed + i when set."
    )


class SourceConfig(CamelModel):
    """A source LLM whose answers are fused into the target."""

    name: Name
    model: ModelRef
    sampling: SamplingParams = Field(
        default_factory=SamplingParams, description="Sampling parameters for this source."
    )
    parameters_billions: float | None = Field(
        None,
        gt=0,
        le=100000,
        description="Model size for `kubefusion plan` and the operator's model cache when the model is not "
        "in its table of known models. "
        "Default: from the table, else from the name (e.g. 70B).",
    )


class TargetConfig(CamelModel):
    """The small model being trained."""

    model: ModelRef
    chat_template: str | None = Field(
        None,
        max_length=65536,
        description="A Jinja chat template that replaces the tokenizer's own (with {% generation %} markers "
        "for assistant-only loss).",
    )
    sampling: SamplingParams = Field(
        default_factory=SamplingParams,
        description="How the SFT target is sampled for WRPO (recipe wrpo only).",
    )
    samples_per_prompt: int = Field(
        5, ge=2, le=64, description="Answers sampled from the SFT target per DPO prompt (WRPO). Default 5."
    )
    parameters_billions: float | None = Field(
        None,
        gt=0,
        le=100000,
        description="Model size for `kubefusion plan` and the operator's model cache when the model is not "
        "in its table of known models. "
        "Default: from the table, else from the name (e.g. 8B).",
    )


class FieldMapping(CamelModel):
    """Which dataset columns hold the prompt, the gold answer and the tests."""

    prompt: str = Field(
        "prompt",
        min_length=1,
        max_length=128,
        description="Column with the prompt: a string (single turn) or a list of chat messages.",
    )
    system: str | None = Field(None, max_length=128, description="Optional column with a system prompt.")
    answer: str | None = Field(
        None, max_length=128, description="Column with the gold answer (math) or reference answer."
    )
    tests: str | None = Field(
        None, max_length=128, description="Column with test code or a list of test cases (code)."
    )


class DatasetFilter(CamelModel):
    """Keep or drop rows whose field matches a regular expression."""

    field: str = Field(
        ..., min_length=1, max_length=128, description="Column the pattern is matched against."
    )
    pattern: str = Field(..., min_length=1, max_length=4096, description="A Python regular expression.")
    action: Literal["exclude", "include"] = Field(
        "exclude", description="exclude drops matching rows; include keeps only matching rows."
    )

    @model_validator(mode="after")
    def _pattern_compiles(self) -> DatasetFilter:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return self


class ExistingAnswers(CamelModel):
    """Answers already in the dataset, taken as samples of another source."""

    source: Name = Field(..., description="Name under which these answers count (e.g. llama-3.1-405b).")
    field: str = Field(..., min_length=1, max_length=128, description="Column holding the answer text.")


class DatasetConfig(CamelModel):
    """One prompt dataset and how it is sampled and split."""

    name: Name
    location: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=r"^(hf://|s3://|gs://|file://|/|\./|[A-Za-z0-9_.-])",
        description="hf://org/name (hub), s3://bucket/key (object store), or a path on the run's storage "
        "(JSONL, Parquet or a datasets save_to_disk folder).",
    )
    config_name: str | None = Field(None, max_length=128, description="Hub dataset config name.")
    split: str = Field("train", min_length=1, max_length=128, description="Dataset split. Default train.")
    domain: str = Field(
        "instruction",
        min_length=1,
        max_length=40,
        pattern=NAME_PATTERN,
        description="instruction, math, code, chinese, or a custom name (treated like instruction).",
    )
    fields: FieldMapping = Field(default_factory=FieldMapping, description="Column mapping.")
    filters: list[DatasetFilter] = Field(
        default_factory=list, max_length=32, description="Declarative row filters, applied in order."
    )
    sources: list[Name] | None = Field(
        None, max_length=16, description="Sources that answer this dataset. Default: all sources."
    )
    samples_per_source: int = Field(
        5, ge=1, le=64, description="Answers sampled per prompt and source. Default 5."
    )
    sft_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Share of prompts used for SFT; the rest build preference pairs. Default 0.4 "
        "(the paper's 4:6 for instruction data). chinese data is always SFT only.",
    )
    row_limit: int | None = Field(None, ge=1, description="Use at most this many prompts (after filtering).")
    existing_answers: list[ExistingAnswers] = Field(
        default_factory=list, max_length=8, description="Dataset columns taken as another source's answers."
    )

    @property
    def sft_only(self) -> bool:
        return self.domain == "chinese" or self.sft_fraction >= 1.0


class RewardModelConfig(CamelModel):
    """The reward model that scores every answer."""

    model: ModelRef
    trust_remote_code: bool = Field(False, description="Needed for ArmoRM-style models. Default false.")
    parameters_billions: float | None = Field(
        None,
        gt=0,
        le=100000,
        description="Model size for `kubefusion plan` and the operator's model cache when the model is not in "
        "its table.",
    )
    batch_size: int = Field(
        256, ge=1, le=4096, description="Most answers per forward pass (see tokensPerBatch). Default 256."
    )
    tokens_per_batch: int | None = Field(
        None,
        ge=1,
        le=1048576,
        description="Token budget of one forward pass: answers are length-sorted and packed while rows x the "
        "longest row fit (one answer always fits). Default 16384 on a GPU, 2048 on CPU (cache-sized).",
    )
    max_length: int = Field(
        4096, ge=16, le=131072, description="Tokens per scored conversation. Default 4096."
    )
    gpus: int = Field(1, ge=0, le=16, description="GPUs for the scoring Job (0: CPU). Default 1.")


class MarginRange(CamelModel):
    """Reward gap a preference pair must have."""

    min: float = Field(0.01, ge=0.0, description="Smallest accepted reward gap. Default 0.01.")
    max: float = Field(0.1, gt=0.0, description="Largest accepted reward gap. Default 0.1.")

    @model_validator(mode="after")
    def _ordered(self) -> MarginRange:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be less than max ({self.max})")
        return self


class CodeExecutionLimits(CamelModel):
    """Limits for running code answers against tests."""

    timeout_seconds: float = Field(
        10.0, gt=0.0, le=600.0, description="Wall-clock limit per answer. Default 10."
    )
    memory_mb: int = Field(512, ge=32, le=65536, description="Address-space limit per answer. Default 512.")
    max_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes an answer may run at once, itself included (1: it may start none).",
    )
    sandbox_pods: int = Field(
        4,
        ge=1,
        le=256,
        description="On a cluster: sandbox pods (an Indexed Job, CPU only) that run the code answers. Default 4.",
    )
    runtime_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="On a cluster: RuntimeClass of the sandbox pods, e.g. gvisor or kata (stronger than "
        "the default runtime against kernel exploits). Default: the cluster's default runtime.",
    )


class ScoringConfig(CamelModel):
    """How answers are scored."""

    reward_model: RewardModelConfig
    margin: MarginRange = Field(default_factory=MarginRange, description="Pair reward-gap range.")
    code_execution: CodeExecutionLimits = Field(
        default_factory=CodeExecutionLimits, description="Sandbox limits for code answers."
    )
    shards: int = Field(
        1,
        ge=1,
        le=64,
        description="Score pods on a cluster (an Indexed Job; prompts split by id, each pod with "
        "rewardModel.gpus GPUs). Default 1.",
    )
    cpus: int = Field(
        4,
        ge=1,
        le=256,
        description="CPUs each score pod requests; math checks and code runs use that many workers. Default 4.",
    )


class StageResources(CamelModel):
    """Where a training stage runs."""

    nodes: int = Field(1, ge=1, le=512, description="Nodes (1 Master + nodes-1 Workers). Default 1.")
    gpus_per_node: int = Field(8, ge=0, le=16, description="GPUs per node (0: CPU). Default 8.")
    image: str | None = Field(None, max_length=512, description="Trainer image. Default: the operator's.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        3, description="DeepSpeed ZeRO stage (0: no DeepSpeed). Default 3."
    )

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


class TrainingHyperparameters(CamelModel):
    """Hyperparameters shared by every training stage."""

    epochs: float = Field(1.0, gt=0.0, le=100.0, description="Passes over the stage's data.")
    learning_rate: float = Field(5e-6, gt=0.0, le=1.0, description="Peak learning rate.")
    global_batch_size: int = Field(128, ge=1, description="Sequences per optimizer step, over all GPUs.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per GPU per forward pass.")
    max_length: int = Field(2048, ge=16, le=131072, description="Most tokens per sequence.")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of steps spent warming up.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    checkpoint_interval: int = Field(200, ge=1, description="Optimizer steps between checkpoints.")
    seed: int = Field(42, ge=0, description="Seed for data order and initialisation.")
    resources: StageResources = Field(default_factory=StageResources, description="Nodes, GPUs, image, ZeRO.")

    def gradient_accumulation_steps(self, world_size: int | None = None) -> int:
        """global = world size x micro batch x accumulation; it must divide.

        world_size: processes actually launched (WORLD_SIZE); default nodes x gpusPerNode from the spec.
        """
        processes = self.resources.world_size if world_size is None else world_size
        per_step = processes * self.micro_batch_size
        if self.global_batch_size % per_step:
            what = "nodes x gpusPerNode" if world_size is None else f"world size {world_size}"
            raise ValueError(
                f"globalBatchSize {self.global_batch_size} is not divisible by {what} x "
                f"microBatchSize = {per_step}"
            )
        return self.global_batch_size // per_step


class SftConfig(TrainingHyperparameters):
    """Supervised fine-tuning on the best answers."""

    packing: bool = Field(False, description="Pack several conversations into one sequence.")


class PreferenceHyperparameters(TrainingHyperparameters):
    """What the preference stages (DPO, WRPO) share beyond the training hyperparameters."""

    sft_loss_weight: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description=(
            "Weight of an SFT term (mean negative log-likelihood of the chosen answers' tokens) added to the "
            "preference loss, as in RPO (trl's loss_type 'sft'); WRPO weights its two chosen answers by "
            "alpha like its reward. It keeps the chosen answers' likelihood from falling while the margin "
            "grows. Default 0: the plain loss, as FuseChat-3.0 and WRPO."
        ),
    )
    sft_replay_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Fraction of the SFT rows (of every dataset, drawn with the stage's seed) that the preference "
            "stage also learns from, through its SFT term only: each becomes a row whose chosen and rejected "
            "answers are the same SFT answer, so the preference loss gives it no gradient. Keeps skills "
            "without preference pairs from drifting while the preference stage moves the shared weights. "
            "Needs sftLossWeight > 0. Replay rows add log 2 to the logged preference loss. Default 0."
        ),
    )

    @model_validator(mode="after")
    def _replay_needs_the_sft_term(self) -> PreferenceHyperparameters:
        if self.sft_replay_fraction > 0 and self.sft_loss_weight == 0:
            raise ValueError(
                f"sftReplayFraction {self.sft_replay_fraction} needs sftLossWeight > 0: replayed SFT rows "
                "are learned only through the SFT term"
            )
        return self


class DpoConfig(PreferenceHyperparameters):
    """Direct preference optimisation on best-vs-worst pairs."""

    beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO beta (the paper used 10 with sigmoid_norm).")
    loss_type: Literal["sigmoid", "sigmoid_norm"] = Field(
        "sigmoid",
        description="sigmoid (DPO) or sigmoid_norm (length-normalised DPO, FuseChat-3.0 for Llama).",
    )
    precompute_ref_log_probs: bool = Field(False, description="Compute reference log-probs once up front.")


class WrpoConfig(PreferenceHyperparameters):
    """Weighted-reward preference optimisation (alpha is required)."""

    beta: float = Field(0.01, gt=0.0, le=100.0, description="WRPO beta. Default 0.01.")
    alpha: float = Field(
        ..., ge=0.0, le=1.0, description="Weight of the source's chosen answer (its maximum when linear)."
    )
    alpha_schedule: Literal["linear", "static"] = Field(
        "linear", description="linear rises from 0 to alpha over training; static keeps alpha."
    )


class TrainingConfig(CamelModel):
    """Per-stage training settings."""

    sft: SftConfig = Field(default_factory=SftConfig, description="SFT stage.")
    dpo: DpoConfig | None = Field(None, description="DPO stage (recipe fusechat3).")
    wrpo: WrpoConfig | None = Field(None, description="WRPO stage (recipe wrpo; alpha required).")


class EvaluationConfig(CamelModel):
    """Optional scorecard: fused vs original target on held-out prompts."""

    held_out_fraction: float = Field(
        0.05, gt=0.0, lt=1.0, description="Share of each dataset's prompts held out. Default 0.05."
    )
    max_prompts: int = Field(500, ge=1, description="Most held-out prompts per dataset. Default 500.")


class FusionConfig(CamelModel):
    """Everything the data plane and the trainer need to know about a run."""

    recipe: Recipe = Field(Recipe.FUSECHAT3, description="fusechat3 (SFT then DPO) or wrpo (SFT then WRPO).")
    target: TargetConfig
    sources: list[SourceConfig] = Field(..., min_length=1, max_length=16, description="Source LLMs.")
    datasets: list[DatasetConfig] = Field(..., min_length=1, max_length=64, description="Prompt datasets.")
    scoring: ScoringConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training stages.")
    evaluation: EvaluationConfig | None = Field(None, description="Held-out scorecard; off when absent.")

    @model_validator(mode="after")
    def _cross_field(self) -> FusionConfig:
        for kind, names in (
            ("sources", [s.name for s in self.sources]),
            ("datasets", [d.name for d in self.datasets]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"{kind}: name {name!r} is used twice; names must be unique")
                seen.add(name)
        known = {s.name for s in self.sources}
        for i, dataset in enumerate(self.datasets):
            for name in dataset.sources or []:
                if name not in known:
                    raise ValueError(
                        f"datasets[{i}].sources: {name!r} is not a source (known: {', '.join(sorted(known))})"
                    )
        if self.recipe is Recipe.WRPO and self.training.wrpo is None:
            raise ValueError("training.wrpo: recipe wrpo needs training.wrpo with alpha")
        return self

    def dataset_sources(self, dataset: DatasetConfig) -> list[SourceConfig]:
        """The sources that answer a dataset (all by default)."""
        if dataset.sources is None:
            return list(self.sources)
        wanted = set(dataset.sources)
        return [s for s in self.sources if s.name in wanted]


class RunConfig(CamelModel):
    """What every stage process reads with --config: one run's identity, storage and spec.

    The operator renders it into a ConfigMap; the single-machine runner writes it to a file.
    """

    name: RunName = Field(..., description="The run's name (the FusionRun's metadata.name).")
    storage_root: str = Field(..., min_length=1, description="Root of the run's storage (a mounted path).")
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="OpenAI-compatible base URL per model being sampled (source name, or 'target').",
    )
    spec: FusionConfig


def load_run_config(path: str) -> RunConfig:
    """Read a run config from a YAML or JSON file."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        return RunConfig.model_validate(yaml.safe_load(handle))
