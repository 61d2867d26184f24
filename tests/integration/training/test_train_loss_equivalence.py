"""The trainers' losses on one real batch: trl's DPO, length-normalised DPO and our WRPO subclass,
against hand computations from plain forward passes, WRPO at alpha 0 / 1 against trl's DPO, and
replayed SFT rows (sftReplayFraction) learned through the SFT term alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from train_toys import (
    answer_logps,
    hyperparameters,
    install_sft_model,
    one_torch_thread,
    toy_rows,
    write_run_config,
    write_toy_data,
)

from kubefusion_trainer.config import load_run_config
from kubefusion_trainer.training.dpo import build_dpo_trainer
from kubefusion_trainer.training.losses import dpo_loss, wrpo_loss
from kubefusion_trainer.training.runner import prepare_stage
from kubefusion_trainer.training.wrpo import build_wrpo_trainer

pytestmark = pytest.mark.integration
__all__ = ["one_torch_thread"]  # the module-wide fixture, used by pytest
ROWS = 4


@pytest.fixture(scope="module")
def setup(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train-loss")
    storage = root / "store"
    write_toy_data(storage, count=ROWS)  # sft rows too: the replay tests replay them
    sft = install_sft_model(storage, tiny_world)
    return {"root": root, "storage": storage, "world": tiny_world, "sft": sft}


def _trainer(setup: dict[str, Any], stage: str, **overrides: Any) -> Any:
    training = {stage: hyperparameters(globalBatchSize=ROWS, microBatchSize=ROWS, **overrides)}
    config = write_run_config(setup["root"] / f"{stage}.yaml", setup["storage"], setup["world"], training)
    ctx = prepare_stage(load_run_config(str(config)), stage, on_gpu=False)  # type: ignore[arg-type]
    trainer = (build_dpo_trainer if stage == "dpo" else build_wrpo_trainer)(ctx)
    # Move the policy away from its reference (a fresh copy of the SFT model) so the log-ratios are not zero.
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    trainer.model.train()
    return trainer


def _loss(trainer: Any, dataset: Any = None) -> float:
    dataset = trainer.train_dataset if dataset is None else dataset
    batch = trainer.data_collator([dataset[i] for i in range(ROWS)])
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


def _log_ratios(
    setup: dict[str, Any], policy: Any, rows: list[dict], answers: list[list[dict]]
) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["sft"]))
    ref = AutoModelForCausalLM.from_pretrained(str(setup["sft"])).eval()
    policy.eval()
    values = [
        answer_logps(policy, tokenizer, row["prompt"], answer)
        - answer_logps(ref, tokenizer, row["prompt"], answer)
        for row, answer in zip(rows, answers, strict=True)
    ]
    policy.train()
    return torch.tensor(values)


def _answer_tokens(setup: dict[str, Any], rows: list[dict], answers: list[list[dict]]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["sft"]))
    lengths = []
    for row, answer in zip(rows, answers, strict=True):
        prompt = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        lengths.append(len(full) - len(prompt))
    return torch.tensor(lengths, dtype=torch.float32)


def test_trl_dpo_sigmoid_matches_our_dpo_loss(setup: dict[str, Any]) -> None:
    trainer = _trainer(setup, "dpo", beta=0.3, lossType="sigmoid")
    rows = toy_rows("dpo", ROWS)
    chosen = _log_ratios(setup, trainer.model, rows, [r["chosen"] for r in rows])
    rejected = _log_ratios(setup, trainer.model, rows, [r["rejected"] for r in rows])
    assert chosen.abs().max() > 0.1  # the perturbation really moved the policy
    expected = dpo_loss(chosen, rejected, beta=0.3).mean().item()
    assert _loss(trainer) == pytest.approx(expected, rel=1e-4)


def test_sigmoid_norm_divides_by_answer_lengths(setup: dict[str, Any]) -> None:
    trainer = _trainer(setup, "dpo", beta=10.0, lossType="sigmoid_norm")
    rows = toy_rows("dpo", ROWS)
    chosen_answers, rejected_answers = [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    chosen = _log_ratios(setup, trainer.model, rows, chosen_answers)
    rejected = _log_ratios(setup, trainer.model, rows, rejected_answers)
    lengths_c = _answer_tokens(setup, rows, chosen_answers)
    lengths_r = _answer_tokens(setup, rows, rejected_answers)
    assert not torch.equal(lengths_c, lengths_r)
    normalised = dpo_loss(chosen, rejected, 10.0, "sigmoid_norm", lengths_c, lengths_r).mean().item()
    plain = dpo_loss(chosen, rejected, 10.0).mean().item()
    loss = _loss(trainer)
    assert loss == pytest.approx(normalised, rel=1e-4)
    assert abs(loss - plain) > 1e-2


def test_wrpo_matches_a_hand_computation(setup: dict[str, Any]) -> None:
    trainer = _trainer(setup, "wrpo", beta=0.4, alpha=0.3, alphaSchedule="static")
    rows = toy_rows("wrpo", ROWS)
    source = _log_ratios(setup, trainer.model, rows, [r["chosen"][0] for r in rows])
    target = _log_ratios(setup, trainer.model, rows, [r["chosen"][1] for r in rows])
    rejected = _log_ratios(setup, trainer.model, rows, [r["rejected"] for r in rows])
    expected = wrpo_loss(source, target, rejected, beta=0.4, alpha=0.3).losses.mean().item()
    assert _loss(trainer) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("alpha", "chosen_index"), [(0.0, 1), (1.0, 0)])
def test_wrpo_at_alpha_extremes_equals_trl_dpo(
    setup: dict[str, Any], alpha: float, chosen_index: int
) -> None:
    """alpha 0: DPO on (target's best, rejected); alpha 1: DPO on (source's best, rejected)."""
    from datasets import Dataset

    wrpo = _trainer(setup, "wrpo", beta=0.4, alpha=alpha, alphaSchedule="static")
    dpo = _trainer(setup, "dpo", beta=0.4, lossType="sigmoid")  # same seed: the same perturbed policy
    pairs = Dataset.from_list(
        [
            {"prompt": r["prompt"], "chosen": r["chosen"][chosen_index], "rejected": r["rejected"]}
            for r in toy_rows("wrpo", ROWS)
        ]
    )
    dpo_pairs = dpo._prepare_dataset(pairs, dpo.processing_class, dpo.args, "pairs")
    assert _loss(wrpo) == pytest.approx(_loss(dpo, dpo_pairs), rel=1e-5)


def test_precomputed_reference_gives_the_same_loss(setup: dict[str, Any]) -> None:
    live = _trainer(setup, "dpo", beta=0.3)
    precomputed = _trainer(setup, "dpo", beta=0.3, precomputeRefLogProbs=True)
    assert precomputed.ref_model is None and "ref_chosen_logps" in precomputed.train_dataset.column_names
    assert _loss(precomputed) == pytest.approx(_loss(live), rel=1e-5)


def _mean_nll(
    setup: dict[str, Any], policy: Any, rows: list[dict], answers: list[list[dict]]
) -> torch.Tensor:
    """The answers' mean token negative log-likelihood under the policy, over all rows' tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["sft"]))
    policy.eval()
    total = sum(
        answer_logps(policy, tokenizer, row["prompt"], answer)
        for row, answer in zip(rows, answers, strict=True)
    )
    policy.train()
    return -torch.tensor(float(total)) / _answer_tokens(setup, rows, answers).sum()


