"""Which children a planner task becomes on Kubernetes."""

from __future__ import annotations

from typing import Any

from kubefusion_operator.planner import Task, TaskKind
from kubefusion_operator.render.jobs import build_job
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.pytorchjob import build_pytorchjob
from kubefusion_operator.render.sandbox import build_sandbox_children
from kubefusion_operator.render.serving import build_deployment, build_service
from kubefusion_operator.render.trainjob import build_trainjob

TRAINING_BUILDERS = {"trainjob": build_trainjob, "pytorchjob": build_pytorchjob}  # by ctx.training_backend


def build_task_children(ctx: RenderContext, task: Task, *, suspended: bool = False) -> list[dict[str, Any]]:
    """The objects to create for a task, in creation order (a server's Service before its Deployment)."""
    if task.kind == TaskKind.SERVER:
        return [build_service(ctx, task), build_deployment(ctx, task, suspended=suspended)]
    if task.kind == TaskKind.TRAIN:
        return [TRAINING_BUILDERS[ctx.training_backend](ctx, task, suspended=suspended)]
    if task.sandboxed:
        return build_sandbox_children(ctx, task, suspended=suspended)
    return [build_job(ctx, task, suspended=suspended)]
