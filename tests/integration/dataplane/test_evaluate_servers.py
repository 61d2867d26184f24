"""The evaluate stage asks each candidate's own server for greedy answers (as a cluster serves them with
vLLM), here a real `transformers serve` of the tiny model; they equal in-process greedy generation."""
# ruff: noqa: F811

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_sample_server import served_model  # noqa: F401  (the fixture: a transformers serve process)

from conftest import subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.records import prompt_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_candidates_answer_through_their_servers_greedily(
    served_model: tuple[str, str], tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    base_url, model = served_model
    root = tmp_path / "run"
    layout = RunLayout(root)
    rows = []
    for i in range(4):
        messages = [{"role": "user", "content": f"What is {i} + 1?"}]
        rows.append(
            {
                "prompt_id": prompt_id(messages),
                "dataset": "add",
                "domain": "math",
                "messages": messages,
                "gold_answer": str(i + 1),
                "split": "eval",
                "row_index": i,
            }
        )
    layout.prompts_file("add").parent.mkdir(parents=True)
    layout.prompts_file("add").write_text("".join(json.dumps(r) + "\n" for r in rows))
    layout.final_model("sft").parent.mkdir(parents=True)
    layout.final_model("sft").symlink_to(model, target_is_directory=True)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "ev",
                "storageRoot": str(root),
                # The original target answers through the server; the source and SFT model locally.
                "endpoints": {"eval-original": base_url},
                "spec": {
                    "target": {"model": model},
                    "sources": [{"name": "src", "model": model}],
                    "datasets": [{"name": "add", "location": "/unused.jsonl", "domain": "math"}],
                    "scoring": {"rewardModel": {"model": str(tiny_world["reward"]), "maxLength": 64}},
                    "evaluation": {"heldOutFraction": 0.5, "maxPrompts": 4},
                },
            }
        )
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "kubefusion_operator", "stage", "evaluate", "--config", str(config)),
            *("--include-sources", "--max-new-tokens", "6"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    card = json.loads(layout.scorecard.read_text())
    assert card["models"] == ["src", "original", "sft"]

    def answers(name: str) -> list[str]:
        return [json.loads(line)["answer"] for line in layout.eval_answers(name).read_text().splitlines()]

    # Same weights, greedy both ways: the server's answers are the in-process ones, and all are scored.
    assert answers("original") == answers("src") == answers("sft")
    assert len(answers("original")) == 4 and any(answers("original"))
