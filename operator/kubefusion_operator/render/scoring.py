"""The score stage on a cluster: an Indexed Job of scoring.shards pods, each sized by scoring.cpus. Pure.

Each pod scores the prompts whose id is its completion index modulo the shard count (`--shard
$(JOB_COMPLETION_INDEX)/N`), and runs as many math/code workers as it requested CPUs: the request reaches the
command through the downward API (requests.cpu), so the worker count and the request never disagree.
"""

from __future__ import annotations

from typing import Any

from kubefusion_trainer.config import ScoringConfig

MEMORY_PER_CPU_GI = 4  # tokenizing, JSON and the math workers; the reward model itself lives on the GPU


def completion_index_env() -> dict[str, Any]:
    return {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {
            "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
        },
    }


def cpu_request_env() -> dict[str, Any]:
    return {
        "name": "CPU_REQUEST",
        "valueFrom": {
            "resourceFieldRef": {"containerName": "stage", "resource": "requests.cpu", "divisor": "1"}
        },
    }


def score_requests(scoring: ScoringConfig) -> dict[str, str]:
    return {"cpu": str(scoring.cpus), "memory": f"{max(8, MEMORY_PER_CPU_GI * scoring.cpus)}Gi"}


def score_sharding(ctx: Any, spec: dict[str, Any], env: list[dict[str, Any]]) -> list[str]:
    """Make a score Job Indexed (when sharded) and return the command's extra arguments; edits spec and env."""
    shards = ctx.spec.scoring.shards
    env.append(cpu_request_env())
    extra = ["--concurrency", "$(CPU_REQUEST)"]
    if shards > 1:
        spec.update(completionMode="Indexed", completions=shards, parallelism=shards)
        env.append(completion_index_env())
        extra += ["--shard", f"$(JOB_COMPLETION_INDEX)/{shards}"]
    return extra
