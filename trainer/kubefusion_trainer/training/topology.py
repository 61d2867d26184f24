"""How many processes train, where this one sits, and the accumulation that honours the global batch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubefusion_trainer.config import TrainingHyperparameters


@dataclass(frozen=True)
class Topology:
    world_size: int  # processes actually launched (torchrun sets WORLD_SIZE), not what the spec hoped for
    rank: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_topology(env: Mapping[str, str] | None = None) -> Topology:
    """Read WORLD_SIZE/RANK/LOCAL_RANK (set by torchrun, which reads the Kubeflow PET_* variables)."""
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    world_size = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} does not fit WORLD_SIZE={world_size}")
    return Topology(world_size=world_size, rank=rank, local_rank=number("LOCAL_RANK", 0))


def gradient_accumulation(hp: TrainingHyperparameters, world_size: int) -> int:
    """global batch = world size x micro batch x accumulation; a clear error when it does not divide."""
    return hp.gradient_accumulation_steps(world_size=world_size)
