"""Deterministic child names, labels and the shared render context.

Name budget: a child name and every name Kubernetes or a training operator derives from it must be a
DNS label (<= 63 characters). Derived names append a suffix to the child's name:
- Indexed Job pods get the hostname `<job>-<index>` (index < 100000, Kubernetes' completions limit);
- PyTorchJob Services and pods are `<job>-master-0` and `<job>-worker-<i>`;
- Trainer v2 TrainJobs run a JobSet whose pods are `<trainjob>-<replicatedJob>-<jobIndex>-<podIndex>`
  (replicated jobs `node`, `dataset-initializer`, `model-initializer`).
So each task kind's children are truncated to 63 minus the longest suffix derived from them (with a
hash of the full name, so names stay unique). The run name itself is at most 63 characters (it is a
label value), which the CRD enforces with a CEL rule (crd.name_rule).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kubefusion_operator.api import API_VERSION, GROUP, KIND, FusionRunSpec
from kubefusion_operator.planner import Task, TaskKind
from kubefusion_trainer.config import StageResources

MAX_NAME = 63  # DNS-1123 label: Service names, Job names (they become pod labels), container names
RUN_LABEL = f"{GROUP}/run"
STAGE_LABEL = f"{GROUP}/stage"
TASK_LABEL = f"{GROUP}/task"
TASK_ANNOTATION = f"{GROUP}/task"  # the exact planner task name
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DEFAULT_IMAGE = "ghcr.io/kubefusion/kubefusion-trainer:0.1.0"  # built from images/trainer.Dockerfile
DEFAULT_TRAINING_RUNTIME = "kubefusion-torch"  # the ClusterTrainingRuntime the Helm chart ships
METRICS_PORT = 9090  # every stage process serves kubefusion_progress_* here (--metrics-port)
METRICS_PORT_ANNOTATION = "prometheus.io/port"


def truncated(name: str, limit: int = MAX_NAME) -> str:
    """`name` if it fits, else a prefix plus an 8-character hash of the whole name (stable, unique)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


MAX_NODES = next(m.le for m in StageResources.model_fields["nodes"].metadata if hasattr(m, "le"))
MAX_JOB_INDEX = 99_999  # Kubernetes caps Indexed Job completions at 100000
# Longest suffix Kubernetes or a training operator appends to a child of each task kind.
DERIVED_SUFFIXES: dict[str, tuple[str, ...]] = {
    TaskKind.SERVER: (),  # Deployment pods use generateName, which Kubernetes truncates itself
    TaskKind.JOB: (f"-{MAX_JOB_INDEX}",),
    TaskKind.TRAIN: (
        f"-worker-{MAX_NODES - 1}",  # PyTorchJob Services/pods
        f"-node-0-{MAX_NODES - 1}",  # TrainJob (JobSet) pods
        "-dataset-initializer-0-0",
        "-model-initializer-0-0",
    ),
}
NAME_RESERVE = {
    kind: max((len(s) for s in suffixes), default=0) for kind, suffixes in DERIVED_SUFFIXES.items()
}


def child_name(run: str, suffix: str, reserve: int = 0) -> str:
    """`<run>-<suffix>`, leaving `reserve` characters for names derived from it."""
    limit = MAX_NAME - reserve
    name = truncated(f"{run}-{suffix}", limit)
    return name if name[0].isalpha() else truncated(f"kf-{name}", limit)  # Services need a leading letter


def task_suffix(task: Task) -> str:
    """Per-source tasks: <source>-serve / <source>-sample; evaluation candidates' servers: eval-<candidate>
    (never ends like a source's); others: the task name (no clashes possible)."""
    if task.name.startswith("serve-candidates/"):
        return f"eval-{task.name.split('/', 1)[1]}"
    if "/" in task.name:
        source = task.name.split("/", 1)[1]
        return f"{source}-{'serve' if task.kind == 'server' else 'sample'}"
    return task.name


def task_child_name(run: str, task: Task) -> str:
    return child_name(run, task_suffix(task), NAME_RESERVE.get(task.kind, max(NAME_RESERVE.values())))


def config_map_name(run: str) -> str:
    return child_name(run, "config")


def label_value(text: str) -> str:
    value = truncated(text.replace("/", "."))
    return value.strip("-_.") or "none"


@dataclass(frozen=True)
class RenderContext:
    """Everything a builder may read: the run and the operator's settings (no hidden inputs)."""

    name: str
    namespace: str
    uid: str
    spec: FusionRunSpec
    image: str = DEFAULT_IMAGE  # the kubefusion image stage Jobs and trainers run
    storage_mount: str = "/mnt/kubefusion"  # where the run's PVC is mounted in every pod
    config_mount: str = "/etc/kubefusion"  # where the RunConfig ConfigMap is mounted
    cluster_domain: str = "svc"  # Service URLs: http://<svc>.<ns>.<cluster_domain>:8000/v1
    training_backend: str = "pytorchjob"  # trainjob | pytorchjob: what training tasks become
    training_runtime: str = DEFAULT_TRAINING_RUNTIME  # TrainJobs' runtime unless the spec names one
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def storage_root(self) -> str:
        if self.spec.storage.pvc:
            return self.storage_mount
        return self.spec.storage.uri or f"{self.storage_mount}"

    @property
    def config_file(self) -> str:
        return f"{self.config_mount}/run.yaml"

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, task: Task | None = None, component: str | None = None) -> dict[str, str]:
        labels = {
            "app.kubernetes.io/name": "kubefusion",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component or (task.stage if task else "config"),
            "app.kubernetes.io/part-of": "kubefusion",
            "app.kubernetes.io/managed-by": "kubefusion-operator",
            RUN_LABEL: self.name,
        }
        if task is not None:
            labels[STAGE_LABEL] = task.stage
            labels[TASK_LABEL] = label_value(task.name)
        return {**self.extra_labels, **labels}

    def metadata(
        self, name: str, task: Task | None = None, *, queue: bool = False, component: str | None = None
    ) -> dict[str, Any]:
        labels = self.labels(task, component)
        if queue and self.spec.queue_name:
            labels[QUEUE_LABEL] = self.spec.queue_name
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": labels,
            "ownerReferences": [self.owner_reference()],
        }
        if task is not None:
            meta["annotations"] = {TASK_ANNOTATION: task.name}
        return meta
