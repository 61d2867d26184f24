"""Real SFT, DPO and WRPO runs on the tiny model: losses fall, pair rankings become right, outputs load."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from train_toys import (
    LogRecorder,
    hyperparameters,
    one_torch_thread,
    pair_accuracy,
    toy_rows,
    write_run_config,
    write_toy_data,
)

from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.training.cli import train

pytestmark = pytest.mark.integration
__all__ = ["one_torch_thread"]  # the module-wide fixture, used by pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MetricsScraper(LogRecorder):
    """Reads the stage's Prometheus endpoint while the trainer is still up."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.text = ""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text


def _metric(text: str, name: str, stage: str) -> float:
    prefix = f'{name}{{stage="{stage}"}} '
    [line] = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(line[len(prefix) :])


@pytest.fixture(scope="module")
def trained_sft(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train-stages")
    storage = root / "store"
    write_toy_data(storage)
    training = {
        "sft": hyperparameters(epochs=3, learningRate=1e-2),
        "dpo": hyperparameters(learningRate=5e-4, beta=10.0, lossType="sigmoid_norm"),
        "wrpo": hyperparameters(learningRate=5e-4, beta=0.5, alpha=0.5, alphaSchedule="linear"),
    }
    config = write_run_config(root / "run.yaml", storage, tiny_world, training)
    port = _free_port()
    scraper = MetricsScraper(port)
    record = train(str(config), "sft", metrics_port=port, callbacks=[scraper])
    return {"config": config, "storage": storage, "record": record, "logs": scraper, "world": tiny_world}


def test_sft_loss_falls_and_the_model_loads_back(trained_sft: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    losses = trained_sft["logs"].series("loss")
    assert len(losses) == 12  # 32 rows / global batch 8 x 3 epochs, logged every step
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    layout = RunLayout(trained_sft["storage"])
    final = layout.final_model("sft")
    model = AutoModelForCausalLM.from_pretrained(str(final))
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    assert "{% generation %}" in tokenizer.chat_template
    assert model.config.num_hidden_layers == 2
    record = json.loads(layout.stage_record("train-sft").read_text())
    assert record["global_step"] == 12 and record["gradient_accumulation_steps"] == 2
    assert record["world_size"] == 1 and record["resumed_from_step"] is None
    assert not layout.deepspeed_config("sft").exists()  # zeroStage 0: no DeepSpeed


def test_sft_trains_on_assistant_tokens_only(trained_sft: dict[str, Any]) -> None:
    """The answer's likelihood rises much more than the prompt's: prompts carry no loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trained_sft["world"]["model"]))
    before = AutoModelForCausalLM.from_pretrained(str(trained_sft["world"]["model"]))
    after = AutoModelForCausalLM.from_pretrained(str(RunLayout(trained_sft["storage"]).final_model("sft")))
    row = toy_rows("sft", 1)[0]["messages"]
    ids = torch.tensor([tokenizer.apply_chat_template(row, tokenize=True, return_dict=True)["input_ids"]])
    prompt_len = len(
        tokenizer.apply_chat_template(row[:1], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )

    def gains(model: Any) -> torch.Tensor:
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[
                :, 0
            ]
        return logps

    delta = gains(after) - gains(before)
    prompt_gain = delta[: prompt_len - 1].mean().item()
    answer_gain = delta[prompt_len - 1 :].mean().item()
    assert answer_gain > 1.0
    assert answer_gain > 3 * max(prompt_gain, 0.1)


def test_sft_serves_progress_metrics(trained_sft: dict[str, Any]) -> None:
    text = trained_sft["logs"].text
    assert _metric(text, "kubefusion_progress_done", "train-sft") == 12
    assert _metric(text, "kubefusion_progress_total", "train-sft") == 12
    assert _metric(text, "kubefusion_train_loss", "train-sft") == pytest.approx(
        trained_sft["logs"].series("loss")[-1]
    )
    assert _metric(text, "kubefusion_train_learning_rate", "train-sft") >= 0


def _preference_run(trained_sft: dict[str, Any], stage: str) -> tuple[LogRecorder, dict[str, Any]]:
    recorder = LogRecorder()
    record = train(str(trained_sft["config"]), stage, callbacks=[recorder])
    return recorder, record


@pytest.mark.parametrize("stage", ["dpo", "wrpo"])
def test_preference_training_learns_the_toy_preferences(trained_sft: dict[str, Any], stage: str) -> None:
    recorder, record = _preference_run(trained_sft, stage)
    layout = RunLayout(trained_sft["storage"])
    losses = recorder.series("loss")
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step one: log 2
    assert losses[-1] < 0.6 * losses[0]
    accuracies = recorder.series("rewards/accuracies")
    assert accuracies[0] == 0.0 and accuracies[-1] == 1.0
    # the trained model (not just the logs) ranks the pairs right against its reference, the SFT model
    final = layout.final_model(stage)
    assert pair_accuracy(final, layout.final_model("sft"), toy_rows(stage, 32)) >= 0.9
    assert record["stage"] == f"train-{stage}" and record["global_step"] == 8
    if stage == "wrpo":
        alphas = recorder.series("alpha")
        assert alphas[0] == 0.0 and alphas == sorted(alphas) and 0.4 < alphas[-1] <= 0.5
        for key in ("rewards/chosen_source", "rewards/chosen_target", "rewards/rejected", "rewards/margins"):
            assert len(recorder.series(key)) == len(losses)
    # a second run of a finished stage does nothing
    again = train(str(trained_sft["config"]), stage)
    assert again["skipped"] is True and again["global_step"] == record["global_step"]


def test_sft_packing_packs_conversations_and_trains(tiny_world: dict[str, Path], tmp_path: Path) -> None:
    from kubefusion_trainer.config import load_run_config
    from kubefusion_trainer.training.runner import prepare_stage
    from kubefusion_trainer.training.sft import build_sft_trainer

    storage = tmp_path / "store"
    write_toy_data(storage, count=48, kinds=("sft",))
    training = {"sft": hyperparameters(packing=True, learningRate=1e-2, globalBatchSize=4, microBatchSize=2)}
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, training)
    trainer = build_sft_trainer(prepare_stage(load_run_config(str(config)), "sft", on_gpu=False))
    packed = trainer.train_dataset
    assert len(packed) < 48 / 2 and "seq_lengths" in packed.column_names  # several conversations per sequence
    assert max(len(ids) for ids in packed["input_ids"]) <= 64
    recorder = LogRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    losses = recorder.series("loss")
    assert len(losses) >= 4 and losses[-1] < 0.9 * losses[0]
