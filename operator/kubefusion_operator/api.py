"""The FusionRun API (kubefusion.dev/v1alpha1): the product's contract with kubectl, Helm and GitOps.

The data-plane and training pieces come from kubefusion_trainer.config; this module adds what only a
cluster needs (serving, storage, credentials, queueing, suspend) and the status. The CRD in
crds/fusionrun.yaml is generated from these models (kubefusion_operator.crd).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from kubefusion_operator.api_pods import (
    ModelCache,
    PodSecurityConfig,
    Quantity,
    SchedulingConfig,
    Toleration,
)
from kubefusion_trainer.config import (
    CamelModel,
    FusionConfig,
    RunConfig,
    RunName,
    SourceConfig,
    TargetConfig,
    TrainingConfig,
    TrainingHyperparameters,
)

GROUP = "kubefusion.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FusionRun"
PLURAL = "fusionruns"
SINGULAR = "fusionrun"
SHORT_NAMES = ["fr"]
CATEGORIES = ["kubefusion"]

RETRY_ANNOTATION = f"{GROUP}/retry-stage"


class ResourceRequirements(CamelModel):
    """Container resource requests and limits (Kubernetes quantities)."""

    requests: dict[str, Quantity] | None = Field(None, description="Minimum resources, e.g. cpu, memory.")
    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources.")


class ServingConfig(CamelModel):
    """How a source model is served (a vLLM Deployment and Service)."""

    image: str = Field(
        "vllm/vllm-openai:v0.11.0", min_length=1, max_length=512, description="vLLM OpenAI-server image."
    )
    gpus: int = Field(1, ge=0, le=16, description="GPUs per replica; also vLLM's --tensor-parallel-size.")
    replicas: int = Field(1, ge=1, le=64, description="Server replicas behind the Service.")
    max_model_len: int | None = Field(None, ge=128, le=1048576, description="vLLM --max-model-len.")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Answers one replica generates at once (vLLM --max-num-seqs). The sampling shards share "
        "it, so no request waits in the server's queue. Default: --max-num-seqs from extraArgs, else 256.",
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=64, description="Extra vLLM command-line arguments."
    )
    node_selector: dict[str, str] | None = Field(None, description="Node labels the server pods need.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations.")
    resources: ResourceRequirements | None = Field(
        None,
        description="CPU/memory requests and limits (GPUs come from gpus). Default: requests of 8 CPUs and "
        "64Gi memory per GPU (4 CPUs, 16Gi without GPUs).",
    )


class Source(SourceConfig):
    """A source LLM: what to sample and how to serve it."""

    serving: ServingConfig = Field(default_factory=ServingConfig, description="vLLM serving settings.")


class Target(TargetConfig):
    """The model being trained; WRPO serves its SFT checkpoint to sample it."""

    serving: ServingConfig = Field(
        default_factory=ServingConfig,
        description="How WRPO serves the SFT target (1 GPU, no extra arguments by default).",
    )


class ServingPolicy(CamelModel):
    """Run-wide serving limits, to bound GPU cost."""

    max_concurrent_sources: int | None = Field(
        None, ge=1, le=16, description="Most sources served at once. Default: all."
    )
    allow_gpu_overlap: bool = Field(
        False, description="Let GPU stages overlap (e.g. scoring while sources still serve). Default false."
    )
    model_cache: ModelCache = Field(
        default_factory=ModelCache, description="Where servers keep downloaded weights."
    )


class StorageConfig(CamelModel):
    """Where the run keeps prompts, answers, datasets and checkpoints."""

    pvc: str | None = Field(
        None,
        max_length=253,
        description="A ReadWriteMany PersistentVolumeClaim mounted in every pod.",
    )
    sub_path: str | None = Field(
        None, max_length=1024, description="Folder inside the volume. Default: the run name."
    )
    uri: str | None = Field(
        None,
        max_length=1024,
        description="An object-store URI (s3://...) or, on one machine, a local folder. Default runs/<name>.",
    )

    @model_validator(mode="after")
    def _one_backend(self) -> StorageConfig:
        if self.pvc and self.uri:
            raise ValueError("storage: set pvc or uri, not both")
        return self


class SecretKeyRef(CamelModel):
    """A key of a Secret in the run's namespace (the value is never copied)."""

    name: str = Field(..., min_length=1, max_length=253, description="Secret name.")
    key: str = Field(..., min_length=1, max_length=253, description="Key inside the Secret.")


