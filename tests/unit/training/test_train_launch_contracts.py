"""The training command under both Kubeflow environment contracts: torchrun resolves the same topology.

v1 (training operator, PyTorchJob) sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and the PET_*
variables; v2 (Trainer, TrainJob) sets only PET_*. The rendered command passes no topology flags, so
torchrun must take everything from PET_*: checked with torchrun's own argument parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.distributed.run import config_from_args, parse_args

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.training import torchrun_command
from kubefusion_operator.validation import load_fusionrun
from kubefusion_trainer.cli import export_env_dir

REPO = Path(__file__).resolve().parents[3]
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")


def rendered_command() -> list[str]:
    run = load_fusionrun(REPO / "examples" / "fusechat3-llama31-8b.yaml")
    ctx = RenderContext(run.name, "ns", "uid", run.spec)
    return torchrun_command(ctx, next(t for t in plan_tasks(run.spec) if t.name == "sft"))


def v2_env(nodes: int, procs: int, rank: int, addr: str, port: int) -> dict[str, str]:
    return {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(procs),
        "PET_NODE_RANK": str(rank),
        "PET_MASTER_ADDR": addr,
        "PET_MASTER_PORT": str(port),
    }


def v1_env(nodes: int, procs: int, rank: int, addr: str, port: int) -> dict[str, str]:
    # what the v1 operator sets on replica `rank` (Master 0, Worker i at i+1)
    return {
        **v2_env(nodes, procs, rank, addr, port),
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(nodes * procs),
        "RANK": str(rank),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.parametrize("contract", [v1_env, v2_env], ids=["v1-pytorchjob", "v2-trainjob"])
@pytest.mark.parametrize(
    ("nodes", "procs", "rank", "addr", "port"),
    [
        (2, 8, 0, "fr-sft-master-0", 23456),
        (2, 8, 1, "fr-sft-master-0", 23456),
        (4, 2, 3, "fr-sft-node-0-0.fr-sft", 29400),
        (1, 1, 0, "localhost", 29500),
    ],
)
def test_torchrun_resolves_the_topology(
    monkeypatch: pytest.MonkeyPatch, contract, nodes: int, procs: int, rank: int, addr: str, port: int
) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in contract(nodes, procs, rank, addr, port).items():
        monkeypatch.setenv(name, value)
    command = rendered_command()
    args = parse_args(command[1:])  # what `torchrun ARGS` parses (it reads PET_* as its defaults)
    config, _python, entry_args = config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (nodes, nodes, procs)
    assert config.rdzv_backend == "static"
    assert config.rdzv_endpoint == f"{addr}:{port}"
    assert config.rdzv_configs["rank"] == rank
    module = entry_args[entry_args.index("-m") + 1 :]
    assert module[:5] == ["kubefusion_operator", "stage", "train", "--stage", "sft"]


def test_without_an_operator_torchrun_runs_one_local_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("PET_")] + list(LAUNCH_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    config, _, _ = config_from_args(parse_args(rendered_command()[1:]))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (1, 1, 1)


def test_env_dir_exports_a_mounted_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    (secret / "..data").mkdir(parents=True)
    (secret / "..data" / "AWS_ACCESS_KEY_ID").write_text("key")
    (secret / "AWS_ACCESS_KEY_ID").symlink_to(secret / "..data" / "AWS_ACCESS_KEY_ID")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("secret")
    (secret / "not-a-name").write_text("x")
    env = {"KUBEFUSION_ENV_DIR": str(secret), "AWS_SECRET_ACCESS_KEY": "set by the pod"}
    assert export_env_dir(env) == ["AWS_ACCESS_KEY_ID"]
    assert env["AWS_ACCESS_KEY_ID"] == "key" and env["AWS_SECRET_ACCESS_KEY"] == "set by the pod"
