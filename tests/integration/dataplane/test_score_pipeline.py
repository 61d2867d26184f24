"""prepare -> sample -> score -> build with the real stages: the records each stage writes are what the next reads.

Sources and the SFT target are the simulated OpenAI server (benchmarks/sim_openai_server.py); the reward
model is tiny_world's.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT
from kubefusion_trainer.config import RunConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.shards import iter_folder, read_jsonl
from kubefusion_trainer.stages import build, prepare, sample, score

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from sim_openai_server import SimServer, serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def make_run(root: Path, endpoint: str, reward: Path) -> tuple[RunConfig, Path]:
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"please explain step {i}"}) + "\n" for i in range(24)))
    spec: dict[str, Any] = {
        "recipe": "wrpo",
        "target": {"model": "t", "samplesPerPrompt": 3, "sampling": {"seed": 1}},
        "sources": [
            {"name": "a", "model": "org/a", "sampling": {"seed": 0}},
            {"name": "b", "model": "org/b", "sampling": {"seed": 5}},
        ],
        "datasets": [{"name": "chat", "location": str(data), "samplesPerSource": 3, "sftFraction": 0.5}],
        # Tiny random rewards differ by little: a wide margin lets pairs through.
        "scoring": {
            "rewardModel": {"model": str(reward), "batchSize": 16, "maxLength": 128},
            "margin": {"min": 0.0, "max": 10.0},
        },
        "training": {"wrpo": {"alpha": 0.5}},
    }
    run = RunConfig.model_validate(
        {
            "name": "p",
            "storageRoot": str(root / "store"),
            "endpoints": {"a": endpoint, "b": endpoint, "target": endpoint},
            "spec": spec,
        }
    )
    config = root / "run.json"
    config.write_text(run.model_dump_json(by_alias=True))
    return run, config


def test_stages_chain(tmp_path: Path, tiny_world: dict) -> None:
    with serve_in_thread(SimServer(ms_per_token=0.0, answer_tokens=12)) as server:
        run, config = make_run(tmp_path, server.base_url, tiny_world["reward"])
        assert prepare.main(["--config", str(config)]) == 0
        assert sample.main(["--config", str(config)]) == 0
        assert score.main(["--config", str(config)]) == 0
        assert build.main(["--config", str(config)]) == 0
        assert sample.main(["--config", str(config), "--phase", "target"]) == 0
        assert score.main(["--config", str(config), "--phase", "target"]) == 0
        assert build.main(["--config", str(config), "--phase", "target"]) == 0
    layout = RunLayout(run.storage_root)

    answers: dict[tuple[str, str], dict[str, float]] = defaultdict(
        dict
    )  # (prompt, source) -> answer -> reward
    for source in ("a", "b"):
        for record in iter_folder(layout.scores_dir("sources", source, "chat")):
            answers[(record["prompt_id"], source)][record["answer"]] = record["reward"]
    splits = {p["prompt_id"]: p["split"] for p in read_jsonl(layout.prompts_file("chat"))}

    sft = read_jsonl(layout.dataset_file("sft", "chat"))
    assert sft and {splits[r["prompt_id"]] for r in sft} == {"sft"}
    for row in sft:
        best = max(
            reward for (pid, _), by in answers.items() if pid == row["prompt_id"] for reward in by.values()
        )
        assert row["messages"][-1]["role"] == "assistant" and row["reward"] == pytest.approx(best)

    dpo = read_jsonl(layout.dataset_file("dpo", "chat"))
    assert dpo and {splits[r["prompt_id"]] for r in dpo} == {"pref"}
    for row in dpo:
        by_answer = answers[(row["prompt_id"], row["source"])]
        assert by_answer[row["chosen"][0]["content"]] == max(by_answer.values())
        assert by_answer[row["rejected"][0]["content"]] == min(by_answer.values())

    wrpo = read_jsonl(layout.dataset_file("wrpo", "chat"))
    assert wrpo and len(wrpo) <= len(dpo) + sum(1 for s in splits.values() if s == "pref")
    for row in wrpo:
        assert len(row["chosen"]) == 2 and row["chosen_reward"] > row["rejected_reward"]
    stats = json.loads(layout.build_stats("sft").read_text())["chat"]
    assert stats["sft_rows"] == len(sft) and stats["dpo_pairs"] == len(dpo)
