"""Test inputs for the score and build stages: a run config, prepared prompts, sample and score shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.records import prompt_id


def write_run_config(
    root: Path,
    datasets: list[dict[str, Any]],
    reward_model: str = "unused",
    sources: tuple[str, ...] = ("x", "y"),
    **scoring: Any,
) -> Path:
    config = {
        "name": "test-run",
        "storageRoot": str(root / "storage"),
        "spec": {
            "recipe": "fusechat3",
            "target": {"model": "target-model"},
            "sources": [{"name": s, "model": f"org/{s}"} for s in sources],
            "datasets": datasets,
            "scoring": {"rewardModel": {"model": reward_model, **scoring.pop("reward", {})}, **scoring},
        },
    }
    path = root / "run.json"
    path.write_text(json.dumps(config))
    return path


def prompt(
    dataset: str, domain: str, text: str, split: str, gold: str | None = None, tests: Any = None
) -> dict:
    messages = [{"role": "user", "content": text}]
    return {
        "prompt_id": prompt_id(messages),
        "dataset": dataset,
        "domain": domain,
        "messages": messages,
        "gold_answer": gold,
        "tests": tests,
        "split": split,
        "row_index": 0,
    }


def write_prompts(layout: RunLayout, dataset: str, prompts: list[dict]) -> None:
    path = layout.prompts_file(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))


def answer_record(p: dict, source: str, index: int, answer: str, **scores: Any) -> dict:
    return {
        "prompt_id": p["prompt_id"],
        "dataset": p["dataset"],
        "domain": p["domain"],
        "source": source,
        "sample_index": index,
        "messages": p["messages"],
        "answer": answer,
        "finish_reason": "stop",
        **scores,
    }


def write_shards(folder: Path, records: list[dict], count: int) -> None:
    """Spread records over `count` shards, round robin (answers of one prompt land in different shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        chunk = records[index::count]
        (folder / f"shard-{index:05d}-of-{count:05d}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in chunk)
        )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
