"""The score stage end to end: the tiny reward model, math-verify, the code sandbox, shards and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dataplane_run_helpers import (
    answer_record,
    prompt,
    read_jsonl,
    write_prompts,
    write_run_config,
    write_shards,
)

from conftest import subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.stages import score as score_stage

DATASETS = [
    {"name": "chat", "location": "chat.jsonl", "domain": "instruction"},
    {"name": "algebra", "location": "algebra.jsonl", "domain": "math", "fields": {"answer": "answer"}},
    {"name": "leet", "location": "leet.jsonl", "domain": "code", "fields": {"tests": "tests"}},
]
HONEST = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
HOSTILE = "```python\nimport os\nos._exit(0)\n```"


@pytest.fixture
def run(tmp_path: Path, tiny_world: dict) -> dict:
    config = write_run_config(
        tmp_path,
        DATASETS,
        reward_model=str(tiny_world["reward"]),
        reward={"batchSize": 4, "maxLength": 256, "gpus": 0},
        codeExecution={"timeoutSeconds": 5, "memoryMb": 256},
    )
    layout = RunLayout(tmp_path / "storage")
    chat = prompt("chat", "instruction", "say hi", "sft")
    algebra = prompt("algebra", "math", "What is 1/4 + 1/4?", "pref", gold="\\frac{1}{2}")
    leet = prompt("leet", "code", "write add", "pref", tests="assert add(1, 2) == 3\nassert add(0, 5) == 5")
    write_prompts(layout, "chat", [chat])
    write_prompts(layout, "algebra", [algebra])
    write_prompts(layout, "leet", [leet])
    samples = {
        "chat": [
            answer_record(chat, "x", i, text)
            for i, text in enumerate(["hi", "hello there", "The answer is hi"])
        ],
        "algebra": [
            answer_record(algebra, "x", 0, "So the sum is \\boxed{\\frac{1}{2}}."),
            answer_record(algebra, "x", 1, "It is 0.5"),
            answer_record(algebra, "x", 2, "The answer is \\boxed{\\frac{1}{3}}"),
        ],
        "leet": [
            answer_record(leet, "x", 0, HONEST),
            answer_record(leet, "x", 1, HOSTILE),
            answer_record(leet, "x", 2, "I would use a loop."),
            answer_record(leet, "x", 3, "```python\ndef add(a, b) return a\n```"),
        ],
    }
    for dataset, records in samples.items():
        write_shards(layout.samples_dir("sources", "x", dataset), records, count=2)
    return {"config": config, "layout": layout, "samples": samples}


def scored(layout: RunLayout, dataset: str, model: str = "x", phase: str = "sources") -> list[dict]:
    rows = []
    for shard in sorted(layout.scores_dir(phase, model, dataset).glob("shard-*.jsonl")):
        rows.extend(read_jsonl(shard))
    return sorted(rows, key=lambda r: r["sample_index"])


@pytest.mark.slow
def test_score_stage_through_the_cli(run: dict, repo_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubefusion_operator",
            "stage",
            "score",
            "--config",
            str(run["config"]),
            "--phase",
            "sources",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    layout = run["layout"]
    for dataset, samples in run["samples"].items():
        rows = scored(layout, dataset)
        assert len(rows) == len(samples)
        for row, sample in zip(rows, samples, strict=True):
            assert {k: row[k] for k in sample} == sample  # the sample record rides along unchanged
            assert isinstance(row["reward"], float) and row["reason"]
    assert [r["correct"] for r in scored(layout, "chat")] == [None, None, None]
    assert [r["correct"] for r in scored(layout, "algebra")] == [True, True, False]
    leet = scored(layout, "leet")
    assert [r["correct"] for r in leet] == [True, False, False, False]
    assert "passed: 2/2" in leet[0]["reason"]
    assert "no_code" in leet[2]["reason"] and "syntax_error" in leet[3]["reason"]
    record = json.loads(layout.stage_record("score-sources").read_text())
    assert record["answers"] == 10 and record["shards_scored"] == 3 and record["correct"] == 3
    assert "namespaces" in record["sandbox_isolation"] or "NO network" in record["sandbox_isolation"]


def fast_args(run: dict, *extra: str):
    return score_stage.build_parser().parse_args(["--config", str(run["config"]), *extra])


def test_rerun_skips_scored_shards_and_shards_split_the_work_by_prompt(run: dict) -> None:
    layout = run["layout"]
    first = score_stage.run(fast_args(run, "--shard", "0/2"))
    second = score_stage.run(fast_args(run, "--shard", "1/2"))
    assert first["shards_scored"] == second["shards_scored"] == 3  # one shard file per folder and pod
    assert first.get("answers", 0) + second.get("answers", 0) == 10
    for dataset, samples in run["samples"].items():  # each prompt's answers all in its own pod's shard
        folder = layout.scores_dir("sources", "x", dataset)
        for index in (0, 1):
            rows = read_jsonl(folder / f"shard-0000{index}-of-00002.jsonl")
            assert all(int(r["prompt_id"], 16) % 2 == index for r in rows)
        assert len(scored(layout, dataset)) == len(samples)
    assert layout.stage_record("score-sources-shard-0-of-2").exists()
    assert layout.stage_record("score-sources-shard-1-of-2").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in layout.root.glob("scores/**/*.jsonl")}
    again = score_stage.run(fast_args(run))  # another shard count: everything is scored already
    assert again.get("shards_scored", 0) == 0 and again["shards_skipped"] == 3
    assert {p: p.stat().st_mtime_ns for p in layout.root.glob("scores/**/*.jsonl")} == mtimes


def test_truncation_is_reported(run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = json.loads(run["config"].read_text())
    config["spec"]["scoring"]["rewardModel"]["maxLength"] = 16
    config["spec"]["datasets"] = config["spec"]["datasets"][:1]
    run["config"].write_text(json.dumps(config))
    long = answer_record(prompt("chat", "instruction", "say hi", "sft"), "x", 9, "hello there, friend " * 10)
    write_shards(run["layout"].samples_dir("sources", "x", "chat"), [*run["samples"]["chat"], long], count=2)
    assert score_stage.main(["--config", str(run["config"])]) == 0
    assert "truncated" in capsys.readouterr().err
    rows = scored(run["layout"], "chat")
    assert any("TRUNCATED" in r["reason"] for r in rows)


def test_bad_sample_line_is_named_and_nothing_half_written(run: dict, capsys: pytest.CaptureFixture) -> None:
    layout = run["layout"]
    shard = layout.samples_dir("sources", "x", "chat") / "shard-00001-of-00002.jsonl"
    shard.write_text(shard.read_text() + '{"prompt_id": "p", "answer": 3}\n')
    assert score_stage.main(["--config", str(run["config"])]) == 1
    error = capsys.readouterr().err
    assert f"{shard}:2" in error and "'answer'" in error
    assert not list(layout.scores_dir("sources", "x", "chat").glob("**/*.jsonl"))  # nothing half-written
    assert not list(layout.scores_dir("sources", "x", "chat").glob(".*tmp"))


def test_target_phase_scores_the_target_samples(run: dict) -> None:
    layout = run["layout"]
    chat = run["samples"]["chat"][0]
    target = [{**chat, "source": "target", "sample_index": i, "answer": f"t{i}"} for i in range(3)]
    write_shards(layout.samples_dir("target", "target", "chat"), target, count=1)
    summary = score_stage.run(fast_args(run, "--phase", "target"))
    assert summary["answers"] == 3
    assert [r["answer"] for r in scored(layout, "chat", "target", "target")] == ["t0", "t1", "t2"]
    assert not layout.scores_dir("sources", "x", "chat").exists()


def test_unfinished_sampling_is_refused(run: dict, capsys: pytest.CaptureFixture) -> None:
    layout = run["layout"]
    (layout.samples_dir("sources", "x", "leet") / "shard-00001-of-00002.jsonl").unlink()
    assert score_stage.main(["--config", str(run["config"])]) == 1
    assert "sampling is unfinished" in capsys.readouterr().err
    assert not layout.stage_record("score-sources").exists()
