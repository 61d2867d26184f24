"""Loading the build stage's training files: trl columns only, broken rows named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.training.data import DataError, load_training_dataset, load_training_rows

PROMPT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "5"}


def _write(layout: RunLayout, kind: str, name: str, rows: list) -> Path:
    path = layout.dataset_file(kind, name)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_metadata_columns_are_dropped(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    _write(
        layout,
        "dpo",
        "math",
        [
            {
                "prompt": PROMPT,
                "chosen": [GOOD],
                "rejected": [BAD],
                "prompt_id": "ab",
                "source": "s1",
                "chosen_reward": 0.5,
                "rejected_reward": 0.45,
            }
        ],
    )
    _write(
        layout,
        "dpo",
        "chat",
        [{"prompt": PROMPT, "chosen": [GOOD], "rejected": [BAD], "dataset": "chat"}] * 2,
    )
    dataset = load_training_dataset(layout, "dpo", ["math", "chat", "absent"])
    assert sorted(dataset.column_names) == ["chosen", "prompt", "rejected"]
    assert len(dataset) == 3
    assert dataset[0]["chosen"] == [GOOD]


def test_wrpo_rows_keep_both_chosen_answers(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    row = {
        "prompt": PROMPT,
        "chosen": [[GOOD], [{"role": "assistant", "content": "four"}]],
        "rejected": [BAD],
        "source_reward": 0.9,
    }
    _write(layout, "wrpo", "d", [row])
    [loaded] = load_training_dataset(layout, "wrpo").to_list()
    assert loaded == {"prompt": PROMPT, "chosen": row["chosen"], "rejected": [BAD]}


def test_sft_rows(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    _write(layout, "sft", "d", [{"messages": [*PROMPT, GOOD], "prompt_id": "x"}, ""])
    assert load_training_rows(layout, "sft") == [{"messages": [*PROMPT, GOOD]}]


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("sft", "{not json", "not valid JSON"),
        ("sft", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ("sft", {"text": "hi"}, "missing column(s) messages"),
        ("dpo", {"prompt": PROMPT, "chosen": [GOOD]}, "missing column(s) rejected"),
        (
            "dpo",
            {"prompt": PROMPT, "chosen": [{"role": "user", "content": "x"}], "rejected": [BAD]},
            "chosen[0] must be an assistant message",
        ),
        (
            "dpo",
            {"prompt": [{"role": "user"}], "chosen": [GOOD], "rejected": [BAD]},
            "prompt[0] must be an object",
        ),
        ("wrpo", {"prompt": PROMPT, "chosen": [GOOD], "rejected": [BAD]}, "chosen must be [[source answer]"),
        (
            "wrpo",
            {"prompt": PROMPT, "chosen": [[GOOD], []], "rejected": [BAD]},
            "chosen[1] must be a non-empty",
        ),
        ("dpo", ["a list"], "a row must be a JSON object"),
    ],
)
def test_broken_rows_are_named_by_file_and_line(tmp_path: Path, kind: str, row: object, message: str) -> None:
    layout = RunLayout(tmp_path)
    good = {
        "sft": {"messages": [*PROMPT, GOOD]},
        "dpo": {"prompt": PROMPT, "chosen": [GOOD], "rejected": [BAD]},
        "wrpo": {"prompt": PROMPT, "chosen": [[GOOD], [GOOD]], "rejected": [BAD]},
    }[kind]
    path = _write(layout, kind, "d", [good, row])
    with pytest.raises(DataError) as excinfo:
        load_training_rows(layout, kind)  # type: ignore[arg-type]
    assert f"{path}:2" in str(excinfo.value)
    assert message in str(excinfo.value)


def test_missing_or_empty_data_is_a_clear_error(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    with pytest.raises(DataError, match=r"no dpo training data .* \(run the build stage first\)"):
        load_training_rows(layout, "dpo")
    _write(layout, "dpo", "d", [])
    with pytest.raises(DataError, match="empty"):
        load_training_rows(layout, "dpo")
