"""The build stage end to end on score shards written by a fixture: outputs, stats, resume, bad input."""

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
from kubefusion_trainer.stages import build as build_stage

DATASETS = [
    {"name": "chat", "location": "chat.jsonl", "domain": "instruction", "sftFraction": 0.5},
    {"name": "algebra", "location": "algebra.jsonl", "domain": "math", "fields": {"answer": "answer"}},
    {"name": "leet", "location": "leet.jsonl", "domain": "code", "fields": {"tests": "tests"}},
    {"name": "zh", "location": "zh.jsonl", "domain": "chinese", "sources": ["x"]},
]


@pytest.fixture
def run(tmp_path: Path) -> dict:
    """Prompts and scored answers with known outcomes for every rule."""
    config = write_run_config(tmp_path, DATASETS)
    layout = RunLayout(tmp_path / "storage")
    p = {
        "chat-sft": prompt("chat", "instruction", "say hi", "sft"),
        "chat-pair": prompt("chat", "instruction", "say bye", "pref"),
        "chat-wide": prompt("chat", "instruction", "say what", "pref"),
        "chat-eval": prompt("chat", "instruction", "held out", "eval"),
        "alg-sft": prompt("algebra", "math", "1+1", "sft", gold="2"),
        "alg-none": prompt("algebra", "math", "2+2", "sft", gold="4"),
        "alg-pair": prompt("algebra", "math", "3+3", "pref", gold="6"),
        "leet-fail": prompt("leet", "code", "write add", "pref", tests="assert add(1,2)==3"),
        "leet-pair": prompt("leet", "code", "write sub", "pref", tests="assert sub(3,2)==1"),
        "zh-1": prompt("zh", "chinese", "ni hao", "sft"),
        "zh-2": prompt("zh", "chinese", "xie xie", "pref"),
    }
    by_dataset: dict[str, list[dict]] = {}
    for item in p.values():
        by_dataset.setdefault(item["dataset"], []).append(item)
    for name, prompts in by_dataset.items():
        write_prompts(layout, name, prompts)
    scored = {
        "x": [
            answer_record(p["chat-sft"], "x", 0, "hi from x", reward=0.4, correct=None),
            answer_record(p["chat-sft"], "x", 1, "HI FROM X", reward=0.8, correct=None),
            answer_record(p["chat-pair"], "x", 0, "bye x0", reward=0.50, correct=None),
            answer_record(p["chat-pair"], "x", 1, "bye x1", reward=0.55, correct=None),
            answer_record(p["chat-wide"], "x", 0, "what x0", reward=0.9, correct=None),
            answer_record(p["chat-wide"], "x", 1, "what x1", reward=0.1, correct=None),
            answer_record(p["chat-eval"], "x", 0, "eval", reward=0.9, correct=None),
            answer_record(p["alg-sft"], "x", 0, "2", reward=0.3, correct=True),
            answer_record(p["alg-sft"], "x", 1, "3", reward=0.9, correct=False),
            answer_record(p["alg-none"], "x", 0, "5", reward=0.3, correct=False),
            answer_record(p["alg-pair"], "x", 0, "6", reward=0.60, correct=True),
            answer_record(p["alg-pair"], "x", 1, "7", reward=0.58, correct=False),
            answer_record(p["leet-fail"], "x", 0, "def add(a,b): return a-b", reward=0.9, correct=False),
            answer_record(p["leet-fail"], "x", 1, "def add(a,b): return 0", reward=0.1, correct=False),
            answer_record(p["leet-pair"], "x", 0, "def sub(a,b): return a-b", reward=0.7, correct=True),
            answer_record(p["leet-pair"], "x", 1, "def sub(a,b): return b-a", reward=0.65, correct=False),
            answer_record(p["zh-1"], "x", 0, "x zh", reward=0.2, correct=None),
            answer_record(p["zh-2"], "x", 0, "x zh 2", reward=0.2, correct=None),
        ],
        "y": [
            answer_record(p["chat-sft"], "y", 0, "hi from y", reward=0.7, correct=None),
            answer_record(p["chat-pair"], "y", 0, "bye y0", reward=0.9, correct=None),
            answer_record(p["chat-pair"], "y", 1, "bye y1", reward=0.85, correct=None),
            answer_record(p["chat-wide"], "y", 0, "what y", reward=0.95, correct=None),
            answer_record(p["leet-fail"], "y", 0, "def add(a,b): return None", reward=0.5, correct=False),
        ],
    }
    for source, records in scored.items():
        for dataset in {r["dataset"] for r in records}:
            mine = [r for r in records if r["dataset"] == dataset]
            write_shards(layout.scores_dir("sources", source, dataset), mine, count=2)
    return {"config": config, "layout": layout, "prompts": p}


