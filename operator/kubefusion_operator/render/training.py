"""What every training backend runs: one torchrun command and one pod, whatever operator launches it.

Both Kubeflow contracts set the PET_* variables torchrun reads as its defaults (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT): the training operator v1 sets
them beside MASTER_ADDR/WORLD_SIZE/RANK, Trainer v2 sets only them. So the command passes no
topology or address flags at all; outside an operator torchrun's defaults (one node, localhost) apply.
"""

from __future__ import annotations

from typing import Any

from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.names import METRICS_PORT, RenderContext

TRAINER_REQUESTS = {"cpu": "8", "memory": "64Gi"}


def torchrun_command(ctx: RenderContext, task: Task) -> list[str]:
    return [
        "torchrun",
        "-m",
        "kubefusion_operator",
        "stage",
        "train",
        "--stage",
        task.name,
        "--config",
        ctx.config_file,
        "--metrics-port",
        str(METRICS_PORT),
    ]


def procs_per_node(ctx: RenderContext, task: Task) -> int:
    return max(ctx.spec.training_stages()[task.name].resources.gpus_per_node, 1)


def trainer_resources(ctx: RenderContext, task: Task) -> dict[str, Any]:
    gpus = ctx.spec.training_stages()[task.name].resources.gpus_per_node
    resources: dict[str, Any] = {"requests": dict(TRAINER_REQUESTS)}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    return resources


def trainer_image(ctx: RenderContext, task: Task) -> str:
    return ctx.spec.training_stages()[task.name].resources.image or ctx.image


def trainer_container(ctx: RenderContext, task: Task, name: str, *, shm: bool = True) -> dict[str, Any]:
    """The training container (every node runs the same one)."""
    return {
        "name": name,
        "image": trainer_image(ctx, task),
        "command": torchrun_command(ctx, task),
        "env": [*pods.secret_env(ctx), {"name": "NCCL_DEBUG", "value": "WARN"}],
        "envFrom": pods.env_from(ctx),
        "ports": [pods.metrics_port()],
        "resources": trainer_resources(ctx, task),
        "volumeMounts": pods.volume_mounts(ctx, shm=shm),
    }


def trainer_pod(ctx: RenderContext, task: Task, container_name: str, *, shm: bool = True) -> dict[str, Any]:
    """The pod template of a training node: labels to find it by, storage, config, caches, /dev/shm
    (unless something else provides it: a TrainJob's runtime does), the restricted security context
    and spec.scheduling (render/pods.py)."""
    target = ctx.spec.target
    vols = pods.volumes(ctx, shm=shm, model=target.model, parameters_billions=target.parameters_billions)
    return {
        "metadata": pods.template_metadata(ctx, task),
        "spec": pods.pod_spec(ctx, task, [trainer_container(ctx, task, container_name, shm=shm)], vols),
    }