class Credentials(CamelModel):
    """Secrets the run's pods read, by reference only."""

    hf_token: SecretKeyRef | None = Field(None, description="Hugging Face token (gated models and datasets).")
    storage_secret: str | None = Field(
        None, max_length=253, description="Secret whose keys become environment variables for object storage."
    )


class TrainingRuntimeRef(CamelModel):
    """A Kubeflow Trainer v2 runtime the run's TrainJobs use instead of the one the chart ships."""

    name: str = Field(..., min_length=1, max_length=253, description="Runtime name.")
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(
        "ClusterTrainingRuntime",
        description="ClusterTrainingRuntime, or TrainingRuntime (in the run's namespace).",
    )


class ClusterTrainingConfig(TrainingConfig):
    """Per-stage training settings, and which training operator runs them on a cluster."""

    backend: Literal["auto", "trainjob", "pytorchjob"] = Field(
        "auto",
        description="auto: a Kubeflow Trainer v2 TrainJob when trainjobs.trainer.kubeflow.org is served, "
        "else a PyTorchJob (training operator v1). trainjob or pytorchjob: that one only (the run "
        "waits while it is not installed). Default auto.",
    )
    runtime: TrainingRuntimeRef | None = Field(
        None,
        description="TrainJobs only: the runtime to reference. It needs a replicated job and container "
        "named node with the torch mlPolicy. Default: the operator's (--training-runtime), which the "
        "Helm chart ships.",
    )


_MUTABLE_SPEC_FIELDS = {"suspend"}
CLUSTER_TRAINING_FIELDS = {"backend", "runtime"}  # spec.training fields stage processes never see