def test_dpo_sft_term_adds_the_chosen_answers_mean_nll(setup: dict[str, Any]) -> None:
    trainer = _trainer(setup, "dpo", beta=0.3, lossType="sigmoid", sftLossWeight=0.5)
    rows = toy_rows("dpo", ROWS)
    chosen_answers = [r["chosen"] for r in rows]
    chosen = _log_ratios(setup, trainer.model, rows, chosen_answers)
    rejected = _log_ratios(setup, trainer.model, rows, [r["rejected"] for r in rows])
    nll = _mean_nll(setup, trainer.model, rows, chosen_answers).item()
    assert nll > 0.1
    expected = dpo_loss(chosen, rejected, beta=0.3).mean().item() + 0.5 * nll
    assert _loss(trainer) == pytest.approx(expected, rel=1e-4)


def test_wrpo_sft_term_weights_the_two_chosen_answers_by_alpha(setup: dict[str, Any]) -> None:
    trainer = _trainer(setup, "wrpo", beta=0.4, alpha=0.3, alphaSchedule="static", sftLossWeight=2.0)
    rows = toy_rows("wrpo", ROWS)
    sources, targets = [r["chosen"][0] for r in rows], [r["chosen"][1] for r in rows]
    source = _log_ratios(setup, trainer.model, rows, sources)
    target = _log_ratios(setup, trainer.model, rows, targets)
    rejected = _log_ratios(setup, trainer.model, rows, [r["rejected"] for r in rows])
    nll = 0.3 * _mean_nll(setup, trainer.model, rows, sources) + 0.7 * _mean_nll(
        setup, trainer.model, rows, targets
    )
    expected = wrpo_loss(source, target, rejected, beta=0.4, alpha=0.3).losses.mean() + 2.0 * nll
    assert _loss(trainer) == pytest.approx(expected.item(), rel=1e-4)


def _replay_batch_loss_and_gradient(trainer: Any) -> tuple[float, torch.Tensor]:
    """Loss and flattened gradient on the replayed rows, which follow the stage's own rows."""
    replayed = [trainer.train_dataset[i] for i in range(ROWS, 2 * ROWS)]
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(replayed))
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    trainer.model.zero_grad()
    return loss.item(), gradient


@pytest.mark.parametrize("stage", ["dpo", "wrpo"])
def test_replayed_sft_rows_learn_through_the_sft_term_alone(setup: dict[str, Any], stage: str) -> None:
    """A replay row's preference term is log 2 whatever the policy, so its gradient is the SFT term's:
    the same at beta 0.3 and beta 3 (a preference gradient would scale with beta)."""
    extra = {"alpha": 0.3, "alphaSchedule": "static"} if stage == "wrpo" else {}
    trainers = [
        _trainer(setup, stage, beta=beta, sftLossWeight=0.5, sftReplayFraction=1.0, **extra)
        for beta in (0.3, 3.0)
    ]
    assert len(trainers[0].train_dataset) == 2 * ROWS  # the stage's rows, then one replay row per SFT row
    sft_rows = toy_rows("sft", ROWS)
    prompts = [{"prompt": r["messages"][:-1]} for r in sft_rows]
    nll = _mean_nll(setup, trainers[0].model, prompts, [[r["messages"][-1]] for r in sft_rows]).item()
    assert nll > 0.1
    (loss_low, gradient_low), (loss_high, gradient_high) = map(_replay_batch_loss_and_gradient, trainers)
    assert loss_low == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-4)
    assert loss_high == pytest.approx(loss_low, rel=1e-5)
    assert gradient_low.norm() > 1e-3  # the SFT term does move the policy
    torch.testing.assert_close(gradient_high, gradient_low, rtol=1e-4, atol=1e-6)
