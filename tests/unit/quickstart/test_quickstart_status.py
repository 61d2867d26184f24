"""`kubefusion status`: where a run stands, from its folder alone."""

from __future__ import annotations

import fcntl
from pathlib import Path

import yaml

from kubefusion_operator.api import as_dict
from kubefusion_operator.local.status import main, runner_active, status_lines
from kubefusion_operator.validation import load_fusionrun
from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.layout import RunLayout


def _run_folder(tmp_path: Path, repo_root: Path) -> RunLayout:
    layout = RunLayout(tmp_path / "runs" / "quickstart")
    run = load_fusionrun(str(repo_root / "examples" / "quickstart.yaml"))
    path = layout.run_config_file("fusionrun")
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(as_dict(run)))
    return layout


def test_status_lists_done_and_pending_steps(tmp_path: Path, repo_root: Path) -> None:
    layout = _run_folder(tmp_path, repo_root)
    atomic_write_json(layout.stage_record("prepare"), {"prompts": 600})
    atomic_write_json(layout.stage_record("sample-sources-adder"), {"datasets": {"a": {"sampled": 5}}})
    lines = status_lines(layout)
    assert lines[1].strip() == "2/8 steps done: stopped (run the same `kubefusion run` command to resume)"
    assert lines[2].split() == ["done", "prepare", "prompts=600"]
    assert lines[3].split() == ["done", "sample", "adder", "sampled=5"]
    assert lines[4].split() == ["pending", "sample", "reverser"]


def test_a_held_lock_marks_the_first_open_step_running(tmp_path: Path, repo_root: Path) -> None:
    layout = _run_folder(tmp_path, repo_root)
    lock = layout.root / "state" / ".runner.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert runner_active(layout)
        lines = status_lines(layout)
    assert not runner_active(layout)
    assert lines[1].strip() == "0/8 steps done: running"
    assert lines[2].split() == ["running", "prepare"]
    assert lines[3].split() == ["pending", "sample", "adder"]


def test_status_of_a_folder_that_is_no_run_fails_clearly(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    assert "not a kubefusion run folder" in capsys.readouterr().err


def test_status_shows_each_skill_through_the_stages_with_the_preference_gain(
    tmp_path: Path, repo_root: Path
) -> None:
    layout = _run_folder(tmp_path, repo_root)
    accuracy = {"adder": 1.0, "reverser": 0.1, "original": 0.2, "sft": 0.6, "dpo": 0.9}
    entry = {"domain": "math", "prompts": 10, "accuracy": accuracy, "mean_reward": {}, "win_rate": {}}
    atomic_write_json(
        layout.scorecard,
        {"models": list(accuracy), "sources": ["adder", "reverser"], "datasets": {"addition": entry}},
    )
    lines = status_lines(layout)
    assert "per skill: original -> sft -> dpo (best source); dpo's own gain over sft" in lines
    row = next(line for line in lines if line.strip().startswith("addition "))
    assert row.split() == [
        "addition",
        "20.0%",
        "->",
        "60.0%",
        "->",
        "90.0%",
        "(adder",
        "100.0%)",
        "+30.0",
        "points",
    ]