class FusionRunSpec(FusionConfig):
    """The desired fusion run. Immutable after creation, except suspend."""

    sources: list[Source] = Field(..., min_length=1, max_length=16, description="Source LLMs.")  # type: ignore[assignment]
    target: Target = Field(..., description="The small model being trained.")  # type: ignore[assignment]
    serving: ServingPolicy = Field(default_factory=ServingPolicy, description="Run-wide serving limits.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="The run's storage.")
    credentials: Credentials = Field(default_factory=Credentials, description="Secret references.")
    training: ClusterTrainingConfig = Field(  # type: ignore[assignment]
        default_factory=ClusterTrainingConfig, description="Training stages and their backend."
    )
    queue_name: str | None = Field(
        None, max_length=63, description="Kueue LocalQueue for the run's Jobs and PyTorchJobs."
    )
    suspend: bool = Field(False, description="Pause the run: servers scale to zero, Jobs are suspended.")
    stage_deadline_seconds: dict[str, Annotated[int, Field(ge=60)]] = Field(
        default_factory=dict,
        description="Most seconds a stage's Job or training job may run, by stage name (e.g. score: 7200); "
        "past it the stage fails with DeadlineExceeded. Default: no deadline.",
    )
    pod_security: PodSecurityConfig = Field(
        default_factory=PodSecurityConfig,
        description="User and group ids of the run's pods (they always meet the restricted Pod Security "
        "profile).",
    )
    scheduling: SchedulingConfig = Field(
        default_factory=SchedulingConfig,
        description="Node selection, tolerations, affinity and priority of the run's pods.",
    )

    def to_fusion_config(self) -> FusionConfig:
        """The part stage processes read (no serving, storage or credentials)."""
        cluster_only = set(FusionRunSpec.model_fields) - set(FusionConfig.model_fields)
        data = self.model_dump(exclude={*cluster_only, "sources", "target", "training"})
        data["training"] = self.training.model_dump(exclude=CLUSTER_TRAINING_FIELDS)
        data["sources"] = [s.model_dump(exclude={"serving"}) for s in self.sources]
        data["target"] = self.target.model_dump(exclude={"serving"})
        return FusionConfig.model_validate(data)

    def to_run_config(
        self, name: str, storage_root: str, endpoints: dict[str, str] | None = None
    ) -> RunConfig:
        return RunConfig(
            name=name, storage_root=storage_root, endpoints=endpoints or {}, spec=self.to_fusion_config()
        )

    def training_stages(self) -> dict[str, TrainingHyperparameters]:
        stages: dict[str, TrainingHyperparameters] = {"sft": self.training.sft}
        second = self.training.wrpo if self.recipe == "wrpo" else self.training.dpo
        if second is not None:
            stages["wrpo" if self.recipe == "wrpo" else "dpo"] = second
        return stages


class ObjectMeta(CamelModel):
    """The subset of metadata kubefusion reads."""

    model_config = CamelModel.model_config | {"extra": "allow"}

    name: RunName  # the same type RunConfig.name has: whatever one accepts, so does the other
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


ConditionType = Literal["Ready", "Succeeded", "Failed", "Progressing", "Stalled", "Suspended"]
CONDITION_TYPES: tuple[str, ...] = ("Ready", "Succeeded", "Failed", "Progressing", "Stalled", "Suspended")
StageState = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended", "Skipped"]


class Condition(CamelModel):
    """A Kubernetes-style condition."""

    type: str = Field(
        ...,
        max_length=316,
        description="Ready, Succeeded, Failed, Progressing, Reconciling, Stalled, Suspended, Blocked (pods "
        "that cannot be created or scheduled) or ReconcileFailed.",
    )
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., max_length=1024, description="CamelCase machine-readable reason.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(..., description="When status last changed.")
    observed_generation: int | None = Field(None, ge=0, description="The generation this condition is about.")


class StageProgress(CamelModel):
    """Counts a stage reports while it runs."""

    done: int = Field(0, ge=0, description="Units finished (prompts, answers, pairs or steps).")
    total: int | None = Field(None, ge=0, description="Units in all, when known.")
    unit: str = Field("items", max_length=63, description="What is counted.")
    last_loss: float | None = Field(None, description="Latest training loss (training stages).")


class StageRecord(CamelModel):
    """One stage of the run as last observed."""

    name: str = Field(..., max_length=63, description="Stage name, e.g. sample or sft.")
    state: StageState = Field(
        "Pending", description="Pending, Running, Succeeded, Failed, Suspended or Skipped."
    )
    start_time: datetime | None = Field(None, description="When the stage started.")
    end_time: datetime | None = Field(None, description="When the stage finished.")
    progress: StageProgress | None = Field(None, description="Progress counts.")
    outputs: list[str] = Field(
        default_factory=list, description="Paths on the run's storage the stage wrote."
    )
    message: str | None = Field(None, max_length=32768, description="Failure or progress details.")
    children: list[str] = Field(
        default_factory=list, description="Kubernetes objects of the stage, kind/name."
    )


class RunCounts(CamelModel):
    """Run-wide totals."""

    prompts: int | None = Field(None, ge=0, description="Prompts prepared.")
    samples: int | None = Field(None, ge=0, description="Answers sampled.")
    scored: int | None = Field(None, ge=0, description="Answers scored.")
    sft_rows: int | None = Field(None, ge=0, description="SFT rows built.")
    pairs: int | None = Field(None, ge=0, description="Preference pairs (or WRPO quadruples) built.")


class FusionRunStatus(CamelModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(None, ge=0, description="The spec generation last reconciled.")
    stage: str | None = Field(None, max_length=63, description="The stage now running (or done).")
    progress: str | None = Field(None, max_length=63, description="Short progress text, e.g. '3/11 stages'.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-style conditions.")
    stages: list[StageRecord] = Field(
        default_factory=list, description="Every stage of the recipe, in order."
    )
    counts: RunCounts | None = Field(None, description="Run-wide totals.")
    message: str | None = Field(None, max_length=32768, description="A one-line summary.")
    training_backend: Literal["trainjob", "pytorchjob"] | None = Field(
        None,
        description="The training backend the run uses (spec.training.backend, auto resolved): set when "
        "it is decided and kept once a training stage has started.",
    )
    tasks: dict[str, StageState] = Field(
        default_factory=dict,
        description="State of each unit of work by planner task name (e.g. sample/<source>): finished work "
        "is never redone, even when its child object is gone.",
    )


class FusionRun(CamelModel):
    """A FusionRun object as read from YAML or the API."""

    model_config = CamelModel.model_config | {"extra": "forbid"}

    api_version: Literal["kubefusion.dev/v1alpha1"]
    kind: Literal["FusionRun"]
    metadata: ObjectMeta
    spec: FusionRunSpec
    status: FusionRunStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


def immutable_spec_fields() -> list[str]:
    """camelCase names of spec fields that may not change after creation."""
    return [
        info.alias or name
        for name, info in FusionRunSpec.model_fields.items()
        if name not in _MUTABLE_SPEC_FIELDS
    ]


def as_dict(obj: Any) -> dict[str, Any]:
    """A model as the API would hold it: camelCase, no unset optionals."""
    return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
