"""Scoring one shard of the prompts (`--shard I/N`, the pods of an Indexed Job), exactly once.

Shard I of N owns the prompts whose id, read as a hex number, is I modulo N (the rule sampling uses), across
every (model, dataset) folder: the pods split the answers evenly whatever the sample shards look like. For
each folder it writes scores/<phase>/<model>/<dataset>/shard-I-of-N.jsonl through a ShardWriter: answers
are scored in chunks of whole prompts (all answers of a prompt in one chunk), each chunk committed
atomically, and the shard file assembled at the end (shards.py: exactly once). A pod killed mid-way loses at
most the chunk in flight; its rerun skips every committed prompt. Readers (build) only read complete shard
files, so N pods' outputs are merged by reading the folder, each score once.

Reading: every pod reads every sample shard of its phase but parses only its own lines (the prompt id is
found with a regular expression first), so N pods cost little more to read than one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kubefusion_trainer.records import SampleRecord, ScoredRecord
from kubefusion_trainer.shards import ShardWriter, complete_shards, in_prompt_shard, missing_shards

PROMPT_ID = re.compile(r'"prompt_id":\s*"([^"\\]+)"')
REQUIRED = (("prompt_id", str), ("answer", str), ("messages", list), ("source", str))


class SampleFormatError(ValueError):
    """A sample line that is not a usable SampleRecord, named by file and line."""


def read_own_samples(paths: Sequence[Path], shard: tuple[int, int], skip: set[str]) -> list[SampleRecord]:
    """The records of `paths` whose prompt is in this shard and not in `skip`, in file order."""
    index, count = shard
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                found = PROMPT_ID.search(line)
                pid = found.group(1) if found else None
                if pid and _is_hex(pid) and (not in_prompt_shard(pid, index, count) or pid in skip):
                    continue  # not ours: no need to parse it
                record = _parse(path, number, line)
                pid = record["prompt_id"]
                if in_prompt_shard(pid, index, count) and pid not in skip:
                    records.append(record)
    return records


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _parse(path: Path, number: int, line: str) -> SampleRecord:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SampleFormatError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise SampleFormatError(f"{path}:{number}: expected a JSON object")
    for key, kind in REQUIRED:
        if not isinstance(record.get(key), kind):
            raise SampleFormatError(f"{path}:{number}: field {key!r} must be a {kind.__name__}")
    if not _is_hex(record["prompt_id"]):
        raise SampleFormatError(f"{path}:{number}: prompt_id {record['prompt_id']!r} is not a hex id")
    return record  # type: ignore[return-value]


def prompt_chunks(records: Sequence[SampleRecord], answers: int) -> Iterator[list[SampleRecord]]:
    """Chunks of about `answers` answers, each holding every answer of its prompts."""
    by_prompt: dict[str, list[SampleRecord]] = {}
    for record in records:
        by_prompt.setdefault(record["prompt_id"], []).append(record)
    chunk: list[SampleRecord] = []
    for group in by_prompt.values():
        chunk.extend(group)
        if len(chunk) >= answers:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_folder(
    samples: Sequence[Path],
    out: Path,
    shard: tuple[int, int],
    score: Callable[[list[SampleRecord]], list[ScoredRecord]],
    counts: Any,
    chunk_answers: int = 1024,
) -> None:
    """Score this shard's answers of one (model, dataset) into `out`, resuming from committed chunks."""
    writer = ShardWriter(out, *shard)
    if writer.is_complete() and not writer.pending_chunks():
        counts["shards_skipped"] += 1
        return
    done = writer.done_prompt_ids()
    records = read_own_samples(samples, shard, done)
    if not records and not writer.pending_chunks() and complete_shards(out) and not missing_shards(out):
        counts["shards_skipped"] += 1  # scored already, by pods of another shard count
        return
    for chunk in prompt_chunks(records, chunk_answers):
        writer.commit_chunk(score(chunk))  # type: ignore[arg-type]
        counts["answers"] += len(chunk)
        counts["chunks"] += 1
    writer.finalize()
    counts["shards_scored"] += 1
