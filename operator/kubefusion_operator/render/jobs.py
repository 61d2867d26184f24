"""Stage Jobs: prepare, sample (Indexed, one per source), score, build, evaluate."""

from __future__ import annotations

from typing import Any

from kubefusion_operator.api import ServingConfig
from kubefusion_operator.planner import Task
from kubefusion_operator.render import pods
from kubefusion_operator.render.admission import shard_max_in_flight
from kubefusion_operator.render.names import METRICS_PORT, RenderContext, task_child_name
from kubefusion_operator.render.scoring import completion_index_env, score_requests, score_sharding

BACKOFF_LIMIT = 3  # pod failures a stage Job tolerates before the run is marked Failed
# Pods evicted by a node drain, preemption or a taint do not count against BACKOFF_LIMIT: the Job makes
# a new pod (and the stage resumes from its completion records).
POD_FAILURE_POLICY = {
    "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
}
SHARDS_PER_REPLICA = 4  # sampling shards per vLLM replica: enough requests in flight to keep it busy
MAX_SHARDS = 64
CPU_REQUESTS = {"cpu": "2", "memory": "8Gi"}


def _sampled_serving(ctx: RenderContext, task: Task) -> ServingConfig:
    """The serving settings of the server a sampling task calls (a source's, or the target's)."""
    if task.name.startswith("sample/"):
        return next(s for s in ctx.spec.sources if s.name == task.name.split("/", 1)[1]).serving
    return ctx.spec.target.serving


def sampling_shards(ctx: RenderContext, task: Task) -> int:
    """Shards (= Indexed Job completions, all run in parallel) for a sampling task."""
    return min(MAX_SHARDS, SHARDS_PER_REPLICA * _sampled_serving(ctx, task).replicas)


def stage_command(ctx: RenderContext, task: Task, *extra: str) -> list[str]:
    return [
        "kubefusion",
        *task.command,
        "--config",
        ctx.config_file,
        *extra,
        "--metrics-port",
        str(METRICS_PORT),
    ]


def _uses_hub(ctx: RenderContext, task: Task) -> bool:
    if task.stage == "prepare":
        return any(d.location.startswith("hf://") for d in ctx.spec.datasets)
    return task.stage not in ("build", "build-wrpo")  # tokenizers, reward models


def _cached_model(ctx: RenderContext, task: Task) -> tuple[str | None, float | None]:
    """The largest model the task loads and its parametersBillions (they size the model cache)."""
    if task.stage.startswith("score"):
        reward = ctx.spec.scoring.reward_model
        return reward.model, reward.parameters_billions
    if task.stage == "evaluate":
        return ctx.spec.target.model, ctx.spec.target.parameters_billions
    return None, None


def _resources(ctx: RenderContext, task: Task) -> dict[str, Any]:
    gpus = ctx.spec.scoring.reward_model.gpus if task.uses_gpu else 0
    requests = dict(CPU_REQUESTS)
    if task.stage in ("score", "score-target"):
        requests = score_requests(ctx.spec.scoring)
    if gpus:
        return {"requests": requests, "limits": {"nvidia.com/gpu": gpus}}
    return {"requests": requests}


def build_job(ctx: RenderContext, task: Task, *, suspended: bool = False) -> dict[str, Any]:
    """A batch/v1 Job for a planner task of kind job."""
    extra: list[str] = []
    env = pods.secret_env(ctx, hf_token=_uses_hub(ctx, task))
    spec: dict[str, Any] = {
        "backoffLimit": BACKOFF_LIMIT,
        "podFailurePolicy": POD_FAILURE_POLICY,
        "suspend": suspended,
    }
    deadline = ctx.spec.stage_deadline_seconds.get(task.stage)
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    if task.stage in ("sample", "sample-target"):
        shards = sampling_shards(ctx, task)
        spec.update(completionMode="Indexed", completions=shards, parallelism=shards)
        env.append(completion_index_env())
        in_flight = shard_max_in_flight(_sampled_serving(ctx, task), shards)
        extra = ["--shard", f"$(JOB_COMPLETION_INDEX)/{shards}", "--max-in-flight", str(in_flight)]
    if task.stage in ("score", "score-target"):
        extra = ["--device", "cuda" if task.uses_gpu else "cpu", *score_sharding(ctx, spec, env)]
    if task.stage == "evaluate":
        # The candidates answer through their servers; the GPU is the reward model's.
        extra = ["--device", "cuda" if task.uses_gpu else "cpu"]
    if spec.get("completionMode") == "Indexed":
        # Each shard gets its own retries: one unlucky shard cannot use up the others'.
        spec.update(backoffLimitPerIndex=BACKOFF_LIMIT, backoffLimit=BACKOFF_LIMIT * spec["completions"])
    model, billions = _cached_model(ctx, task)
    vols = pods.volumes(ctx, shm=task.uses_gpu, model=model, parameters_billions=billions)
    container: dict[str, Any] = {
        "name": "stage",
        "image": ctx.image,
        "command": stage_command(ctx, task, *extra),
        "env": env,
        "envFrom": pods.env_from(ctx),
        "ports": [pods.metrics_port()],
        "resources": _resources(ctx, task),
        "volumeMounts": pods.volume_mounts(ctx, shm=task.uses_gpu),
    }
    name = task_child_name(ctx.name, task)
    spec["template"] = {
        "metadata": pods.template_metadata(ctx, task),
        "spec": pods.pod_spec(ctx, task, [container], vols, restartPolicy="Never"),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": pods.workload_metadata(ctx, name, task),
        "spec": spec,
    }
