"""The run's RunConfig as a ConfigMap: what every stage pod reads with --config."""

from __future__ import annotations

from typing import Any

import yaml

from kubefusion_operator.planner import TaskKind, plan_tasks
from kubefusion_operator.render.names import RenderContext, config_map_name, task_child_name

SERVER_PORT = 8000  # vLLM's OpenAI server port


def service_url(ctx: RenderContext, service: str) -> str:
    return f"http://{service}.{ctx.namespace}.{ctx.cluster_domain}:{SERVER_PORT}/v1"


def endpoints(ctx: RenderContext) -> dict[str, str]:
    """OpenAI base URL per served model (source name, or "target"): the servers' Services."""
    return {
        task.endpoint: service_url(ctx, task_child_name(ctx.name, task))
        for task in plan_tasks(ctx.spec)
        if task.kind == TaskKind.SERVER and task.endpoint
    }


def run_config_yaml(ctx: RenderContext) -> str:
    config = ctx.spec.to_run_config(ctx.name, ctx.storage_root, endpoints(ctx))
    return yaml.safe_dump(config.model_dump(by_alias=True, exclude_none=True, mode="json"), sort_keys=False)


def build_config_map(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(config_map_name(ctx.name)),
        "data": {"run.yaml": run_config_yaml(ctx)},
    }