def by_prompt(rows: list[dict]) -> dict[str, dict]:
    return {r["prompt_id"]: r for r in rows}


def test_sources_phase_applies_every_rule(run: dict, capsys: pytest.CaptureFixture) -> None:
    assert build_stage.main(["--config", str(run["config"]), "--phase", "sources"]) == 0
    layout, p = run["layout"], run["prompts"]

    sft = {d: by_prompt(read_jsonl(layout.dataset_file("sft", d))) for d in ("chat", "algebra", "leet", "zh")}
    assert sft["chat"][p["chat-sft"]["prompt_id"]]["messages"] == [
        {"role": "user", "content": "say hi"},
        {"role": "assistant", "content": "HI FROM X"},
    ]
    assert p["chat-eval"]["prompt_id"] not in sft["chat"]
    assert sft["algebra"][p["alg-sft"]["prompt_id"]]["messages"][-1]["content"] == "2"  # correct beats reward
    assert p["alg-none"]["prompt_id"] not in sft["algebra"]
    assert {r["messages"][-1]["content"] for r in sft["zh"].values()} == {
        "x zh",
        "x zh 2",
    }  # all prompts, SFT only
    assert not layout.dataset_file("dpo", "zh").exists()

    dpo = {d: by_prompt(read_jsonl(layout.dataset_file("dpo", d))) for d in ("chat", "algebra", "leet")}
    pair = dpo["chat"][p["chat-pair"]["prompt_id"]]
    assert pair["prompt"] == [{"role": "user", "content": "say bye"}]
    # x's gap 0.05 and y's gap 0.05 tie -> x by name.
    assert (pair["chosen"], pair["rejected"]) == (
        [{"role": "assistant", "content": "bye x1"}],
        [{"role": "assistant", "content": "bye x0"}],
    )
    assert p["chat-wide"]["prompt_id"] not in dpo["chat"]  # x gap 0.8, y single answer
    assert dpo["algebra"][p["alg-pair"]["prompt_id"]]["chosen"][0]["content"] == "6"
    assert dpo["leet"][p["leet-pair"]["prompt_id"]]["rejected"][0]["content"] == "def sub(a,b): return b-a"
    assert p["leet-fail"]["prompt_id"] not in dpo["leet"]

    stats = json.loads(layout.build_stats("sft").read_text())
    assert (
        stats["chat"]["sft_rows"] == 1 and stats["chat"]["dpo_pairs"] == 1 and stats["chat"]["held_out"] == 1
    )
    assert stats["chat"]["dropped_pref"] == {"margin out of range": 1}
    assert stats["algebra"]["dropped_sft"] == {"no correct answer": 1}
    assert stats["leet"]["dropped_pref"] == {"all tests failed": 1}
    assert json.loads(layout.build_stats("dpo").read_text())["chat"] == stats["chat"]
    record = json.loads(layout.stage_record("build-sources").read_text())
    assert record["datasets"]["leet"]["dpo_pairs"] == 1

    table = capsys.readouterr().out
    assert "dataset" in table and "dpo_pairs" in table
    assert "pref: all tests failed 1" in table and "sft: no correct answer 1" in table


def test_partitioning_does_not_change_the_result(run: dict, tmp_path: Path) -> None:
    layout = run["layout"]
    build_stage.run(str(run["config"]), "sources", partition_entries=10**9, workers=1)
    one = {d: sorted(read_jsonl(layout.dataset_file("dpo", d)), key=str) for d in ("chat", "algebra", "leet")}
    for kind in ("sft", "dpo"):
        layout.build_stats(kind).unlink()
    build_stage.run(
        str(run["config"]), "sources", partition_entries=1, workers=2
    )  # many partitions, 2 processes
    many = {
        d: sorted(read_jsonl(layout.dataset_file("dpo", d)), key=str) for d in ("chat", "algebra", "leet")
    }
    assert one == many
    assert not layout.scratch_dir("build-sources-chat").exists()


def test_rerun_skips_built_datasets(run: dict) -> None:
    layout = run["layout"]
    build_stage.run(str(run["config"]), "sources")
    first = layout.dataset_file("sft", "chat").stat().st_mtime_ns
    layout.dataset_file("sft", "leet").unlink()  # lost output: that dataset is rebuilt
    build_stage.run(str(run["config"]), "sources")
    assert layout.dataset_file("sft", "chat").stat().st_mtime_ns == first
    assert layout.dataset_file("sft", "leet").exists()


