"""Training stages as Kubeflow PyTorchJobs (kubeflow.org/v1): a Master plus nodes-1 Workers."""

from __future__ import annotations

from typing import Any

from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import METRICS_PORT, RenderContext, task_child_name

BACKOFF_LIMIT = 3  # restarts of the whole job; the trainer resumes from its latest checkpoint each time

# The training operator sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, MASTER_ADDR and MASTER_PORT.
TORCHRUN = (
    "exec torchrun --nnodes=${{PET_NNODES:-1}} --nproc-per-node=${{PET_NPROC_PER_NODE:-{nproc}}} "
    "--node-rank=${{PET_NODE_RANK:-0}} --master-addr=${{MASTER_ADDR:-localhost}} "
    "--master-port=${{MASTER_PORT:-29500}} -m kubefusion_operator stage train --stage {stage} "
    "--config {config} --metrics-port {port}"
)


def torchrun_command(ctx: RenderContext, task: Task, nproc: int) -> list[str]:
    return [
        "/bin/sh",
        "-c",
        TORCHRUN.format(nproc=nproc, stage=task.name, config=ctx.config_file, port=METRICS_PORT),
    ]


def _run_policy(ctx: RenderContext, task: Task, suspended: bool) -> dict[str, Any]:
    policy: dict[str, Any] = {"backoffLimit": BACKOFF_LIMIT, "cleanPodPolicy": "None", "suspend": suspended}
    deadline = ctx.spec.stage_deadline_seconds.get(task.stage)
    if deadline:
        policy["activeDeadlineSeconds"] = deadline
    return policy


def build_pytorchjob(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    hyper = ctx.spec.training_stages()[task.name]
    res = hyper.resources
    gpus = res.gpus_per_node
    resources: dict[str, Any] = {"requests": {"cpu": "8", "memory": "64Gi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    vols = pods.volumes(ctx, shm=True, model=ctx.spec.target.model)
    container = {
        "name": "pytorch",  # the training operator looks for this container name
        "image": res.image or ctx.image,
        "command": torchrun_command(ctx, task, max(gpus, 1)),
        "env": [*pods.secret_env(ctx), {"name": "NCCL_DEBUG", "value": "WARN"}],
        "envFrom": pods.env_from(ctx),
        "ports": [
            pods.metrics_port(),
            {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"},
        ],
        "resources": resources,
        "volumeMounts": pods.volume_mounts(ctx, shm=True),
    }

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": pods.template_metadata(ctx, task),
                "spec": pods.pod_spec(ctx, task, [container], vols),
            },
        }

    replicas = {"Master": replica(1)}
    if res.nodes > 1:
        replicas["Worker"] = replica(res.nodes - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": pods.workload_metadata(ctx, task_child_name(ctx.name, task), task),
        "spec": {
            "nprocPerNode": str(max(gpus, 1)),
            "runPolicy": _run_policy(ctx, task, suspended),
            "pytorchReplicaSpecs": replicas,
        },
    }
