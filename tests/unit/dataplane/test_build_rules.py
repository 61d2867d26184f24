"""Table-driven tests for the FuseChat-3.0 pairing rules (pure)."""

from __future__ import annotations

import pytest

from kubefusion_trainer.building.rules import (
    ALL_FAILED,
    EQUAL,
    MARGIN,
    NO_ANSWERS,
    NO_CORRECT,
    NO_INCORRECT,
    SINGLE,
    Answer,
    pick_pair,
    pick_sft,
    pick_wrpo,
)

MARGIN_RANGE = (0.01, 0.1)


def a(source: str, index: int, reward: float, correct: bool | None = None) -> Answer:
    return Answer(source, index, f"{source}#{index}", reward, correct)


def ids(answer: Answer | None) -> str | None:
    return None if answer is None else answer.text


SFT_CASES = [
    # (name, domain, answers, allowed sources, expected text, expected reason)
    (
        "highest reward over all sources",
        "instruction",
        [a("x", 0, 0.3), a("y", 0, 0.9), a("x", 1, 0.5)],
        None,
        "y#0",
        None,
    ),
    (
        "tie -> source name order",
        "instruction",
        [a("z", 0, 0.7), a("b", 3, 0.7), a("m", 0, 0.7)],
        None,
        "b#3",
        None,
    ),
    (
        "tie within a source -> lower sample index",
        "instruction",
        [a("x", 4, 0.7), a("x", 2, 0.7)],
        None,
        "x#2",
        None,
    ),
    (
        "custom domain behaves like instruction",
        "roleplay",
        [a("x", 0, 0.1), a("y", 0, 0.2)],
        None,
        "y#0",
        None,
    ),
    (
        "math: best correct, not best overall",
        "math",
        [a("x", 0, 0.9, False), a("x", 1, 0.4, True), a("y", 0, 0.6, True)],
        None,
        "y#0",
        None,
    ),
    (
        "math: no correct answer",
        "math",
        [a("x", 0, 0.9, False), a("y", 0, 0.4, False)],
        None,
        None,
        NO_CORRECT,
    ),
    (
        "math without gold labels falls back to reward",
        "math",
        [a("x", 0, 0.2), a("y", 0, 0.3)],
        None,
        "y#0",
        None,
    ),
    (
        "code: passing answer with highest reward",
        "code",
        [a("x", 0, 0.95, False), a("x", 1, 0.5, True), a("y", 0, 0.7, True)],
        None,
        "y#0",
        None,
    ),
    (
        "code: all tests fail -> excluded",
        "code",
        [a("x", 0, 0.9, False), a("y", 0, 0.1, False)],
        None,
        None,
        ALL_FAILED,
    ),
    (
        "chinese: only the dataset's sources",
        "chinese",
        [a("qwen", 0, 0.5), a("gemma", 0, 0.9)],
        {"qwen"},
        "qwen#0",
        None,
    ),
    (
        "chinese: none of the named sources answered",
        "chinese",
        [a("gemma", 0, 0.9)],
        {"qwen"},
        None,
        NO_ANSWERS,
    ),
    ("no answers", "instruction", [], None, None, NO_ANSWERS),
]


@pytest.mark.parametrize(
    ("name", "domain", "answers", "sources", "text", "reason"), SFT_CASES, ids=[c[0] for c in SFT_CASES]
)
def test_sft_rule(name, domain, answers, sources, text, reason) -> None:
    best, why = pick_sft(domain, answers, sources)
    assert (ids(best), why) == (text, reason)


