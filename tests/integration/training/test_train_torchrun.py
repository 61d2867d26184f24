"""Two processes under torchrun on CPU with DeepSpeed ZeRO-3 over gloo: SFT, then WRPO from its output."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_toys import hyperparameters, one_torch_thread, write_run_config, write_toy_data

from conftest import subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.training.checkpoints import MARKER, list_checkpoints
from kubefusion_trainer.training.cli import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["one_torch_thread"]  # the module-wide fixture, used by pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(config: Path, stage: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()),
        "-m", "kubefusion_operator", "stage", "train", "--config", str(config), "--stage", stage,
    ]  # fmt: skip
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_two_process_zero3_sft_then_wrpo(tiny_world: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    storage = tmp_path / "store"
    write_toy_data(storage, count=16, kinds=("sft", "wrpo"))
    zero3 = {
        "resources": {"nodes": 1, "gpusPerNode": 0, "zeroStage": 3},
        "checkpointInterval": 2,
        "epochs": 1,
    }
    training = {
        "sft": hyperparameters(globalBatchSize=8, microBatchSize=2, learningRate=1e-2, **zero3),
        "wrpo": hyperparameters(globalBatchSize=8, microBatchSize=2, beta=0.5, alpha=0.5, **zero3),
    }
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, training)
    layout = RunLayout(storage)
    original = load_file(str(tiny_world["model"] / "model.safetensors"))

    for stage in ("sft", "wrpo"):
        done = _torchrun(config, stage)
        assert done.returncode == 0, done.stderr[-4000:]
        record = json.loads(layout.stage_record(f"train-{stage}").read_text())
        # 2 processes x micro batch 2 x accumulation 2 = the global batch of 8; 16 rows = 2 steps
        assert record["world_size"] == 2 and record["gradient_accumulation_steps"] == 2
        assert record["global_step"] == 2 and record["deepspeed_zero_stage"] == 3
        deepspeed = json.loads(layout.deepspeed_config(stage).read_text())
        assert deepspeed["zero_optimization"]["stage"] == 3 and deepspeed["bf16"]["enabled"] is False
        checkpoints = list_checkpoints(layout.checkpoints_dir(stage))
        assert [step for step, _ in checkpoints] == [2]
        assert all((path / MARKER).is_file() for _, path in checkpoints)
        # the final model holds whole weights (gathered from the ZeRO-3 shards), changed by training
        final = load_file(str(layout.final_model(stage) / "model.safetensors"))
        assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in original.items()}
        assert any(not (final[k] == original[k]).all() for k in original)
        AutoModelForCausalLM.from_pretrained(str(layout.final_model(stage)))
    assert "train-wrpo complete" in done.stdout

    # The same global batch on one process (accumulation 4 instead of 2, no DeepSpeed) sees the same
    # samples per optimizer step, so SFT follows the same loss curve.
    single = tmp_path / "single"
    write_toy_data(single / "store", count=16, kinds=("sft",))
    one = {**training["sft"], "resources": {"nodes": 1, "gpusPerNode": 0, "zeroStage": 0}}
    one_config = write_run_config(single / "run.yaml", single / "store", tiny_world, {"sft": one})
    with_one = train(str(one_config), "sft")
    with_two = json.loads(layout.stage_record("train-sft").read_text())
    assert with_one["gradient_accumulation_steps"] == 4 and with_one["world_size"] == 1
    assert with_one["train_loss"] == pytest.approx(with_two["train_loss"], rel=1e-3)
