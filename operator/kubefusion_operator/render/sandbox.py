"""Sandbox pods for a sandboxed task (planner.Task.sandboxed: LLM-written code): a NetworkPolicy + an Indexed Job.

Each pod runs one sandbox shard (kubefusion_trainer.stages.verify_code):
  init container `stage-in` (trusted, before any answer runs): reads the run's storage and writes only its
      shard's inputs (code, test inputs, limits; no expected values) to the `inbox` emptyDir, and creates
      the shard's verdict folder;
  container `sandbox`: runs the answers with process containment. It sees the inbox (read-only), a
      size-limited scratch emptyDir, and exactly its own verdict folder on the storage (subPathExpr by
      completion index) - no run config, no other storage, no Secret, no envFrom, no ServiceAccount token,
      no Service links; read-only root filesystem; restricted Pod Security profile; optional RuntimeClass
      (gVisor, Kata) from spec.scoring.codeExecution.runtimeClassName.
The NetworkPolicy selects exactly these pods and allows no ingress and no egress (enforced only by a CNI
that implements NetworkPolicy; the sandbox's seccomp filter refuses non-unix sockets regardless).
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import (
    RUN_LABEL,
    TASK_LABEL,
    RenderContext,
    label_value,
    task_child_name,
)

SANDBOX_UID = 65532  # the trainer image's user (images/trainer.Dockerfile)
INBOX, OUTBOX, SCRATCH = "/sandbox/inbox", "/sandbox/outbox", "/sandbox/scratch"
CONCURRENCY = 2  # answers at once per pod = its CPU request
BACKOFF_LIMIT = 3
SANDBOX_LABEL = "kubefusion.dev/sandbox"  # the chart's PodMonitor leaves these pods out (no metrics)
INDEX_ENV = {
    "name": "JOB_COMPLETION_INDEX",
    "valueFrom": {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    },
}


def restricted_container_context(*, read_only_root: bool) -> dict[str, Any]:
    """What the restricted Pod Security profile asks of every container, and no more privilege than that."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": read_only_root,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def network_policy_name(ctx: RenderContext, task: Task) -> str:
    return task_child_name(ctx.name, task)


def build_network_policy(ctx: RenderContext, task: Task) -> dict[str, Any]:
    """Deny all ingress and egress for the task's pods (both policy types, no rules)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ctx.metadata(network_policy_name(ctx, task), task),
        "spec": {
            "podSelector": {"matchLabels": _pod_selector(ctx, task)},
            "policyTypes": ["Ingress", "Egress"],
        },
    }


def _pod_selector(ctx: RenderContext, task: Task) -> dict[str, str]:
    return {RUN_LABEL: ctx.name, TASK_LABEL: label_value(task.name)}


def _phase(task: Task) -> str:
    return task.command[task.command.index("--phase") + 1]


def _memory_limit_mb(ctx: RenderContext) -> int:
    # Each answer may map memoryMb; the driver and its interpreter need a little more.
    return CONCURRENCY * ctx.spec.scoring.code_execution.memory_mb + 512


def build_sandbox_job(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    limits = ctx.spec.scoring.code_execution
    shards = limits.sandbox_pods
    phase = _phase(task)
    storage_sub = ctx.spec.storage.sub_path or ctx.name
    stage_in = {
        "name": "stage-in",
        "image": ctx.image,
        "command": [
            "kubefusion",
            *task.command,
            "--config",
            ctx.config_file,
            "--stage-in",
            INBOX,
            "--shard",
            f"$(JOB_COMPLETION_INDEX)/{shards}",
        ],
        "env": [INDEX_ENV],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "securityContext": restricted_container_context(read_only_root=True),
        "volumeMounts": [*pods.volume_mounts(ctx), {"name": "inbox", "mountPath": INBOX}],
    }
    sandbox_mounts: list[dict[str, Any]] = [
        {"name": "inbox", "mountPath": INBOX, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
    ]
    if ctx.spec.storage.pvc:
        sandbox_mounts.append(
            {
                "name": "storage",
                "mountPath": OUTBOX,
                "subPathExpr": f"{storage_sub}/sandbox/{phase}/verdicts-of-{shards}/$(JOB_COMPLETION_INDEX)",
            }
        )
    sandbox = {
        "name": "sandbox",
        "image": ctx.image,
        "command": [
            "kubefusion",
            "stage",
            "verify-code",
            "--inbox",
            INBOX,
            "--outbox",
            OUTBOX,
            "--concurrency",
            str(CONCURRENCY),
        ],
        "env": [
            INDEX_ENV,
            {"name": "KUBEFUSION_SANDBOX_SCRATCH", "value": SCRATCH},
            {"name": "TMPDIR", "value": SCRATCH},
            {"name": "HOME", "value": SCRATCH},
        ],
        "resources": {
            "requests": {"cpu": str(CONCURRENCY), "memory": "1Gi"},
            "limits": {"memory": f"{_memory_limit_mb(ctx)}Mi"},
        },
        "securityContext": restricted_container_context(read_only_root=True),
        "volumeMounts": sandbox_mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [stage_in],
        "containers": [sandbox],
        "volumes": [
            *pods.volumes(ctx),
            {"name": "inbox", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}},
        ],
    }
    if limits.runtime_class_name:
        pod_spec["runtimeClassName"] = limits.runtime_class_name
    labels = {**ctx.labels(task), **_pod_selector(ctx, task), SANDBOX_LABEL: "true"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": ctx.metadata(task_child_name(ctx.name, task), task, queue=True),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "suspend": suspended,
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,
            "template": {
                # No metrics port: the NetworkPolicy refuses the operator's scrape, so do not invite it.
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "false"}},
                "spec": pod_spec,
            },
        },
    }


def build_sandbox_children(
    ctx: RenderContext, task: Task, *, suspended: bool = False
) -> list[dict[str, Any]]:
    """The NetworkPolicy first, so that no sandbox pod ever runs without it."""
    return [build_network_policy(ctx, task), build_sandbox_job(ctx, task, suspended=suspended)]
