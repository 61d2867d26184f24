"""SFT replay in the preference stages: SFT rows that DPO or WRPO also learns from, through its SFT term only.

A preference stage trains on the prompts that gave pairs; a skill without pairs (the quickstart's addition)
drifts while it moves the shared weights. A replay row's chosen and rejected answers are the same SFT answer,
so chosen and rejected log-ratios are equal for every parameter value: the preference term is log 2 with zero
gradient, and the SFT term (sftLossWeight) keeps the answer likely.
"""

from __future__ import annotations

import random
from typing import Any

from kubefusion_trainer.layout import DataKind


def replay_count(available: int, fraction: float) -> int:
    """How many of `available` SFT rows a fraction replays (at least one when the fraction is above 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"sftReplayFraction must lie in [0, 1], got {fraction}")
    if fraction == 0.0 or available == 0:
        return 0
    return max(1, round(fraction * available))


def replay_rows(sft_rows: list[dict[str, Any]], kind: DataKind, fraction: float, seed: int) -> list[dict]:
    """Preference rows (kind dpo or wrpo) for a seeded draw of `fraction` of the SFT rows, in their order.

    The prompt is every message before the last assistant turn; that turn is both answers (WRPO: both
    chosen answers and the rejected one).
    """
    if kind not in ("dpo", "wrpo"):
        raise ValueError(f"replay rows are for the preference stages (dpo, wrpo), not {kind!r}")
    picked = sorted(random.Random(seed).sample(range(len(sft_rows)), replay_count(len(sft_rows), fraction)))
    rows = []
    for index in picked:
        messages = sft_rows[index]["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last == 0:
            raise ValueError(f"SFT row {index} has no prompt before its answer: it cannot be replayed")
        answer = [messages[last]]
        chosen: list[Any] = [answer, answer] if kind == "wrpo" else answer
        rows.append({"prompt": messages[:last], "chosen": chosen, "rejected": answer})
    return rows
