"""Build the training sets of one dataset from its score shards, streaming (see index.py for the grouping)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubefusion_trainer.building.index import RecordReader, groups
from kubefusion_trainer.building.rules import pick_pair, pick_sft, pick_wrpo


@dataclass
class DatasetStats:
    prompts: int = 0
    sft_rows: int = 0
    dpo_pairs: int = 0
    wrpo_rows: int = 0
    answers: int = 0
    held_out: int = 0
    dropped_sft: Counter = field(default_factory=Counter)
    dropped_pref: Counter = field(default_factory=Counter)

    def merge(self, other: DatasetStats) -> None:
        for name in ("prompts", "sft_rows", "dpo_pairs", "wrpo_rows", "answers", "held_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped_sft.update(other.dropped_sft)
        self.dropped_pref.update(other.dropped_pref)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "answers": self.answers,
            "held_out": self.held_out,
            "sft_rows": self.sft_rows,
            "dpo_pairs": self.dpo_pairs,
            "wrpo_rows": self.wrpo_rows,
            "dropped_sft": dict(sorted(self.dropped_sft.items())),
            "dropped_pref": dict(sorted(self.dropped_pref.items())),
        }


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _write(handle: IO[str], row: dict[str, Any]) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class SourcesPlan:
    """What the sources phase needs to know about one dataset."""

    dataset: str
    domain: str
    sft_only: bool
    sft_sources: set[str] | None
    margin: tuple[float, float]


Partition = list[Path]  # one partition: every pass-1 worker's file for it
Task = Callable[[Partition, dict[str, IO[str]]], DatasetStats]
_JOB: dict[str, Any] = {}  # the running job, inherited by forked pass-2 workers


def run_partitions(
    task: Task, parts: list[Partition], outputs: dict[str, IO[str]], scratch: Path, workers: int = 1
) -> DatasetStats:
    """Pass 2: `task` over every partition, its rows appended to `outputs` in partition order.

    With workers > 1, partitions run in forked processes that write chunk files under scratch; the
    chunks are then appended in order, so the output is the same as a sequential run's.
    """
    total = DatasetStats()
    if workers <= 1 or len(parts) <= 1:
        for part in parts:
            total.merge(task(part, outputs))
        return total
    _JOB.update(task=task, parts=parts, scratch=scratch, names=list(outputs))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_run_partition, range(len(parts))))
    finally:
        _JOB.clear()
    for index, stats in enumerate(results):
        total.merge(stats)
        for name, handle in outputs.items():
            chunk = _chunk_path(scratch, index, name)
            with open(chunk, encoding="utf-8") as source:
                shutil.copyfileobj(source, handle, 1 << 20)
            chunk.unlink()
    return total


def _chunk_path(scratch: Path, index: int, name: str) -> Path:
    return scratch / f"out-{index:04d}-{name}"


def _run_partition(index: int) -> DatasetStats:
    with ExitStack() as stack:
        outs = {
            name: stack.enter_context(open(_chunk_path(_JOB["scratch"], index, name), "w", encoding="utf-8"))
            for name in _JOB["names"]
        }
        return _JOB["task"](_JOB["parts"][index], outs)


def sources_task(plan: SourcesPlan, inputs: list[Path], split_of: Callable[[str], str | None]) -> Task:
    """SFT rows (sft split, or every prompt of an SFT-only dataset) and DPO pairs (pref split) of a
    partition; outputs "sft" and (unless SFT-only) "dpo"."""

    def task(part: Partition, outs: dict[str, IO[str]]) -> DatasetStats:
        with RecordReader(inputs) as reader:
            return _sources_partition(plan, part, reader, split_of, outs["sft"], outs.get("dpo"))

    return task


def _sources_partition(
    plan: SourcesPlan,
    part: Partition,
    reader: RecordReader,
    split_of: Callable[[str], str | None],
    sft_out: IO[str],
    dpo_out: IO[str] | None,
) -> DatasetStats:
    stats = DatasetStats()
    for group in groups(part, reader.inputs):
        stats.prompts += 1
        stats.answers += len(group.sources)
        split = split_of(group.prompt_id)
        if split is None:
            stats.dropped_sft["not in prepared prompts"] += 1
            continue
        if split == "eval":
            stats.held_out += 1
            continue
        if plan.sft_only or split == "sft":
            best, reason = pick_sft(plan.domain, group.sources, plan.sft_sources)
            if best is None:
                stats.dropped_sft[reason] += 1
                continue
            stats.sft_rows += 1
            text, messages = reader.load(best)
            _write(
                sft_out,
                {
                    "messages": [*messages, *_assistant(text)],
                    "prompt_id": group.prompt_id,
                    "dataset": plan.dataset,
                    "source": best.source,
                    "reward": best.reward,
                },
            )
            continue
        pair, reason = pick_pair(plan.domain, group.sources, plan.margin)
        if pair is None:
            stats.dropped_pref[reason] += 1
            continue
        stats.dpo_pairs += 1
        assert dpo_out is not None
        chosen, messages = reader.load(pair.chosen)
        rejected, _ = reader.load(pair.rejected)
        _write(
            dpo_out,
            {
                "prompt": messages,
                "chosen": _assistant(chosen),
                "rejected": _assistant(rejected),
                "prompt_id": group.prompt_id,
                "dataset": plan.dataset,
                "source": pair.chosen.source,
                "chosen_reward": pair.chosen.reward,
                "rejected_reward": pair.rejected.reward,
            },
        )
    return stats


def wrpo_task(dataset: str, domain: str, inputs: list[Path], split_of: Callable[[str], str | None]) -> Task:
    """WRPO quadruples for the pref-split prompts the target answered; output "wrpo"."""

    def task(part: Partition, outs: dict[str, IO[str]]) -> DatasetStats:
        with RecordReader(inputs) as reader:
            return _wrpo_partition(dataset, domain, part, reader, split_of, outs["wrpo"])

    return task


def _wrpo_partition(
    dataset: str,
    domain: str,
    part: Partition,
    reader: RecordReader,
    split_of: Callable[[str], str | None],
    out: IO[str],
) -> DatasetStats:
    stats = DatasetStats()
    for group in groups(part, reader.inputs):
        if split_of(group.prompt_id) != "pref" or not group.target:
            continue
        stats.prompts += 1
        stats.answers += len(group.sources) + len(group.target)
        quad, reason = pick_wrpo(domain, group.sources, group.target)
        if quad is None:
            stats.dropped_pref[reason] += 1
            continue
        stats.wrpo_rows += 1
        source_best, messages = reader.load(quad.source_best)
        target_best, _ = reader.load(quad.target_best)
        target_worst, _ = reader.load(quad.target_worst)
        _write(
            out,
            {
                "prompt": messages,
                "chosen": [_assistant(source_best), _assistant(target_best)],
                "rejected": _assistant(target_worst),
                "prompt_id": group.prompt_id,
                "dataset": dataset,
                "source": quad.source_best.source,
                "source_reward": quad.source_best.reward,
                "chosen_reward": quad.target_best.reward,
                "rejected_reward": quad.target_worst.reward,
            },
        )
    return stats


def remove_scratch(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
