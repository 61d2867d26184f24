"""Model servers: a vLLM Deployment and its Service, per source (and the SFT target for WRPO)."""

from __future__ import annotations

from typing import Any

from kubefusion_operator.api import ServingConfig, Source, Target
from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.admission import max_num_seqs_arg, replica_max_in_flight
from kubefusion_operator.render.configmap import SERVER_PORT
from kubefusion_operator.render.names import RenderContext, task_child_name
from kubefusion_trainer.layout import RunLayout

# 70B weights from a cold cache take tens of minutes to download and load: allow an hour.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 360
# A server that ran this long without answering has failed (the kubelet restarts it at that point); time
# spent Pending (no GPU, no quota) does not count (blockers.py).
STARTUP_BUDGET_SECONDS = STARTUP_PERIOD_SECONDS * STARTUP_FAILURE_THRESHOLD
# Requests per GPU when sources[].serving.resources sets none: vLLM's API server, tokenizer and
# scheduler processes need CPUs, and loading safetensors needs page cache. Without GPUs: one server.
CPU_PER_GPU, MEMORY_PER_GPU = 4, 32  # CPUs, GiB
CPU_ONLY_REQUESTS = {"cpu": "4", "memory": "16Gi"}


def _served(ctx: RenderContext, task: Task) -> Source | Target:
    """The spec entry a server task serves: its source, else the target (itself and its candidates)."""
    if task.name.startswith("serve-sources/"):
        return next(s for s in ctx.spec.sources if s.name == task.endpoint)
    return ctx.spec.target


def _serving(ctx: RenderContext, task: Task) -> tuple[ServingConfig, int | None]:
    """The serving settings and seed of a server task (the target: spec.target.serving)."""
    served = _served(ctx, task)
    return served.serving, served.sampling.seed


def server_model(ctx: RenderContext, task: Task) -> str:
    """A hub id, or for trained models (train/<stage>/final) their path on the run's volume."""
    assert task.model is not None
    if task.model.startswith("train/"):
        return str(RunLayout(ctx.storage_root).root / task.model)
    return task.model


def vllm_args(ctx: RenderContext, task: Task) -> list[str]:
    serving, seed = _serving(ctx, task)
    args = [
        "--model",
        server_model(ctx, task),
        "--served-model-name",
        task.served_name or server_model(ctx, task),
        "--tensor-parallel-size",
        str(max(serving.gpus, 1)),
        "--port",
        str(SERVER_PORT),
        "--enable-prefix-caching",
        "--seed",
        str(seed or 0),
    ]
    if serving.max_model_len:
        args += ["--max-model-len", str(serving.max_model_len)]
    if max_num_seqs_arg(serving.extra_args) is None:  # the batch the samplers' admission is sized for
        args += ["--max-num-seqs", str(replica_max_in_flight(serving))]
    return args + list(serving.extra_args)


def _resources(serving: ServingConfig) -> dict[str, Any]:
    if serving.gpus:
        requests = {"cpu": str(CPU_PER_GPU * serving.gpus), "memory": f"{MEMORY_PER_GPU * serving.gpus}Gi"}
    else:
        requests = dict(CPU_ONLY_REQUESTS)
    out: dict[str, Any] = {"requests": requests}
    if serving.resources is not None:
        given = serving.resources.model_dump(exclude_none=True, mode="json")
        out = {
            "requests": {**requests, **given.get("requests", {})},
            **({"limits": given["limits"]} if "limits" in given else {}),
        }
    if serving.gpus:
        out.setdefault("limits", {})["nvidia.com/gpu"] = serving.gpus
    return out


def _probe(failure_threshold: int, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": SERVER_PORT},
        "periodSeconds": period,
        "failureThreshold": failure_threshold,
        "timeoutSeconds": 5,
    }


def build_deployment(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    serving, _ = _serving(ctx, task)
    name = task_child_name(ctx.name, task)
    env = pods.secret_env(ctx)
    billions = _served(ctx, task).parameters_billions
    vols = pods.volumes(ctx, shm=True, model=server_model(ctx, task), parameters_billions=billions)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": serving.image,
        "args": vllm_args(ctx, task),
        "env": env,
        "envFrom": pods.env_from(ctx),
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "resources": _resources(serving),
        "startupProbe": _probe(STARTUP_FAILURE_THRESHOLD, STARTUP_PERIOD_SECONDS),
        "readinessProbe": _probe(3, 10),
        "livenessProbe": _probe(6, 30),
        "volumeMounts": pods.volume_mounts(ctx, shm=True),
    }
    pod_spec = pods.pod_spec(
        ctx,
        task,
        [container],
        vols,
        node_selector=serving.node_selector,
        tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in serving.tolerations],
        terminationGracePeriodSeconds=30,
    )
    selector = {
        "app.kubernetes.io/instance": ctx.name,
        "kubefusion.dev/task": ctx.labels(task)["kubefusion.dev/task"],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": pods.workload_metadata(ctx, name, task, component="server"),
        "spec": {
            "replicas": 0 if suspended else serving.replicas,
            "selector": {"matchLabels": selector},
            # Weights are huge and GPUs scarce: replace pods rather than surge extra ones.
            "strategy": {"type": "Recreate"},
            # Past the startup budget a server counts as failed (observe.py): give it the whole budget.
            "progressDeadlineSeconds": STARTUP_PERIOD_SECONDS * STARTUP_FAILURE_THRESHOLD + 600,
            "template": {"metadata": pods.template_metadata(ctx, task, "server"), "spec": pod_spec},
        },
    }


def build_service(ctx: RenderContext, task: Task) -> dict[str, Any]:
    name = task_child_name(ctx.name, task)
    selector = {
        "app.kubernetes.io/instance": ctx.name,
        "kubefusion.dev/task": ctx.labels(task)["kubefusion.dev/task"],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(name, task, component="server"),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
