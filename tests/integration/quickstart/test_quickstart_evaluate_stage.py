"""`kubefusion stage evaluate` as a process, from a run config alone, on tiny models; a rerun redoes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.records import prompt_id

pytestmark = pytest.mark.integration


def _evaluate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubefusion_operator",
            "stage",
            "evaluate",
            "--config",
            str(config),
            "--include-sources",
            "--max-new-tokens",
            "4",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_scores_every_model_on_held_out_prompts_and_resumes(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "run"
    layout = RunLayout(root)
    rows = []
    for i in range(6):
        messages = [{"role": "user", "content": f"What is {i} + 1?"}]
        rows.append(
            {
                "prompt_id": prompt_id(messages),
                "dataset": "add",
                "domain": "math",
                "messages": messages,
                "gold_answer": str(i + 1),
                "split": "eval" if i < 4 else "sft",
                "row_index": i,
            }
        )
    layout.prompts_file("add").parent.mkdir(parents=True)
    layout.prompts_file("add").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = str(tiny_world["model"])
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ev",
                "storageRoot": str(root),
                "spec": {
                    "target": {"model": model},
                    "sources": [{"name": "src", "model": model}],
                    "datasets": [{"name": "add", "location": "/unused.jsonl", "domain": "math"}],
                    "scoring": {"rewardModel": {"model": str(tiny_world["reward"]), "maxLength": 64}},
                    "training": {"dpo": {}},
                    "evaluation": {"heldOutFraction": 0.5, "maxPrompts": 3},
                },
            }
        )
    )
    # A finished SFT stage: its final model is evaluated too.
    layout.final_model("sft").parent.mkdir(parents=True)
    layout.final_model("sft").symlink_to(model, target_is_directory=True)

    first = _evaluate(config)
    assert first.returncode == 0, first.stderr
    card = json.loads(layout.scorecard.read_text())
    assert card["models"] == ["src", "original", "sft"]
    add = card["datasets"]["add"]
    assert add["prompts"] == 3  # maxPrompts of the 4 held-out prompts
    assert set(add["accuracy"]) == {"src", "original", "sft"}
    assert all(0.0 <= v <= 1.0 for v in add["accuracy"].values())
    assert set(add["win_rate"]) == {"src", "sft"}
    answers = [json.loads(line) for line in layout.eval_answers("sft").read_text().splitlines()]
    assert [a["prompt_id"] for a in answers] == [r["prompt_id"] for r in rows[:3]]
    assert all(isinstance(a["correct"], bool) and isinstance(a["reward"], float) for a in answers)
    record = json.loads(layout.stage_record("evaluate").read_text())
    assert record["models"] == ["src", "original", "sft"]
    assert "sft" in first.stdout and "original" in first.stdout

    stamps = {m: layout.eval_answers(m).stat().st_mtime_ns for m in card["models"]}
    second = _evaluate(config)
    assert second.returncode == 0, second.stderr
    assert {m: layout.eval_answers(m).stat().st_mtime_ns for m in card["models"]} == stamps


def test_evaluate_without_prepared_prompts_fails_naming_the_dataset(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ev",
                "storageRoot": str(tmp_path / "run"),
                "spec": {
                    "target": {"model": str(tiny_world["model"])},
                    "sources": [{"name": "s", "model": "x"}],
                    "datasets": [{"name": "add", "location": "/unused.jsonl", "domain": "math"}],
                    "scoring": {"rewardModel": {"model": str(tiny_world["reward"])}},
                },
            }
        )
    )
    result = _evaluate(config)
    assert result.returncode == 1
    assert "dataset 'add'" in result.stderr and "run prepare first" in result.stderr
