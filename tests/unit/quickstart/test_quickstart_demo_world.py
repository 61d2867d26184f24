"""The quickstart world's pure parts: problems, gold answers, habit answers, tokenisation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kubefusion_trainer import demo_world
from kubefusion_trainer.scoring.math_check import check_math


def test_problems_are_distinct_seeded_and_correct() -> None:
    problems = demo_world.make_problems("addition", 200, seed=3)
    assert len({p for p, _ in problems}) == 200
    assert problems == demo_world.make_problems("addition", 200, seed=3)
    assert problems != demo_world.make_problems("addition", 200, seed=4)
    for prompt, answer in problems:
        a, b = (int(x) for x in prompt.removeprefix("What is ").removesuffix("?").split(" + "))
        assert answer == str(a + b)
    for prompt, answer in demo_world.make_problems("reversal", 50, seed=3):
        digits = prompt.removeprefix("Reverse the digits ").removesuffix(".")
        assert answer == digits[::-1] and "0" not in digits


@pytest.mark.parametrize(
    ("skill", "prompt", "habit"),
    [
        ("addition", "What is 47 + 38?", "75"),
        ("addition", "What is 12 + 34?", "46"),  # no carry: the habit happens to be right
        ("addition", "What is 95 + 15?", "00"),
        ("reversal", "Reverse the digits 5381.", "5381"),
    ],
)
def test_habit_answers_drop_carries_or_copy(skill: str, prompt: str, habit: str) -> None:
    assert demo_world.habit_answer(skill, prompt) == habit


def test_the_scorers_math_check_judges_the_skills_exactly() -> None:
    # The score stage's math path must not mistake a habit answer for the gold one.
    for skill in demo_world.SKILLS:
        for prompt, gold in demo_world.make_problems(skill, 30, seed=1):
            assert check_math(gold, gold)[0]
            habit = demo_world.habit_answer(skill, prompt)
            assert check_math(gold, habit)[0] is (habit == gold)


def test_corrupted_answers_differ_and_keep_the_shape() -> None:
    rng = random.Random(0)
    for answer in ("85", "1835", "100"):
        for _ in range(20):
            wrong = demo_world.corrupt(answer, rng)
            assert wrong != answer and len(wrong) == len(answer) and wrong.isdigit()


def test_hand_rendered_prompt_matches_the_chat_template(tiny_world: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_world["tokenizer"]))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert (
        demo_world.prompt_ids(tokenizer, "What is 1 + 2?")
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    ids, labels = demo_world.encode_example(tokenizer, "What is 1 + 2?", "3")
    answer = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(answer) == "3" + tokenizer.eos_token


def test_datasets_are_jsonl_with_prompt_and_answer(tmp_path: Path) -> None:
    profile = demo_world.Profile(prompts={"addition": 25, "reversal": 30})
    paths = demo_world.write_datasets(tmp_path, profile, seed=0)
    assert set(paths) == set(demo_world.SKILLS)
    rows = {
        skill: [json.loads(line) for line in path.read_text().splitlines()] for skill, path in paths.items()
    }
    assert len(rows["addition"]) == 25 and len(rows["reversal"]) == 30
    assert set(rows["addition"][0]) == {"prompt", "answer"}


def test_base_trains_on_in_rounds_until_every_skill_reaches_the_floor() -> None:
    measured = iter(
        [
            {"addition": 0.27, "reversal": 1.0},
            {"addition": 0.925, "reversal": 1.0},
            {"addition": 1.0, "reversal": 1.0},
        ]
    )
    rounds: list[int] = []
    short: list[dict[str, float]] = []
    scores = demo_world.train_until_skilled(
        rounds.append, lambda: next(measured), short.append, floor=0.98, rounds=4
    )
    assert scores == {"addition": 1.0, "reversal": 1.0}
    assert rounds == [0, 1] and [s["addition"] for s in short] == [0.27, 0.925]


def test_a_base_that_never_learns_stops_the_world_with_a_clear_error() -> None:
    rounds: list[int] = []
    with pytest.raises(RuntimeError, match=r"did not learn every skill.*addition.*try another --seed"):
        demo_world.train_until_skilled(
            rounds.append, lambda: {"addition": 0.5, "reversal": 1.0}, lambda _: None, floor=0.98, rounds=2
        )
    assert rounds == [0, 1]


def test_a_skilled_base_trains_no_further() -> None:
    rounds: list[int] = []
    demo_world.train_until_skilled(rounds.append, lambda: {"addition": 0.99, "reversal": 1.0}, lambda _: None)
    assert rounds == []
