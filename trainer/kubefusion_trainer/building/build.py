"""Streaming build: scored answers -> trl rows, with memory bounded by a partition, not the dataset.

Pass 1 copies each scored line, unparsed, into one of P partition files chosen by a hash of its
prompt_id (so every answer of a prompt lands in the same partition). Pass 2 loads one partition at a
time, groups it by prompt, applies the rules (rules.py) and appends rows to the outputs. P is chosen so
a partition holds about `partition_bytes` of input.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubefusion_trainer.building.rules import Answer, pick_pair, pick_sft, pick_wrpo

PROMPT_ID = re.compile(rb'"prompt_id"\s*:\s*"([^"]*)"')
SOURCE_TAG, TARGET_TAG = b"S", b"T"


class BuildInputError(ValueError):
    pass


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


def partition(
    inputs: Iterable[tuple[bytes, Path]], scratch: Path, partition_bytes: int = 32 << 20
) -> list[Path]:
    """Hash-partition the lines of `inputs` ((tag, file) pairs) by prompt_id into files under scratch."""
    inputs = list(inputs)
    total = sum(path.stat().st_size for _, path in inputs)
    count = max(1, min(256, total // partition_bytes + 1))
    scratch.mkdir(parents=True, exist_ok=True)
    paths = [scratch / f"part-{i:04d}" for i in range(count)]
    with ExitStack() as stack:
        outs = [stack.enter_context(open(p, "wb", buffering=256 << 10)) for p in paths]
        for tag, path in inputs:
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    match = PROMPT_ID.search(line)
                    if match is None:
                        if line.strip():
                            raise BuildInputError(f"{path}:{number}: no prompt_id")
                        continue
                    out = outs[zlib.crc32(match[1]) % count]
                    out.write(tag)
                    out.write(line if line.endswith(b"\n") else line + b"\n")
    return paths


@dataclass
class PromptGroup:
    prompt_id: str
    messages: list
    sources: list[Answer] = field(default_factory=list)
    target: list[Answer] = field(default_factory=list)


def groups(partition_file: Path) -> Iterator[PromptGroup]:
    """The prompts of one partition, in prompt_id order, each with its answers."""
    by_prompt: dict[str, PromptGroup] = {}
    with open(partition_file, "rb") as handle:
        for line in handle:
            record = json.loads(line[1:])
            pid = record["prompt_id"]
            group = by_prompt.get(pid)
            if group is None:
                group = by_prompt[pid] = PromptGroup(pid, record["messages"])
            try:
                answer = Answer(
                    record["source"],
                    int(record.get("sample_index", 0)),
                    record["answer"],
                    float(record["reward"]),
                    record.get("correct"),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise BuildInputError(f"scored answer for prompt {pid} lacks a valid {exc}") from exc
            (group.target if line[:1] == TARGET_TAG else group.sources).append(answer)
    for pid in sorted(by_prompt):
        yield by_prompt.pop(pid)


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


def build_sources(
    plan: SourcesPlan,
    parts: list[Path],
    split_of: Callable[[str], str | None],
    sft_out: IO[str],
    dpo_out: IO[str] | None,
) -> DatasetStats:
    """SFT rows (sft split, or every prompt of an SFT-only dataset) and DPO pairs (pref split)."""
    stats = DatasetStats()
    for part in parts:
        for group in groups(part):
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
                _write(
                    sft_out,
                    {
                        "messages": [*group.messages, *_assistant(best.text)],
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
            _write(
                dpo_out,
                {
                    "prompt": group.messages,
                    "chosen": _assistant(pair.chosen.text),
                    "rejected": _assistant(pair.rejected.text),
                    "prompt_id": group.prompt_id,
                    "dataset": plan.dataset,
                    "source": pair.chosen.source,
                    "chosen_reward": pair.chosen.reward,
                    "rejected_reward": pair.rejected.reward,
                },
            )
    return stats


def build_wrpo(
    dataset: str, domain: str, parts: list[Path], split_of: Callable[[str], str | None], out: IO[str]
) -> DatasetStats:
    """WRPO quadruples for the pref-split prompts the target answered."""
    stats = DatasetStats()
    for part in parts:
        for group in groups(part):
            if split_of(group.prompt_id) != "pref" or not group.target:
                continue
            stats.prompts += 1
            stats.answers += len(group.sources) + len(group.target)
            quad, reason = pick_wrpo(domain, group.sources, group.target)
            if quad is None:
                stats.dropped_pref[reason] += 1
                continue
            stats.wrpo_rows += 1
            _write(
                out,
                {
                    "prompt": group.messages,
                    "chosen": [_assistant(quad.source_best.text), _assistant(quad.target_best.text)],
                    "rejected": _assistant(quad.target_worst.text),
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
