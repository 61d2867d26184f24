"""Turn raw dataset rows into PromptRecords (pure: no files, no network).

Per row, in order:
  1. map fields: the prompt column is a string (one user turn; the optional system column is prepended) or a
     list of chat messages ({role, content}, or ShareGPT {from, value}); trailing assistant turns are cut
     (they are an answer, not part of the prompt). A row that cannot be mapped is BROKEN: reported with its
     index and reason, never silently dropped.
  2. filters (DatasetFilter, in order): `exclude` drops rows whose field matches, `include` keeps only rows
     whose field matches (re.search on the field as text; lists/dicts as JSON). A missing field is BROKEN.
  3. empty prompts (no non-blank user content) are dropped and counted, so are duplicates (same prompt_id).
  4. the row limit keeps the first rowLimit prompts that survive.
Each surviving prompt gets prompt_id (records.prompt_id) and split = assign_split(id, sft_fraction,
held_out_fraction, seed), sft_fraction being 1.0 for SFT-only datasets (chinese domain or sftFraction 1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubefusion_trainer.config import DatasetConfig
from kubefusion_trainer.dataprep.loading import Row, RowError
from kubefusion_trainer.records import Message, PromptRecord, SampleRecord, assign_split, prompt_id

ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
PROMPT_ROLES = ("system", "user", "assistant")
MAX_LISTED_ROWS = 1000  # the report lists at most this many row indices per kind; counts are always exact


class MappingError(ValueError):
    pass


@dataclass
class PrepareReport:
    """What happened to every row of one dataset (written to prepared/<dataset>.report.json)."""

    dataset: str
    rows_read: int = 0
    written: int = 0
    broken: list[dict[str, Any]] = field(default_factory=list)  # {"row": i, "reason": ...}
    broken_count: int = 0
    filtered: int = 0
    empty: list[int] = field(default_factory=list)
    empty_count: int = 0
    duplicate: list[int] = field(default_factory=list)
    duplicate_count: int = 0
    over_limit: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    existing_answers: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> written / missing

    def add_broken(self, row: int, reason: str) -> None:
        self.broken_count += 1
        if len(self.broken) < MAX_LISTED_ROWS:
            self.broken.append({"row": row, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class PreparedDataset:
    prompts: list[PromptRecord]
    existing: dict[str, list[SampleRecord]]  # existingAnswers source -> its answers
    report: PrepareReport


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _message(raw: Any, position: int) -> Message:
    if not isinstance(raw, dict):
        raise MappingError(f"message {position} is not an object")
    role = raw.get("role", raw.get("from"))
    content = raw.get("content", raw.get("value"))
    if not isinstance(role, str):
        raise MappingError(f"message {position} has no role")
    role = ROLE_ALIASES.get(role, role)
    if role not in PROMPT_ROLES:
        raise MappingError(f"message {position} has unknown role {role!r}")
    if not isinstance(content, str):
        raise MappingError(f"message {position} content is not text")
    return {"role": role, "content": content}


def map_prompt(row: dict[str, Any], dataset: DatasetConfig) -> list[Message]:
    """The prompt messages of a row, or MappingError naming the column and the problem."""
    fields = dataset.fields
    if fields.prompt not in row:
        raise MappingError(f"column {fields.prompt!r} (fields.prompt) is missing")
    value = row[fields.prompt]
    if isinstance(value, str):
        messages: list[Message] = [{"role": "user", "content": value}]
    elif isinstance(value, list):
        messages = [_message(m, i) for i, m in enumerate(value)]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
    else:
        raise MappingError(
            f"column {fields.prompt!r} must be text or a list of messages, not {type(value).__name__}"
        )
    if fields.system:
        if fields.system not in row:
            raise MappingError(f"column {fields.system!r} (fields.system) is missing")
        system = row[fields.system]
        if system is not None and not isinstance(system, str):
            raise MappingError(f"column {fields.system!r} must be text")
        if system and system.strip() and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
    return messages


def passes_filters(row: dict[str, Any], dataset: DatasetConfig) -> bool:
    for spec in dataset.filters:
        if spec.field not in row:
            raise MappingError(f"column {spec.field!r} (filters) is missing")
        matched = re.search(spec.pattern, _as_text(row[spec.field])) is not None
        if matched != (spec.action == "include"):
            return False
    return True


def is_empty(messages: list[Message]) -> bool:
    return not any(m["role"] == "user" and m["content"].strip() for m in messages)


def normalize(
    rows: Iterable[tuple[int, Row]],
    dataset: DatasetConfig,
    held_out_fraction: float = 0.0,
    seed: int = 0,
) -> PreparedDataset:
    """Map, filter, de-duplicate and split a dataset's rows (see the module docstring)."""
    report = PrepareReport(dataset=dataset.name)
    sft_fraction = 1.0 if dataset.sft_only else dataset.sft_fraction
    prompts: list[PromptRecord] = []
    existing: dict[str, list[SampleRecord]] = {e.source: [] for e in dataset.existing_answers}
    seen: set[str] = set()
    for index, row in rows:
        report.rows_read += 1
        if isinstance(row, RowError):
            report.add_broken(index, row.reason)
            continue
        try:
            messages = map_prompt(row, dataset)
            keep = passes_filters(row, dataset)
            gold = _gold_answer(row, dataset)
            tests = _tests(row, dataset)
        except MappingError as exc:
            report.add_broken(index, str(exc))
            continue
        if not keep:
            report.filtered += 1
            continue
        if is_empty(messages):
            report.empty_count += 1
            if len(report.empty) < MAX_LISTED_ROWS:
                report.empty.append(index)
            continue
        pid = prompt_id(messages)
        if pid in seen:
            report.duplicate_count += 1
            if len(report.duplicate) < MAX_LISTED_ROWS:
                report.duplicate.append(index)
            continue
        if dataset.row_limit is not None and len(prompts) >= dataset.row_limit:
            report.over_limit += 1
            continue
        seen.add(pid)
        split = assign_split(pid, sft_fraction, held_out_fraction, seed)
        record: PromptRecord = {
            "prompt_id": pid,
            "dataset": dataset.name,
            "domain": dataset.domain,
            "messages": messages,
            "gold_answer": gold,
            "tests": tests,
            "split": split,
            "row_index": index,
        }
        prompts.append(record)
        report.splits[split] = report.splits.get(split, 0) + 1
        for spec in dataset.existing_answers:
            answer = row.get(spec.field)
            counts = report.existing_answers.setdefault(
                spec.source, {"written": 0, "missing": 0, "held_out": 0}
            )
            if split == "eval":
                counts["held_out"] += 1  # held-out prompts get no answers: the scorecard must not see them
            elif isinstance(answer, str) and answer.strip():
                existing[spec.source].append(existing_answer_record(record, spec.source, answer))
                counts["written"] += 1
            else:
                counts["missing"] += 1
    report.written = len(prompts)
    return PreparedDataset(prompts=prompts, existing=existing, report=report)


def existing_answer_record(prompt: PromptRecord, source: str, answer: str) -> SampleRecord:
    """A dataset's own answer as sample 0 of a pseudo-source, so score/build treat it like sampled ones."""
    return {
        "prompt_id": prompt["prompt_id"],
        "dataset": prompt["dataset"],
        "domain": prompt["domain"],
        "source": source,
        "sample_index": 0,
        "messages": prompt["messages"],
        "answer": answer,
        "finish_reason": "stop",
        "usage": {},
        "sampling": {"existing_answers": True},
    }


def _gold_answer(row: dict[str, Any], dataset: DatasetConfig) -> str | None:
    column = dataset.fields.answer
    if not column:
        return None
    if column not in row:
        raise MappingError(f"column {column!r} (fields.answer) is missing")
    value = row[column]
    return None if value is None else _as_text(value)


def _tests(row: dict[str, Any], dataset: DatasetConfig) -> Any:
    column = dataset.fields.tests
    if not column:
        return None
    if column not in row:
        raise MappingError(f"column {column!r} (fields.tests) is missing")
    return row[column]
