"""The scorecard's pure parts: answer checks, per-dataset accuracy, reward win rates, the printed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubefusion_trainer.config import RunConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.stages.evaluate import (
    format_scorecard,
    held_out_prompts,
    models_to_evaluate,
    scorecard,
    stage_progression,
)


def _row(model: str, dataset: str, pid: str, correct: bool | None, reward: float) -> dict:
    return {"model": model, "dataset": dataset, "prompt_id": pid, "correct": correct, "reward": reward}


def test_scorecard_counts_accuracy_and_win_rate_against_the_original_per_dataset() -> None:
    answers = {
        "original": [
            _row("original", "add", "p1", False, 0.0),
            _row("original", "add", "p2", True, 1.0),
            _row("original", "rev", "p3", False, 0.5),
        ],
        "dpo": [
            _row("dpo", "add", "p1", True, 2.0),
            _row("dpo", "add", "p2", True, 1.0),
            _row("dpo", "rev", "p3", True, 0.1),
        ],
    }
    card = scorecard(answers, {"add": "math", "rev": "math"})
    assert card["models"] == ["original", "dpo"]
    add = card["datasets"]["add"]
    assert add["prompts"] == 2
    assert add["accuracy"] == {"original": 0.5, "dpo": 1.0}
    assert add["win_rate"] == {"dpo": 0.75}  # one win, one tie
    assert card["datasets"]["rev"]["win_rate"] == {"dpo": 0.0}
    assert card["datasets"]["rev"]["mean_reward"] == {"original": 0.5, "dpo": 0.1}


def test_unchecked_answers_give_no_accuracy() -> None:
    card = scorecard({"original": [_row("original", "chat", "p", None, 0.3)]}, {"chat": "instruction"})
    assert card["datasets"]["chat"]["accuracy"] == {"original": None}


def test_format_scorecard_prints_one_row_per_model() -> None:
    card = scorecard(
        {
            "original": [_row("original", "add", "p1", False, 0.0)],
            "sft": [_row("sft", "add", "p1", True, 1.0)],
        },
        {"add": "math"},
    )
    lines = format_scorecard(card).splitlines()
    assert lines[0].split() == ["model", "add", "win", "vs", "original"]
    assert lines[2].split() == ["original", "0.0%", "-"]
    assert lines[3].split() == ["sft", "100.0%", "100.0%"]


def _config(tmp_path: Path, recipe: str = "fusechat3") -> RunConfig:
    training: dict = {"dpo": {}} if recipe == "fusechat3" else {"wrpo": {"alpha": 0.5}}
    return RunConfig.model_validate(
        {
            "name": "t",
            "storageRoot": str(tmp_path),
            "spec": {
                "recipe": recipe,
                "target": {"model": "/m/target"},
                "sources": [{"name": "a", "model": "/m/a"}],
                "datasets": [{"name": "add", "location": "/d.jsonl", "domain": "math"}],
                "scoring": {"rewardModel": {"model": "/m/rm"}},
                "training": training,
                "evaluation": {"heldOutFraction": 0.2, "maxPrompts": 2},
            },
        }
    )


def test_held_out_prompts_are_the_eval_split_capped_at_max_prompts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    layout = RunLayout(tmp_path)
    layout.prompts_file("add").parent.mkdir(parents=True)
    rows = [
        {"prompt_id": f"p{i}", "dataset": "add", "split": s, "messages": []}
        for i, s in enumerate(["eval", "sft", "eval", "pref", "eval"])
    ]
    layout.prompts_file("add").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["prompt_id"] for r in held_out_prompts(layout, config)["add"]] == ["p0", "p2"]


def test_missing_prepared_prompts_name_the_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset 'add'"):
        held_out_prompts(RunLayout(tmp_path), _config(tmp_path))


def test_models_are_the_original_then_each_finished_stage(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    config = _config(tmp_path)
    assert models_to_evaluate(layout, config, include_sources=False) == {"original": "/m/target"}
    layout.final_model("sft").mkdir(parents=True)
    layout.final_model("dpo").mkdir(parents=True)
    assert models_to_evaluate(layout, config, include_sources=True) == {
        "a": "/m/a",
        "original": "/m/target",
        "sft": str(layout.final_model("sft")),
        "dpo": str(layout.final_model("dpo")),
    }
    wrpo = _config(tmp_path, "wrpo")
    assert "dpo" not in models_to_evaluate(layout, wrpo, include_sources=False)


def _card_with_stages(preference: str = "dpo") -> dict:
    def rows(model: str, add: list[bool], rev: list[bool]) -> list[dict]:
        return [_row(model, "add", f"a{i}", c, 0.0) for i, c in enumerate(add)] + [
            _row(model, "rev", f"r{i}", c, 0.0) for i, c in enumerate(rev)
        ]

    answers = {
        "adder": rows("adder", [True] * 4, [False] * 4),
        "reverser": rows("reverser", [True, False, False, False], [True] * 4),
        "original": rows("original", [False] * 4, [False] * 4),
        "sft": rows("sft", [True, True, False, False], [True, True, True, False]),
        preference: rows(preference, [True, True, True, False], [True, True, True, False]),
    }
    return scorecard(answers, {"add": "math", "rev": "math"}, sources=["adder", "reverser"])


def test_progression_per_skill_names_the_best_source_and_the_preference_gain() -> None:
    progression = stage_progression(_card_with_stages())
    assert progression["add"] == {
        "original": 0.0,
        "sft": 0.5,
        "preference_stage": "dpo",
        "preference": 0.75,
        "best_source": "adder",
        "best_source_accuracy": 1.0,
        "preference_gain": 0.25,
    }
    assert progression["rev"]["best_source"] == "reverser"
    assert progression["rev"]["preference_gain"] == 0.0
    assert stage_progression(_card_with_stages("wrpo"))["add"]["preference_stage"] == "wrpo"


def test_progression_is_printed_under_the_table_and_absent_without_trained_stages() -> None:
    text = format_scorecard(_card_with_stages("wrpo"))
    assert "per skill: original -> sft -> wrpo (best source); wrpo's own gain over sft" in text
    add = next(line for line in text.splitlines() if line.strip().startswith("add "))
    assert add.split() == [
        "add",
        "0.0%",
        "->",
        "50.0%",
        "->",
        "75.0%",
        "(adder",
        "100.0%)",
        "+25.0",
        "points",
    ]
    untrained = scorecard({"original": [_row("original", "add", "p", False, 0.0)]}, {"add": "math"})
    assert stage_progression(untrained) == {}
    assert "per skill" not in format_scorecard(untrained)
