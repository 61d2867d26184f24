"""FusionRun fields that shape every pod of a run: security context, scheduling, the model cache.

Each of `spec.podSecurity` and `spec.scheduling` holds run-wide values and, under `stages`, overrides for
one kind of workload (serving, sampling, scoring, training, evaluation): a field set for a workload
replaces the run-wide value of that field (lists and maps are replaced whole, not merged).
render/pods.py applies them to every pod template the operator renders.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from kubefusion_trainer.config import CamelModel

Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
Workload = Literal["serving", "sampling", "scoring", "training", "evaluation"]
WORKLOADS: tuple[str, ...] = ("serving", "sampling", "scoring", "training", "evaluation")


class Toleration(CamelModel):
    """A Kubernetes toleration."""

    key: str | None = Field(None, max_length=316, description="Taint key (empty with Exists: all taints).")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal. Default Equal.")
    value: str | None = Field(None, max_length=253, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate (empty: all)."
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")


class PodSecurity(CamelModel):
    """User and group ids of a run's pods. The rest of the `restricted` profile is always applied."""

    run_as_user: int | None = Field(
        None,
        ge=1,
        le=2147483647,
        description="UID the containers run as. Default 65532 (the kubefusion images' user); vLLM's image "
        "would run as root, so it always gets a non-root UID.",
    )
    run_as_group: int | None = Field(
        None, ge=0, le=2147483647, description="Primary GID of the containers. Default 65532."
    )
    fs_group: int | None = Field(
        None,
        ge=0,
        le=2147483647,
        description="Group that owns mounted volumes (where the volume type supports it; many NFS "
        "exports do not). Default 65532, changed only when the volume root does not match.",
    )
    supplemental_groups: list[int] | None = Field(
        None, max_length=32, description="Extra GIDs, e.g. the group that owns an NFS export."
    )
    platform_assigns_ids: bool | None = Field(
        None,
        description="Leave runAsUser, runAsGroup and fsGroup unset so the platform assigns them (OpenShift's "
        "restricted-v2 SCC gives each namespace a UID range; the images keep group 0 writable). Default "
        "false.",
    )


class PodSecurityStages(CamelModel):
    """Per-workload overrides of spec.podSecurity."""

    serving: PodSecurity | None = Field(None, description="vLLM servers.")
    sampling: PodSecurity | None = Field(None, description="Sampling Jobs.")
    scoring: PodSecurity | None = Field(None, description="Scoring Jobs.")
    training: PodSecurity | None = Field(None, description="Training jobs (every node).")
    evaluation: PodSecurity | None = Field(None, description="The evaluate Job and its candidate servers.")


class PodSecurityConfig(PodSecurity):
    """Run-wide pod identity, with per-workload overrides."""

    stages: PodSecurityStages = Field(
        default_factory=PodSecurityStages, description="Overrides per workload; a field set here wins."
    )

    def for_workload(self, workload: str | None) -> PodSecurity:
        return _merged(self, PodSecurity, getattr(self.stages, workload) if workload else None)


class Scheduling(CamelModel):
    """Where pods may run and how Kubernetes and Kueue rank them."""

    node_selector: dict[str, str] | None = Field(None, description="Node labels the pods need.")
    tolerations: list[Toleration] | None = Field(
        None, max_length=32, description="Taints the pods tolerate (e.g. nvidia.com/gpu on GPU pools)."
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity), as in a pod spec.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        None, max_length=253, description="Kubernetes PriorityClass of the pods."
    )
    workload_priority_class: str | None = Field(
        None,
        max_length=63,
        description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class on the workloads).",
    )

    @model_validator(mode="after")
    def _affinity_kinds(self) -> Scheduling:
        unknown = set(self.affinity or {}) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}
        if unknown:
            raise ValueError(f"affinity: unknown field(s) {', '.join(sorted(unknown))}")
        return self


class SchedulingStages(CamelModel):
    """Per-workload overrides of spec.scheduling."""

    serving: Scheduling | None = Field(None, description="vLLM servers (before sources[].serving).")
    sampling: Scheduling | None = Field(None, description="Sampling Jobs.")
    scoring: Scheduling | None = Field(None, description="Scoring Jobs (the reward model's GPUs).")
    training: Scheduling | None = Field(None, description="Training jobs (every node).")
    evaluation: Scheduling | None = Field(None, description="The evaluate Job and its candidate servers.")


class SchedulingConfig(Scheduling):
    """Run-wide scheduling, with per-workload overrides."""

    stages: SchedulingStages = Field(
        default_factory=SchedulingStages, description="Overrides per workload; a field set here wins."
    )

    def for_workload(self, workload: str | None) -> Scheduling:
        return _merged(self, Scheduling, getattr(self.stages, workload) if workload else None)


class ModelCache(CamelModel):
    """Where vLLM servers (and the evaluate stage) keep downloaded weights."""

    pvc: str | None = Field(
        None,
        max_length=253,
        description="An existing ReadWriteMany PVC shared by every server and the evaluate stage: weights "
        "are downloaded once per cluster, not once per pod start.",
    )
    sub_path: str | None = Field(
        None, max_length=1024, description="Folder inside the PVC. Default: the root."
    )
    size: Quantity | None = Field(
        None,
        description="Without pvc: size of each server's own cache volume (its ephemeral-storage request and "
        "the volume's limit). Default: estimated from the model's size (2 bytes per parameter + 20%), "
        "at least 20Gi.",
    )
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        description="Without pvc: put each server's cache on a generic ephemeral volume of this storage "
        "class (off the node's root disk) instead of an emptyDir.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelCache:
        if self.pvc and (self.size is not None or self.storage_class_name):
            raise ValueError("modelCache: set pvc, or size/storageClassName, not both")
        return self


def _merged(base: CamelModel, model: type[CamelModel], override: CamelModel | None) -> Any:
    fields = set(model.model_fields)
    values = {k: getattr(base, k) for k in fields}
    if override is not None:
        values.update({k: getattr(override, k) for k in override.model_fields_set & fields})
    return model.model_validate({k: v for k, v in values.items() if v is not None})
