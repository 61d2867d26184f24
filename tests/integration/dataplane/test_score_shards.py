"""Score shards as an Indexed Job runs them: real `kubefusion stage score --shard I/N` processes on the tiny
reward model; one is SIGKILLed mid-way and rerun, and no score is lost or written twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO_ROOT, subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.shards import chunk_files, iter_folder, read_jsonl

sys.path.insert(0, str(REPO_ROOT / "tests" / "unit" / "dataplane"))

from dataplane_run_helpers import answer_record, prompt, write_prompts, write_run_config, write_shards

pytestmark = pytest.mark.slow
PROMPTS, ANSWERS = 240, 4


def score_command(config: Path, shard: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kubefusion_operator",
        "stage",
        "score",
        "--config",
        str(config),
        "--shard",
        shard,
        "--chunk-answers",
        "8",
    ]


def test_a_score_shard_killed_mid_way_and_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, tiny_world: dict
) -> None:
    config = write_run_config(
        tmp_path,
        [{"name": "chat", "location": "chat.jsonl", "domain": "instruction"}],
        reward_model=str(tiny_world["reward"]),
        sources=("x",),
        reward={"maxLength": 256, "gpus": 0},
    )
    layout = RunLayout(tmp_path / "storage")
    prompts = [prompt("chat", "instruction", f"question number {i}", "pref") for i in range(PROMPTS)]
    write_prompts(layout, "chat", prompts)
    samples = [
        answer_record(p, "x", k, f"answer {k} to {p['messages'][0]['content']} " * (1 + k))
        for p in prompts
        for k in range(ANSWERS)
    ]
    write_shards(layout.samples_dir("sources", "x", "chat"), samples, count=4)  # sampled by 4 pods
    folder = layout.scores_dir("sources", "x", "chat")

    first = subprocess.Popen(score_command(config, "0/2"), env=subprocess_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while len(chunk_files(folder)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert first.returncode == -signal.SIGKILL, "the scorer finished before it could be killed"
    before = {
        (r["prompt_id"], r["sample_index"]): r["reward"] for c in chunk_files(folder) for r in read_jsonl(c)
    }
    assert before and not (folder / "shard-00000-of-00002.jsonl").exists()

    for shard in ("0/2", "1/2"):  # the Job restarts the killed index; the other pod runs as usual
        done = subprocess.run(
            score_command(config, shard), env=subprocess_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

    assert not chunk_files(folder)  # every chunk was merged into its shard file
    scored = list(iter_folder(folder))
    keys = Counter((r["prompt_id"], r["sample_index"]) for r in scored)
    assert max(keys.values()) == 1, "a score was written twice"
    assert set(keys) == {(r["prompt_id"], r["sample_index"]) for r in samples}, "a score was lost"
    for index in (0, 1):  # each pod's shard holds exactly its prompts
        rows = read_jsonl(folder / f"shard-0000{index}-of-00002.jsonl")
        assert {int(r["prompt_id"], 16) % 2 for r in rows} == {index}
    after = {(r["prompt_id"], r["sample_index"]): r["reward"] for r in scored}
    assert all(after[key] == reward for key, reward in before.items())  # committed scores kept as they were
    assert layout.stage_record("score-sources-shard-0-of-2").exists()
    assert layout.stage_record("score-sources-shard-1-of-2").exists()
