"""The FuseChat-3.0 data rules, pure: which answer is an SFT target, which pair is a preference pair.

Domains: math and code judge correctness (when the scorer could: `correct` is not None); every other
domain (instruction, chinese, custom) uses the reward alone.

  SFT   the highest-reward answer over all sources (math/code: among correct answers only).
  DPO   per source: its highest-reward answer against its lowest-reward one (math/code: the best correct
        against the worst incorrect); the pair counts only if chosen.reward - rejected.reward lies in
        [margin.min, margin.max] (inclusive, with 1e-9 slack for float rounding). Among sources whose
        pair qualifies, the largest gap wins; equal gaps (to 9 decimals) -> the source name sorting first.
  WRPO  y_ws = the SFT pick over the source answers, y_wt / y_l = the target's best / worst answers
        (math/code: best correct / worst incorrect), kept when y_wt.reward > y_l.reward.
Ties between answers: higher reward first, then source name, then lower sample index (best) and higher
sample index (worst), so the choice is deterministic and chosen != rejected.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

CORRECTNESS_DOMAINS = ("math", "code")
SLACK = 1e-9

# Why a prompt gives no SFT row / pair (the keys of the stats' "dropped").
NO_ANSWERS = "no answers"
NO_CORRECT = "no correct answer"
ALL_FAILED = "all tests failed"
NO_INCORRECT = "no incorrect answer"
SINGLE = "single answer"
MARGIN = "margin out of range"
EQUAL = "equal rewards"
# When sources fail for different reasons, the prompt is counted under the first of these that applies.
REASON_PRIORITY = (MARGIN, EQUAL, NO_INCORRECT, SINGLE, NO_CORRECT, ALL_FAILED, NO_ANSWERS)


class Answer(NamedTuple):  # a tuple: millions are made per build
    source: str
    sample_index: int
    text: str
    reward: float
    correct: bool | None = None
    ref: Any = None  # opaque: where the I/O layer finds the full record


@dataclass(frozen=True)
class Pair:
    chosen: Answer
    rejected: Answer

    @property
    def gap(self) -> float:
        return self.chosen.reward - self.rejected.reward


@dataclass(frozen=True)
class Quadruple:
    source_best: Answer  # y_ws
    target_best: Answer  # y_wt
    target_worst: Answer  # y_l


def _best_key(a: Answer) -> tuple:
    return (-a.reward, a.source, a.sample_index)


def _worst_key(a: Answer) -> tuple:
    return (a.reward, a.source, -a.sample_index)


def judges_correctness(domain: str, answers: list[Answer]) -> bool:
    return domain in CORRECTNESS_DOMAINS and any(a.correct is not None for a in answers)


def _no_correct(domain: str) -> str:
    return ALL_FAILED if domain == "code" else NO_CORRECT


def pick_sft(
    domain: str, answers: list[Answer], sources: set[str] | None = None
) -> tuple[Answer | None, str | None]:
    """(best answer, None) or (None, drop reason). `sources` limits which sources may supply it."""
    pool = [a for a in answers if sources is None or a.source in sources]
    if not pool:
        return None, NO_ANSWERS
    if judges_correctness(domain, pool):
        pool = [a for a in pool if a.correct]
        if not pool:
            return None, _no_correct(domain)
    return min(pool, key=_best_key), None


def _extremes(group: list[Answer], judged: bool, no_good: str) -> tuple[Pair | None, str | None]:
    if len(group) < 2:
        return None, SINGLE
    if judged:
        good = [a for a in group if a.correct]
        bad = [a for a in group if a.correct is False]
        if not good:
            return None, no_good
        if not bad:
            return None, NO_INCORRECT
        return Pair(min(good, key=_best_key), min(bad, key=_worst_key)), None
    return Pair(min(group, key=_best_key), min(group, key=_worst_key)), None


def in_margin(gap: float, margin: tuple[float, float]) -> bool:
    return margin[0] - SLACK <= gap <= margin[1] + SLACK


def pick_pair(
    domain: str, answers: list[Answer], margin: tuple[float, float]
) -> tuple[Pair | None, str | None]:
    """(pair, None) or (None, drop reason): best vs worst from one source, gap within margin."""
    if not answers:
        return None, NO_ANSWERS
    judged = judges_correctness(domain, answers)
    if judged and not any(a.correct for a in answers):
        return None, _no_correct(domain)
    by_source: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_source[answer.source].append(answer)
    qualifying: list[tuple[float, str, Pair]] = []
    reasons = set()
    for source in sorted(by_source):
        pair, reason = _extremes(by_source[source], judged, NO_CORRECT)  # this source had none
        if pair is None:
            reasons.add(reason)
        elif in_margin(pair.gap, margin):
            qualifying.append((pair.gap, source, pair))
        else:
            reasons.add(MARGIN)
    if qualifying:
        # Gaps equal up to float rounding count as ties (0.75 - 0.70 vs 0.35 - 0.30).
        return min(qualifying, key=lambda q: (-round(q[0], 9), q[1]))[2], None
    return None, next(r for r in REASON_PRIORITY if r in reasons)


def pick_wrpo(
    domain: str, source_answers: list[Answer], target_answers: list[Answer]
) -> tuple[Quadruple | None, str | None]:
    """(quadruple, None) or (None, drop reason) for one preference prompt."""
    source_best, reason = pick_sft(domain, source_answers)
    if source_best is None:
        return None, reason
    pair, reason = _extremes(target_answers, judges_correctness(domain, target_answers), _no_correct(domain))
    if pair is None:
        return None, reason
    if pair.gap <= 0:
        return None, EQUAL
    return Quadruple(source_best, pair.chosen, pair.rejected), None
