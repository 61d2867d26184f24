"""How many answers each sampling shard may have in flight, from what one server replica runs. Pure.

A vLLM replica decodes at most --max-num-seqs answers at once; more wait in its queue, where a request's
time passes without progress. Every shard of a source's sampling Job talks to the source's Service; the
shards share the replicas' budget evenly (no coordination between pods: each takes its share). A shard's
share is a little above budget / shards-per-replica: the extra keeps a few answers waiting in each replica's
queue, so a slot freed between two client round trips is refilled at the next decode step instead of idling.
"""

from __future__ import annotations

import math

from kubefusion_operator.api import ServingConfig

DEFAULT_MAX_NUM_SEQS = 256  # vLLM's --max-num-seqs default for the OpenAI server on most GPUs
QUEUE_HEADROOM = 0.25  # answers waiting per replica, as a share of what it runs


def max_num_seqs_arg(extra_args: list[str]) -> int | None:
    """The value of --max-num-seqs in vLLM arguments (either `--max-num-seqs N` or `--max-num-seqs=N`)."""
    for i, arg in enumerate(extra_args):
        value = None
        if arg == "--max-num-seqs" and i + 1 < len(extra_args):
            value = extra_args[i + 1]
        elif arg.startswith("--max-num-seqs="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def replica_max_in_flight(serving: ServingConfig) -> int:
    """Answers one replica runs at once: serving.maxInFlight, else --max-num-seqs in extraArgs, else 256."""
    if serving.max_in_flight is not None:
        return serving.max_in_flight
    return max_num_seqs_arg(serving.extra_args) or DEFAULT_MAX_NUM_SEQS


def shard_max_in_flight(serving: ServingConfig, shards: int) -> int:
    """One shard's share (the stage's --max-in-flight) when `shards` shards share the source's replicas."""
    total = replica_max_in_flight(serving) * serving.replicas * (1 + QUEUE_HEADROOM)
    return max(1, math.ceil(total / max(shards, 1)))
