"""`kubefusion stage train` on bad input: a clear message naming the problem, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_toys import hyperparameters, install_sft_model, write_run_config, write_toy_data

from kubefusion_trainer.config import load_run_config
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.tiny import CHAT_TEMPLATE
from kubefusion_trainer.training.cli import main
from kubefusion_trainer.training.runner import prepare_stage

pytestmark = pytest.mark.integration


def _nothing_written(storage: Path, stage: str) -> None:
    layout = RunLayout(storage)
    assert not layout.stage_record(f"train-{stage}").exists()
    assert not layout.final_model(stage).exists()
    assert not layout.checkpoints_dir(stage).exists()


def _run(config: Path, stage: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--config", str(config), "--stage", stage])
    return code, capsys.readouterr().err


def test_broken_row_is_named_and_nothing_is_written(
    tiny_world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "store"
    write_toy_data(storage, count=4, kinds=("sft",))
    data = RunLayout(storage).dataset_file("sft", "toy")
    with data.open("a") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, {"sft": hyperparameters()})
    code, err = _run(config, "sft", capsys)
    assert code == 1
    assert f"{data}:5" in err and "no assistant turn" in err
    _nothing_written(storage, "sft")


def test_indivisible_global_batch(
    tiny_world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "store"
    write_toy_data(storage, count=4, kinds=("sft",))
    training = {"sft": hyperparameters(globalBatchSize=10, microBatchSize=4)}
    code, err = _run(write_run_config(tmp_path / "run.yaml", storage, tiny_world, training), "sft", capsys)
    assert code == 1 and "globalBatchSize 10 is not divisible by world size 1 x microBatchSize = 4" in err
    _nothing_written(storage, "sft")


def test_preference_stage_needs_the_sft_model(
    tiny_world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "store"
    write_toy_data(storage, count=4, kinds=("dpo",))
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, {"dpo": hyperparameters(beta=0.1)})
    code, err = _run(config, "dpo", capsys)
    assert code == 1 and "train/sft/final" in err and "train sft first" in err
    _nothing_written(storage, "dpo")


def test_stage_missing_from_the_spec_and_malformed_config(
    tiny_world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "store"
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, {"sft": hyperparameters()})
    code, err = _run(config, "dpo", capsys)
    assert code == 1 and "spec.training.dpo is not set" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("learningRate", "learningRat"))
    code, err = _run(bad, "sft", capsys)
    assert code == 1 and "learningRat" in err
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--stage", "ppo"])


def test_spec_chat_template_replaces_the_tokenizers(tiny_world: dict[str, Path], tmp_path: Path) -> None:
    storage = tmp_path / "store"
    write_toy_data(storage, count=4, kinds=("wrpo",))
    install_sft_model(storage, tiny_world)
    config = write_run_config(
        tmp_path / "run.yaml", storage, tiny_world, {"wrpo": hyperparameters(alpha=0.1)}
    )
    run = load_run_config(str(config))
    run.spec.target.chat_template = "{# custom #}" + CHAT_TEMPLATE
    ctx = prepare_stage(run, "wrpo", on_gpu=False)
    assert ctx.tokenizer.chat_template.startswith("{# custom #}")
    assert ctx.model_path == RunLayout(storage).final_model("sft")
    assert ctx.args["gradient_accumulation_steps"] == 2 and ctx.args["use_cpu"] is True
    assert "deepspeed" not in ctx.args and len(ctx.dataset) == 4