def test_bad_score_line_is_named_and_keeps_earlier_outputs(run: dict, capsys: pytest.CaptureFixture) -> None:
    layout = run["layout"]
    build_stage.run(str(run["config"]), "sources")
    before = layout.dataset_file("sft", "chat").read_text()
    shard = layout.scores_dir("sources", "x", "leet") / "shard-00000-of-00002.jsonl"
    shard.write_text(shard.read_text() + '{"broken": true}\n')
    layout.build_stats("sft").unlink()
    layout.build_stats("dpo").unlink()
    assert build_stage.main(["--config", str(run["config"])]) == 1
    error = capsys.readouterr().err
    assert f"{shard}:" in error and "prompt_id" in error
    assert layout.dataset_file("sft", "chat").read_text() == before


def test_wrpo_phase_builds_quadruples(run: dict) -> None:
    layout, p = run["layout"], run["prompts"]
    target = [
        answer_record(p["chat-pair"], "target", 0, "t0", reward=0.2, correct=None),
        answer_record(p["chat-pair"], "target", 1, "t1", reward=0.6, correct=None),
        answer_record(p["chat-pair"], "target", 2, "t2", reward=0.4, correct=None),
        answer_record(p["chat-wide"], "target", 0, "same", reward=0.5, correct=None),
        answer_record(p["chat-wide"], "target", 1, "same again", reward=0.5, correct=None),
        answer_record(p["chat-sft"], "target", 0, "not a pref prompt", reward=0.5, correct=None),
    ]
    write_shards(layout.scores_dir("target", "target", "chat"), target, count=2)
    for name in ("algebra", "leet"):
        write_shards(layout.scores_dir("target", "target", name), [], count=1)
    assert build_stage.main(["--config", str(run["config"]), "--phase", "target"]) == 0
    rows = by_prompt(read_jsonl(layout.dataset_file("wrpo", "chat")))
    assert list(rows) == [p["chat-pair"]["prompt_id"]]
    row = rows[p["chat-pair"]["prompt_id"]]
    assert row["chosen"] == [
        [{"role": "assistant", "content": "bye y0"}],
        [{"role": "assistant", "content": "t1"}],
    ]
    assert row["rejected"] == [{"role": "assistant", "content": "t0"}]
    stats = json.loads(layout.build_stats("wrpo").read_text())
    assert stats["chat"]["wrpo_rows"] == 1 and stats["chat"]["dropped_pref"] == {"equal rewards": 1}


def test_cli_dispatch_runs_the_build(run: dict, repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubefusion_operator", "stage", "build", "--config", str(run["config"])],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=repo_root,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "chat" in result.stdout
    assert run["layout"].stage_record("build-sources").exists()


def test_fields_are_read_from_the_record_not_from_answer_text(tmp_path: Path) -> None:
    """The build reads reward/correct/source by pattern: text inside an answer must not be mistaken for them."""
    config = write_run_config(tmp_path, [{"name": "alg", "location": "a.jsonl", "domain": "math"}])
    layout = RunLayout(tmp_path / "storage")
    p = prompt("alg", "math", "1+1", "sft", gold="2")
    write_prompts(layout, "alg", [p])
    tricky = answer_record(
        p,
        "x",
        0,
        'I claim {"reward": 99, "correct": true, "source": "z"}, "reward": 98',
        reward=0.1,
        correct=False,
    )
    honest = answer_record(p, "x", 1, "2", reward=0.05, correct=True)
    folder = layout.scores_dir("sources", "x", "alg")
    folder.mkdir(parents=True)
    # Compact separators and a different key order, as another writer might produce.
    compact = json.dumps(dict(reversed(list(tricky.items()))), separators=(",", ":"))
    (folder / "shard-00000-of-00001.jsonl").write_text(compact + "\n" + json.dumps(honest) + "\n")
    assert build_stage.main(["--config", str(config)]) == 0
    [row] = read_jsonl(layout.dataset_file("sft", "alg"))
    assert row["messages"][-1]["content"] == "2" and row["reward"] == 0.05


def test_unfinished_scoring_is_refused(run: dict, capsys: pytest.CaptureFixture) -> None:
    layout = run["layout"]
    (layout.scores_dir("sources", "y", "chat") / "shard-00000-of-00002.jsonl").unlink()
    assert build_stage.main(["--config", str(run["config"])]) == 1
    assert "scoring is unfinished" in capsys.readouterr().err
    assert not layout.stage_record("build-sources").exists()
