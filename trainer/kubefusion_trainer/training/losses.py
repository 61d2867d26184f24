"""Preference losses and the WRPO alpha schedule: pure tensor functions, no trainer state.

Log-probabilities here are sums over an answer's tokens (log pi(y|x)); a "log-ratio" is
log pi(y|x) - log pi_ref(y|x), the implicit reward r(y) before the beta factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

AlphaSchedule = Literal["linear", "static"]


def alpha_at(step: int, total_steps: int, alpha: float, schedule: AlphaSchedule = "linear") -> float:
    """The weight of the source's chosen answer at optimizer step `step` of `total_steps`.

    static keeps `alpha`; linear rises from 0 at step 0 to `alpha` at the last step (the WRPO repo's
    default), so the model first learns from its own answers and shifts towards the sources' answers.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if schedule == "static":
        return alpha
    if schedule != "linear":
        raise ValueError(f"unknown alpha schedule {schedule!r} (expected linear or static)")
    if total_steps <= 0:
        return alpha
    return alpha * min(max(step, 0), total_steps) / total_steps


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: Literal["sigmoid", "sigmoid_norm"] = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO loss -log sigmoid(beta * (r_w - r_l)).

    sigmoid_norm (length-normalised DPO, FuseChat-3.0's choice for Llama) divides each log-ratio by its
    answer's token count first, so long answers are not favoured just for being long.
    """
    if loss_type == "sigmoid_norm":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("sigmoid_norm needs the chosen and rejected answer lengths")
        chosen_logratios = chosen_logratios / chosen_lengths.clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_lengths.clamp(min=1)
    elif loss_type != "sigmoid":
        raise ValueError(f"unknown DPO loss type {loss_type!r} (expected sigmoid or sigmoid_norm)")
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


@dataclass(frozen=True)
class WrpoOutput:
    """Per-example WRPO loss and the rewards the WRPO repo logs (all beta * log-ratio)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # the alpha-weighted blend of both chosen answers
    source_chosen_rewards: torch.Tensor
    target_chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float()


def wrpo_loss(
    source_chosen_logratios: torch.Tensor,
    target_chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    alpha: float,
) -> WrpoOutput:
    """-log sigmoid(beta * (alpha * r(y_ws) + (1 - alpha) * r(y_wt) - r(y_l))).

    y_ws is the best source answer, y_wt the best target answer, y_l the worst target answer.
    alpha = 0 is DPO on (y_wt, y_l); alpha = 1 is DPO on (y_ws, y_l).
    """
    chosen = alpha * source_chosen_logratios + (1.0 - alpha) * target_chosen_logratios
    losses = -F.logsigmoid(beta * (chosen - rejected_logratios))
    return WrpoOutput(
        losses=losses,
        chosen_rewards=(beta * chosen).detach(),
        source_chosen_rewards=(beta * source_chosen_logratios).detach(),
        target_chosen_rewards=(beta * target_chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )


def chosen_nll(logps: torch.Tensor, tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """WRPO's SFT term: the mean token NLL of the source's chosen answers (weight alpha) and of the target's
    (weight 1 - alpha), from the [y_ws; y_wt; y_l] batch's summed log-probs and answer token counts."""
    (source, target, _), (source_tokens, target_tokens, _) = logps.chunk(3), tokens.chunk(3)
    source_nll = -source.sum() / source_tokens.sum().clamp(min=1)
    target_nll = -target.sum() / target_tokens.sum().clamp(min=1)
    return alpha * source_nll + (1 - alpha) * target_nll
