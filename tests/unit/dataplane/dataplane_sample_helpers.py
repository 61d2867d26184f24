"""Shared bits of the sampler tests: the simulated server, prompts and jobs."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from sim_openai_server import SimServer, serve_in_thread

from kubefusion_trainer.config import SamplingParams
from kubefusion_trainer.records import prompt_id
from kubefusion_trainer.sampling.runner import SampleJob
from kubefusion_trainer.shards import ShardWriter

__all__ = ["SimServer", "make_job", "make_prompts", "serve_in_thread"]


def make_prompts(count: int, dataset: str = "d") -> list[dict]:
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": f"question {i}"}]
        prompts.append(
            {
                "prompt_id": prompt_id(messages),
                "dataset": dataset,
                "domain": "math",
                "messages": messages,
                "split": "pref",
            }
        )
    return prompts


def make_job(
    folder: Path, prompts: list[dict], n: int, seed: int | None = 7, source: str = "a", max_tokens: int = 16
) -> SampleJob:
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=max_tokens, seed=seed)
    return SampleJob(source, f"org/{source}", "d", params, n, prompts, ShardWriter(folder, 0, 1))