PAIR_CASES = [
    # (name, domain, answers, (chosen, rejected) or None, reason)
    (
        "best vs worst within one source",
        "instruction",
        [a("x", 0, 0.50), a("x", 1, 0.55), a("x", 2, 0.46)],
        ("x#1", "x#2"),
        None,
    ),
    (
        "never across sources",
        "instruction",
        [a("x", 0, 0.90), a("y", 0, 0.85), a("x", 1, 0.88), a("y", 1, 0.50)],
        ("x#0", "x#1"),
        None,
    ),
    (
        "margin just inside the minimum",
        "instruction",
        [a("x", 0, 0.51), a("x", 1, 0.50)],
        ("x#0", "x#1"),
        None,
    ),
    ("margin just below the minimum", "instruction", [a("x", 0, 0.509), a("x", 1, 0.50)], None, MARGIN),
    ("margin exactly the maximum", "instruction", [a("x", 0, 0.6), a("x", 1, 0.5)], ("x#0", "x#1"), None),
    ("margin just above the maximum", "instruction", [a("x", 0, 0.6001), a("x", 1, 0.5)], None, MARGIN),
    ("all answers equal", "instruction", [a("x", 0, 0.5), a("x", 1, 0.5), a("x", 2, 0.5)], None, MARGIN),
    ("a source with one answer", "instruction", [a("x", 0, 0.9), a("y", 0, 0.85)], None, SINGLE),
    (
        "one-answer source skipped, other qualifies",
        "instruction",
        [a("x", 0, 0.9), a("y", 0, 0.85), a("y", 1, 0.80)],
        ("y#0", "y#1"),
        None,
    ),
    (
        "largest gap inside the range wins",
        "instruction",
        [a("x", 0, 0.60), a("x", 1, 0.58), a("y", 0, 0.70), a("y", 1, 0.62), a("z", 0, 0.9), a("z", 1, 0.1)],
        ("y#0", "y#1"),
        None,
    ),
    (
        "equal gaps -> source name order",
        "instruction",
        [a("m", 0, 0.75), a("m", 1, 0.70), a("c", 0, 0.35), a("c", 1, 0.30)],
        ("c#0", "c#1"),
        None,
    ),
    (
        "reward ties inside a source",
        "instruction",
        [a("x", 0, 0.6), a("x", 1, 0.6), a("x", 2, 0.55), a("x", 3, 0.55)],
        ("x#0", "x#3"),
        None,
    ),
    (
        "math: correct best vs incorrect worst",
        "math",
        [a("x", 0, 0.60, True), a("x", 1, 0.62, False), a("x", 2, 0.55, False), a("x", 3, 0.58, True)],
        ("x#0", "x#2"),
        None,
    ),
    ("math: no correct answer", "math", [a("x", 0, 0.6, False), a("x", 1, 0.5, False)], None, NO_CORRECT),
    ("math: no incorrect answer", "math", [a("x", 0, 0.6, True), a("x", 1, 0.55, True)], None, NO_INCORRECT),
    (
        "math: correct answer scored lower than the wrong one",
        "math",
        [a("x", 0, 0.4, True), a("x", 1, 0.45, False)],
        None,
        MARGIN,
    ),
    (
        "code: passing vs failing",
        "code",
        [a("x", 0, 0.7, True), a("x", 1, 0.65, False), a("x", 2, 0.66, False)],
        ("x#0", "x#1"),
        None,
    ),
    ("code: all tests fail", "code", [a("x", 0, 0.7, False), a("x", 1, 0.65, False)], None, ALL_FAILED),
    (
        "code: correct only in another source",
        "code",
        [a("x", 0, 0.7, True), a("y", 0, 0.6, False), a("y", 1, 0.55, False)],
        None,
        SINGLE,
    ),
    ("no answers", "instruction", [], None, NO_ANSWERS),
]


@pytest.mark.parametrize(
    ("name", "domain", "answers", "expected", "reason"), PAIR_CASES, ids=[c[0] for c in PAIR_CASES]
)
def test_pair_rule(name, domain, answers, expected, reason) -> None:
    pair, why = pick_pair(domain, answers, MARGIN_RANGE)
    assert why == reason
    assert (None if pair is None else (pair.chosen.text, pair.rejected.text)) == expected
    if pair is not None:
        assert pair.chosen.source == pair.rejected.source
        assert MARGIN_RANGE[0] - 1e-9 <= pair.gap <= MARGIN_RANGE[1] + 1e-9


def test_pair_rule_respects_a_configured_margin() -> None:
    answers = [a("x", 0, 0.9), a("x", 1, 0.4)]
    assert pick_pair("instruction", answers, MARGIN_RANGE)[1] == MARGIN
    pair, _ = pick_pair("instruction", answers, (0.1, 1.0))
    assert pair is not None and pair.gap == pytest.approx(0.5)


WRPO_CASES = [
    # (name, domain, source answers, target answers, (y_ws, y_wt, y_l) or None, reason)
    (
        "best source, best and worst target",
        "instruction",
        [a("x", 0, 0.8), a("y", 0, 0.9)],
        [a("target", 0, 0.5), a("target", 1, 0.7), a("target", 2, 0.2)],
        ("y#0", "target#1", "target#2"),
        None,
    ),
    (
        "target answers all equal",
        "instruction",
        [a("x", 0, 0.8)],
        [a("target", 0, 0.5), a("target", 1, 0.5)],
        None,
        EQUAL,
    ),
    ("a single target answer", "instruction", [a("x", 0, 0.8)], [a("target", 0, 0.5)], None, SINGLE),
    ("no source answers", "instruction", [], [a("target", 0, 0.5), a("target", 1, 0.4)], None, NO_ANSWERS),
    (
        "math: correct source, correct vs incorrect target",
        "math",
        [a("x", 0, 0.9, False), a("y", 0, 0.7, True)],
        [a("target", 0, 0.8, False), a("target", 1, 0.6, True), a("target", 2, 0.3, False)],
        ("y#0", "target#1", "target#2"),
        None,
    ),
    (
        "math: no correct source answer",
        "math",
        [a("x", 0, 0.9, False)],
        [a("target", 0, 0.6, True), a("target", 1, 0.3, False)],
        None,
        NO_CORRECT,
    ),
    (
        "code: target all fail",
        "code",
        [a("x", 0, 0.9, True)],
        [a("target", 0, 0.6, False), a("target", 1, 0.3, False)],
        None,
        ALL_FAILED,
    ),
]


@pytest.mark.parametrize(
    ("name", "domain", "sources", "target", "expected", "reason"), WRPO_CASES, ids=[c[0] for c in WRPO_CASES]
)
def test_wrpo_rule(name, domain, sources, target, expected, reason) -> None:
    quad, why = pick_wrpo(domain, sources, target)
    assert why == reason
    got = None if quad is None else (quad.source_best.text, quad.target_best.text, quad.target_worst.text)
    assert got == expected
