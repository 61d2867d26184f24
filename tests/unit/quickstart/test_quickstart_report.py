"""report.md and its plots from a run folder's files; sections appear only when their inputs exist."""

from __future__ import annotations

import json
from pathlib import Path

from kubefusion_operator.local.report import curve, dataset_table, render_markdown, write_report
from kubefusion_trainer.config import FusionConfig
from kubefusion_trainer.layout import RunLayout

SPEC = FusionConfig.model_validate(
    {
        "target": {"model": "/m/target"},
        "sources": [{"name": "a", "model": "/m/a"}, {"name": "b", "model": "/m/b"}],
        "datasets": [{"name": "add", "location": "/d.jsonl", "domain": "math"}],
        "scoring": {"rewardModel": {"model": "/m/rm"}},
        "training": {"dpo": {}},
    }
)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run_folder(root: Path) -> RunLayout:
    layout = RunLayout(root)
    _write_jsonl(
        layout.prompts_file("add"), [{"split": s} for s in ["sft", "sft", "pref", "pref", "pref", "eval"]]
    )
    _write_jsonl(layout.dataset_file("sft", "add"), [{}, {}])
    _write_jsonl(layout.dataset_file("dpo", "add"), [{}])
    for source, rewards in (("a", [0.1, 0.9]), ("b", [0.3])):
        _write_jsonl(
            layout.score_shard("sources", source, "add", 0, 1),
            [{"reward": r, "correct": r > 0.5} for r in rewards],
        )
    state = layout.checkpoints_dir("dpo") / "checkpoint-2" / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text(
        json.dumps(
            {
                "log_history": [
                    {"step": 1, "loss": 0.7, "rewards/margins": 0.0},
                    {"step": 2, "loss": 0.5, "rewards/margins": 0.4},
                    {"step": 2, "train_loss": 0.6},
                ]
            }
        )
    )
    layout.scorecard.parent.mkdir(parents=True)
    layout.scorecard.write_text(
        json.dumps(
            {
                "models": ["a", "original", "sft", "dpo"],
                "sources": ["a"],
                "datasets": {
                    "add": {
                        "domain": "math",
                        "prompts": 1,
                        "accuracy": {"a": 1.0, "original": 0.0, "sft": 0.5, "dpo": 1.0},
                        "mean_reward": {"a": 1.0, "original": 0.1, "sft": 0.5, "dpo": 0.9},
                        "win_rate": {"a": 1.0, "sft": 0.5, "dpo": 1.0},
                    }
                },
            }
        )
    )
    return layout


def test_dataset_table_counts_prompts_splits_and_rows(tmp_path: Path) -> None:
    table = dataset_table(_run_folder(tmp_path), SPEC)
    assert table == [
        {
            "dataset": "add",
            "domain": "math",
            "prompts": 6,
            "splits": {"sft": 2, "pref": 3, "eval": 1},
            "sft": 2,
            "pairs": 1,
            "pair_kind": "dpo",
        }
    ]


def test_curves_read_trl_log_history() -> None:
    history = [{"step": 1, "loss": 0.7}, {"step": 2, "grad_norm": 1.0}, {"step": 3, "loss": 0.4}]
    assert curve(history, "loss") == ([1.0, 3.0], [0.7, 0.4])


def test_report_has_every_section_and_its_plots(tmp_path: Path) -> None:
    layout = _run_folder(tmp_path)
    report = write_report(layout, SPEC, "demo")
    text = report.read_text()
    assert "| dpo | 100.0% | 100.0% |" in text
    assert "| add | math | 6 | 2 | 1 (dpo) | 1 |" in text
    assert "add: a 50.0%, b 0.0%" in text
    assert "## What each stage added" in text
    assert "| add | 0.0% | 50.0% | 100.0% | a 100.0% | +50.0 |" in text
    for plot in ("rewards", "training", "scorecard"):
        assert f"({plot}.png)" in text
        assert layout.plot(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_run_that_only_prepared_still_renders(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    _write_jsonl(layout.prompts_file("add"), [{"split": "sft"}])
    text = write_report(layout, SPEC, "early").read_text()
    assert "| add | math | 1 | - | - (dpo) | 0 |" in text
    assert "Scorecard" not in text and ".png" not in text
    assert render_markdown("x", SPEC, [], {}, None, {}).startswith("# Fusion run `x`")


def test_report_states_the_code_sandbox_isolation_each_step_used(tmp_path: Path) -> None:
    from kubefusion_operator.local.report import sandbox_isolation

    layout = RunLayout(tmp_path)
    layout.stage_record("verify-code-sources").parent.mkdir(parents=True)
    layout.stage_record("verify-code-sources").write_text(
        json.dumps({"sandbox_isolation": "process: landlock ABI 7"})
    )
    layout.stage_record("score-sources").write_text(json.dumps({"answers": 3}))  # no code ran there
    found = sandbox_isolation(layout)
    assert found == {"verify-code-sources": "process: landlock ABI 7"}
    text = render_markdown("x", SPEC, [], {}, None, {}, found)
    assert "## Code sandbox" in text and "- verify-code-sources: process: landlock ABI 7" in text
    assert "Code sandbox" not in render_markdown("x", SPEC, [], {}, None, {}, {})
