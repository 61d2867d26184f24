"""Math answers against gold labels (math-verify), and the process pool that runs the checks."""

from __future__ import annotations

import os

import pytest

from kubefusion_trainer.scoring.math_check import MathChecker, check_chunk, check_math, final_text_answer

CASES = [
    # (gold, answer, correct)
    ("1/2", "So the probability is \\boxed{\\frac{1}{2}}.", True),
    ("\\frac{1}{2}", "The answer is 0.5", True),
    ("\\frac{3}{4}", "Therefore $\\boxed{0.75}$", True),
    ("2x+2", "Expanding gives \\boxed{2(x+1)}", True),
    ("46", "12 + 34 = 46. The answer is 46.", True),
    ("46", "The answer is 45.", False),
    ("42", "first I thought 42, but the final answer is \\boxed{43}", False),
    ("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt{2}}}", True),
    ("10", "Step 1: 3+4=7. Step 2: 7+3=10.", True),
    ("7", "I do not know.", False),
    ("olleh", "Reversed, the answer is olleh.", True),
    ("olleh", "The answer is hello.", False),
]


@pytest.mark.parametrize(("gold", "answer", "correct"), CASES)
def test_check_math(gold: str, answer: str, correct: bool) -> None:
    verdict, reason = check_math(gold, answer)
    assert verdict is correct, reason
    assert reason


def test_final_text_answer_prefers_boxed_then_answer_is() -> None:
    assert final_text_answer("x \\boxed{abc} then \\boxed{def}") == "def"
    assert final_text_answer("so the answer is: olleh") == "olleh"
    assert final_text_answer("The answer is olleh. Hope this helps!") == "olleh"
    assert final_text_answer("just words here") == "here"


def test_checker_pool_matches_direct_checks() -> None:
    pairs = [(g, a) for g, a, _ in CASES]
    with MathChecker(workers=1, chunk_size=5) as checker:
        results = checker.check_many(pairs)
    assert [r[0] for r in results] == [c for _, _, c in CASES]


def dying_checker(pairs: list[tuple[str, str]], timeout_seconds: int) -> list[tuple[bool, str]]:
    """Runs in the worker: exits the process on the gold label "die" (like a crash inside sympy)."""
    if any(gold == "die" for gold, _ in pairs):
        os._exit(3)
    return check_chunk(pairs, timeout_seconds)


def test_checker_recovers_when_a_worker_dies() -> None:
    """A chunk whose worker dies is marked incorrect; the chunks after it still get checked."""
    with MathChecker(workers=1, chunk_size=1, chunk_checker=dying_checker) as checker:
        pairs = [("1", "\\boxed{1}"), ("die", "x"), ("2", "\\boxed{2}")]
        results = checker.check_many(pairs)
    assert [r[0] for r in results] == [True, False, True]
    assert "crashed" in results[1][1]
