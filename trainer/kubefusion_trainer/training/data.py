"""Training sets from the build stage: data/<kind>/*.jsonl, checked row by row, trl columns only.

Metadata columns (prompt_id, dataset, source, rewards) are dropped here so trl sees exactly what it reads.
A malformed row fails with the file and line named, before any training starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubefusion_trainer.layout import DataKind, RunLayout

COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "dpo": ("prompt", "chosen", "rejected"),
    "wrpo": ("prompt", "chosen", "rejected"),
}


class DataError(ValueError):
    """A training row or file that cannot be used."""


def _check_messages(value: Any, where: str, field: str, assistant_only: bool = False) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {field} must be a non-empty list of chat messages")
    clean = []
    for i, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise DataError(f"{where}: {field}[{i}] must be an object with string 'role' and 'content'")
        if assistant_only and message["role"] != "assistant":
            raise DataError(
                f"{where}: {field}[{i}] must be an assistant message, got role {message['role']!r}"
            )
        clean.append({"role": message["role"], "content": message["content"]})
    return clean


def check_row(kind: DataKind, row: Any, where: str) -> dict[str, Any]:
    """Validate one row of kind sft|dpo|wrpo and return only the columns trl reads."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object")
    missing = [c for c in COLUMNS[kind] if c not in row]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} for a {kind} row")
    if kind == "sft":
        messages = _check_messages(row["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: messages has no assistant turn to learn from")
        return {"messages": messages}
    prompt = _check_messages(row["prompt"], where, "prompt")
    rejected = _check_messages(row["rejected"], where, "rejected", assistant_only=True)
    if kind == "dpo":
        chosen = _check_messages(row["chosen"], where, "chosen", assistant_only=True)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen_pair = row["chosen"]
    if not isinstance(chosen_pair, list) or len(chosen_pair) != 2:
        raise DataError(f"{where}: chosen must be [[source answer], [target answer]] for a wrpo row")
    source = _check_messages(chosen_pair[0], where, "chosen[0]", assistant_only=True)
    target = _check_messages(chosen_pair[1], where, "chosen[1]", assistant_only=True)
    return {"prompt": prompt, "chosen": [source, target], "rejected": rejected}


def read_rows(kind: DataKind, path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            rows.append(check_row(kind, row, where))
    return rows


def dataset_files(layout: RunLayout, kind: DataKind, datasets: list[str] | None = None) -> list[Path]:
    """The stage's files: one per dataset in the spec (those the build stage wrote), else every *.jsonl."""
    if datasets is not None:
        return [p for p in (layout.dataset_file(kind, name) for name in datasets) if p.exists()]
    directory = layout.data_dir(kind)
    return sorted(directory.glob("*.jsonl")) if directory.is_dir() else []


def load_training_rows(layout: RunLayout, kind: DataKind, datasets: list[str] | None = None) -> list[dict]:
    files = dataset_files(layout, kind, datasets)
    if not files:
        raise DataError(f"no {kind} training data under {layout.data_dir(kind)} (run the build stage first)")
    rows = [row for path in files for row in read_rows(kind, path)]
    if not rows:
        raise DataError(f"the {kind} training files are empty: {', '.join(str(p) for p in files)}")
    return rows


def load_training_dataset(
    layout: RunLayout, kind: DataKind, datasets: list[str] | None = None, extra_rows: list[dict] | None = None
) -> Any:
    """A datasets.Dataset of the stage's rows in file order, then `extra_rows` (a preference stage's
    replayed SFT rows); the Trainer shuffles with the run's seed."""
    from datasets import Dataset

    return Dataset.from_list(load_training_rows(layout, kind, datasets) + (extra_rows or []))
