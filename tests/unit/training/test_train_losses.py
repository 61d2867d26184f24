"""WRPO loss, DPO loss and the alpha schedule against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from kubefusion_trainer.training.losses import alpha_at, dpo_loss, wrpo_loss

SOURCE = torch.tensor([-1.0, 0.5, 2.0])
TARGET = torch.tensor([0.3, -0.2, 1.0])
REJECTED = torch.tensor([-0.4, 0.1, 3.0])


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_wrpo_loss_matches_hand_computation() -> None:
    beta, alpha = 0.5, 0.25
    out = wrpo_loss(SOURCE, TARGET, REJECTED, beta=beta, alpha=alpha)
    for i in range(3):
        chosen = alpha * SOURCE[i].item() + (1 - alpha) * TARGET[i].item()
        expected = -_logsigmoid(beta * (chosen - REJECTED[i].item()))
        assert out.losses[i].item() == pytest.approx(expected, rel=1e-6)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * chosen, rel=1e-6)
    # the first example: 0.25*-1 + 0.75*0.3 = -0.025; margin vs -0.4 is 0.375; loss = -log sigmoid(0.1875)
    assert out.losses[0].item() == pytest.approx(0.60379, abs=1e-5)
    assert out.source_chosen_rewards.tolist() == pytest.approx((beta * SOURCE).tolist())
    assert out.target_chosen_rewards.tolist() == pytest.approx((beta * TARGET).tolist())
    assert out.rejected_rewards.tolist() == pytest.approx((beta * REJECTED).tolist())
    assert out.accuracies.tolist() == [1.0, 0.0, 0.0]
    assert out.margins.tolist() == pytest.approx((out.chosen_rewards - out.rejected_rewards).tolist())


@pytest.mark.parametrize(("alpha", "chosen"), [(0.0, TARGET), (1.0, SOURCE)])
def test_wrpo_at_alpha_extremes_is_dpo_on_one_chosen_answer(alpha: float, chosen: torch.Tensor) -> None:
    wrpo = wrpo_loss(SOURCE, TARGET, REJECTED, beta=0.7, alpha=alpha).losses
    dpo = dpo_loss(chosen, REJECTED, beta=0.7)
    assert torch.allclose(wrpo, dpo)


def test_wrpo_loss_has_gradients_for_all_three_answers() -> None:
    source, target, rejected = (t.clone().requires_grad_() for t in (SOURCE, TARGET, REJECTED))
    wrpo_loss(source, target, rejected, beta=1.0, alpha=0.3).losses.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (source, target, rejected))
    # d loss / d r(y_ws) = alpha * d loss / d chosen, d/d r(y_wt) = (1 - alpha) * d/d chosen
    assert torch.allclose(source.grad / target.grad, torch.full((3,), 0.3 / 0.7))


def test_dpo_sigmoid_norm_divides_by_answer_lengths() -> None:
    chosen, rejected = torch.tensor([4.0, -2.0]), torch.tensor([1.0, 3.0])
    lengths_c, lengths_r = torch.tensor([4, 2]), torch.tensor([2, 6])
    loss = dpo_loss(
        chosen,
        rejected,
        beta=10.0,
        loss_type="sigmoid_norm",
        chosen_lengths=lengths_c,
        rejected_lengths=lengths_r,
    )
    assert loss[0].item() == pytest.approx(-_logsigmoid(10.0 * (4 / 4 - 1 / 2)), rel=1e-6)
    assert loss[1].item() == pytest.approx(-_logsigmoid(10.0 * (-2 / 2 - 3 / 6)), rel=1e-6)
    assert not torch.allclose(loss, dpo_loss(chosen, rejected, beta=10.0))
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(chosen, rejected, beta=1.0, loss_type="sigmoid_norm")
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        dpo_loss(chosen, rejected, beta=1.0, loss_type="hinge")  # type: ignore[arg-type]


def test_linear_alpha_rises_from_zero_to_alpha() -> None:
    assert alpha_at(0, 100, 0.1) == 0.0
    assert alpha_at(50, 100, 0.1) == pytest.approx(0.05)
    assert alpha_at(100, 100, 0.1) == pytest.approx(0.1)
    assert alpha_at(250, 100, 0.1) == pytest.approx(0.1)  # never beyond alpha
    steps = [alpha_at(s, 40, 0.6) for s in range(41)]
    assert steps == sorted(steps)


def test_static_alpha_is_constant_and_bad_values_are_rejected() -> None:
    assert [alpha_at(s, 10, 0.4, "static") for s in (0, 5, 10)] == [0.4, 0.4, 0.4]
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        alpha_at(0, 10, 1.5)
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        alpha_at(0, 10, 0.1, "cosine")  # type: ignore[arg-type]
