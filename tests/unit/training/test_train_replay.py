"""SFT replay rows for the preference stages: a seeded draw of the SFT rows, each answer both chosen and
rejected, valid training rows of the stage's kind, and a spec that asks for replay without the SFT term
refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kubefusion_trainer.config import DpoConfig, WrpoConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.training.data import check_row
from kubefusion_trainer.training.replay import replay_count, replay_rows
from kubefusion_trainer.training.runner import stage_replay_rows


def _sft_rows(count: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "digits only"},
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        }
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("available", "fraction", "expected"),
    [(10, 0.0, 0), (10, 0.25, 2), (10, 1.0, 10), (3, 0.01, 1), (0, 1.0, 0)],
)
def test_replay_count_rounds_and_keeps_at_least_one(available: int, fraction: float, expected: int) -> None:
    assert replay_count(available, fraction) == expected


def test_replay_count_refuses_a_fraction_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="sftReplayFraction"):
        replay_count(10, 1.5)


def test_dpo_replay_rows_answer_with_the_sft_answer_on_both_sides() -> None:
    rows = replay_rows(_sft_rows(8), "dpo", 1.0, seed=0)
    assert len(rows) == 8
    for i, row in enumerate(rows):
        assert check_row("dpo", row, f"replay {i}") == row
        assert row["prompt"] == _sft_rows(8)[i]["messages"][:2]  # system and user turns, in file order
        assert row["chosen"] == row["rejected"] == [{"role": "assistant", "content": str(i + 1)}]


def test_wrpo_replay_rows_use_the_answer_as_both_chosen_answers() -> None:
    [row] = replay_rows(_sft_rows(1), "wrpo", 1.0, seed=0)
    answer = [{"role": "assistant", "content": "1"}]
    assert check_row("wrpo", row, "replay") == row
    assert row["chosen"] == [answer, answer] and row["rejected"] == answer


def test_the_draw_follows_the_seed() -> None:
    draw = [r["rejected"][0]["content"] for r in replay_rows(_sft_rows(40), "dpo", 0.25, seed=3)]
    assert len(draw) == 10 and draw == sorted(draw, key=int)  # file order
    assert draw == [r["rejected"][0]["content"] for r in replay_rows(_sft_rows(40), "dpo", 0.25, seed=3)]
    assert draw != [r["rejected"][0]["content"] for r in replay_rows(_sft_rows(40), "dpo", 0.25, seed=4)]


def test_replay_refuses_sft_and_rows_without_a_prompt() -> None:
    with pytest.raises(ValueError, match="preference stages"):
        replay_rows(_sft_rows(2), "sft", 1.0, seed=0)
    answer_only = [{"messages": [{"role": "assistant", "content": "hi"}]}]
    with pytest.raises(ValueError, match="SFT row 0 has no prompt"):
        replay_rows(answer_only, "dpo", 1.0, seed=0)


@pytest.mark.parametrize("config", [DpoConfig, WrpoConfig])
def test_replay_without_the_sft_term_is_refused_by_name(config: type) -> None:
    extra = {"alpha": 0.5} if config is WrpoConfig else {}
    with pytest.raises(ValidationError, match=r"sftReplayFraction 0\.5 needs sftLossWeight > 0"):
        config(globalBatchSize=8, sftReplayFraction=0.5, **extra)
    assert (
        config(globalBatchSize=8, sftReplayFraction=0.5, sftLossWeight=1.0, **extra).sft_replay_fraction
        == 0.5
    )


def test_a_stage_replays_the_sft_files_of_the_runs_datasets(tmp_path: Path) -> None:
    import json

    layout = RunLayout(tmp_path)
    for name, count in (("math", 6), ("chat", 2)):
        path = layout.dataset_file("sft", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in _sft_rows(count)), encoding="utf-8")
    hp = DpoConfig(globalBatchSize=8, sftLossWeight=1.0, sftReplayFraction=0.5)
    assert len(stage_replay_rows(layout, "dpo", hp, ["math", "chat"])) == 4
    assert len(stage_replay_rows(layout, "dpo", hp, ["math"])) == 3
    assert stage_replay_rows(layout, "dpo", DpoConfig(globalBatchSize=8), ["math"]) == []
