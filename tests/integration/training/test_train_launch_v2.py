"""The operator's rendered training command, run for real by torchrun with Trainer v2's variables only.

Kubeflow Trainer v2 sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT and nothing else (no MASTER_ADDR, WORLD_SIZE or RANK). Two processes on one CPU node,
the real `torchrun` and `kubefusion stage train` entry point, a tiny model and two optimizer steps.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from train_toys import hyperparameters, one_torch_thread, write_run_config, write_toy_data

from conftest import subprocess_env
from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.training import torchrun_command
from kubefusion_operator.validation import load_fusionrun
from kubefusion_trainer.layout import RunLayout

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["one_torch_thread"]
REPO = Path(__file__).resolve().parents[3]
V1_ONLY = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rendered(config: Path, metrics_port: int) -> list[str]:
    """The sft TrainJob's command as the operator renders it, pointed at this test's config and port."""
    run = load_fusionrun(REPO / "examples" / "quickstart.yaml")
    ctx = RenderContext(run.name, "ns", "uid", run.spec, training_backend="trainjob")
    command = torchrun_command(ctx, next(t for t in plan_tasks(run.spec) if t.name == "sft"))
    command[command.index("--config") + 1] = str(config)
    command[command.index("--metrics-port") + 1] = str(metrics_port)
    return command


def test_two_processes_rendezvous_from_pet_variables_only(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    storage = tmp_path / "store"
    write_toy_data(storage, count=8, kinds=("sft",))
    sft = hyperparameters(epochs=1, globalBatchSize=4, microBatchSize=2, checkpointInterval=100)
    config = write_run_config(tmp_path / "run.yaml", storage, tiny_world, {"sft": sft})
    command = _rendered(config, _free_port())
    env = {k: v for k, v in subprocess_env(OMP_NUM_THREADS="1").items() if k not in V1_ONLY}
    # The image has the environment's scripts on PATH; `make test` runs the venv's python without them.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    assert command[0] == "torchrun" and shutil.which("torchrun", path=env["PATH"]), "torchrun is installed"
    env = {k: v for k, v in env.items() if not k.startswith("PET_")}
    env.update(
        PET_NNODES="1",
        PET_NPROC_PER_NODE="2",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(_free_port()),
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "train-sft complete" in done.stdout
    record = json.loads(RunLayout(storage).stage_record("train-sft").read_text())
    # 8 rows, 2 processes x micro batch 2 x accumulation 1 = the global batch of 4: 2 steps
    assert record["world_size"] == 2 and record["gradient_accumulation_steps"] == 1
    assert record["global_step"] == 2
