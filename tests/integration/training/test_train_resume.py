"""Stopped runs continue from their latest complete checkpoint, with the same steps and data order."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from train_toys import LogRecorder, hyperparameters, one_torch_thread, write_run_config, write_toy_data
from transformers import TrainerCallback

from conftest import subprocess_env
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.training.checkpoints import MARKER, latest_complete_checkpoint, list_checkpoints
from kubefusion_trainer.training.cli import train

pytestmark = pytest.mark.integration
__all__ = ["one_torch_thread"]  # the module-wide fixture, used by pytest


class CrashAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def _setup(root: Path, world: dict[str, Path], **hp: Any) -> tuple[Path, Path]:
    storage = root / "store"
    write_toy_data(storage, kinds=("sft",))
    training = {"sft": hyperparameters(**{"checkpointInterval": 3, "learningRate": 1e-2, **hp})}
    return write_run_config(root / "run.yaml", storage, world, training), storage


def _weights(storage: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunLayout(storage).final_model("sft") / "model.safetensors"))


def test_crashed_run_resumes_from_latest_complete_checkpoint(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    straight_config, straight_storage = _setup(tmp_path / "straight", tiny_world)
    straight = LogRecorder()
    train(str(straight_config), "sft", callbacks=[straight])

    config, storage = _setup(tmp_path / "crashed", tiny_world)
    layout = RunLayout(storage)
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        train(str(config), "sft", callbacks=[CrashAt(7)])
    assert not layout.stage_record("train-sft").exists() and not layout.final_model("sft").exists()
    checkpoints = layout.checkpoints_dir("sft")
    assert [step for step, _ in list_checkpoints(checkpoints)] == [3, 6]
    # a save interrupted half-way (no marker) must not be resumed from
    broken = checkpoints / "checkpoint-7"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{trunc")

    resumed = LogRecorder()
    record = train(str(config), "sft", callbacks=[resumed])
    assert resumed.start_steps == [6]  # not from zero
    assert record["resumed_from_step"] == 6 and record["global_step"] == 8
    assert [log["step"] for log in resumed.logs] == [7, 8]
    # the same data order: the steps after the resume see the same batches and losses as an unbroken run
    straight_losses = {log["step"]: log["loss"] for log in straight.logs}
    for log in resumed.logs:
        assert log["loss"] == pytest.approx(straight_losses[log["step"]], rel=1e-4)
    for name, tensor in _weights(straight_storage).items():
        assert torch.allclose(tensor, _weights(storage)[name], atol=1e-5), name
    assert not broken.exists() or (broken / MARKER).exists()


@pytest.mark.slow
def test_killed_process_resumes_where_it_stopped(tiny_world: dict[str, Path], tmp_path: Path) -> None:
    """SIGKILL the real command after a checkpoint is complete; the rerun continues from there."""
    config, storage = _setup(
        tmp_path, tiny_world, globalBatchSize=2, microBatchSize=2, epochs=1, checkpointInterval=2
    )
    layout = RunLayout(storage)
    command = [
        sys.executable,
        "-m",
        "kubefusion_operator",
        "stage",
        "train",
        "--config",
        str(config),
        "--stage",
        "sft",
    ]
    env = subprocess_env(OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while latest_complete_checkpoint(layout.checkpoints_dir("sft")) is None:
            assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    killed_at = latest_complete_checkpoint(layout.checkpoints_dir("sft"))
    assert killed_at is not None
    assert not layout.stage_record("train-sft").exists()  # it really was stopped before the end

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(layout.stage_record("train-sft").read_text())
    assert record["resumed_from_step"] == int(killed_at.name.split("-")[1]) >= 2
    assert record["global_step"] == record["max_steps"] == 16
