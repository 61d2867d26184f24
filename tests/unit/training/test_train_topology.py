"""World size from the environment, gradient accumulation from the global batch, DeepSpeed configs."""

from __future__ import annotations

import pytest

from kubefusion_trainer.config import SftConfig
from kubefusion_trainer.training.deepspeed_config import build_deepspeed_config
from kubefusion_trainer.training.topology import detect_topology, gradient_accumulation


def test_topology_reads_torchrun_variables() -> None:
    topo = detect_topology({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (topo.world_size, topo.rank, topo.local_rank, topo.is_main) == (4, 2, 0, False)
    assert detect_topology({}).is_main and detect_topology({}).world_size == 1
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        detect_topology({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=3 does not fit WORLD_SIZE=2"):
        detect_topology({"WORLD_SIZE": "2", "RANK": "3"})


@pytest.mark.parametrize(
    ("world_size", "micro", "expected"), [(1, 1, 128), (8, 1, 16), (16, 2, 4), (2, 4, 16), (128, 1, 1)]
)
def test_global_batch_is_honoured_whatever_the_topology(world_size: int, micro: int, expected: int) -> None:
    hp = SftConfig(globalBatchSize=128, microBatchSize=micro)
    accumulation = gradient_accumulation(hp, world_size)
    assert accumulation == expected
    assert accumulation * world_size * micro == 128


def test_actual_world_size_wins_over_the_spec() -> None:
    # the spec asks for 2 nodes x 8 GPUs, but a CPU run launched 2 processes
    hp = SftConfig(globalBatchSize=64, microBatchSize=2, resources={"nodes": 2, "gpusPerNode": 8})
    assert hp.gradient_accumulation_steps() == 2
    assert gradient_accumulation(hp, 2) == 16


def test_indivisible_global_batch_is_a_clear_error() -> None:
    hp = SftConfig(globalBatchSize=10, microBatchSize=4)
    with pytest.raises(
        ValueError, match=r"globalBatchSize 10 is not divisible by world size 3 x microBatchSize = 12"
    ):
        gradient_accumulation(hp, 3)


def test_zero_stage_zero_means_no_deepspeed() -> None:
    assert build_deepspeed_config(0, bf16=True) is None
    with pytest.raises(ValueError, match="zeroStage"):
        build_deepspeed_config(4, bf16=False)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("bf16", [True, False])
def test_deepspeed_config_leaves_batch_arithmetic_to_the_trainer(stage: int, bf16: bool) -> None:
    config = build_deepspeed_config(stage, bf16=bf16)
    assert config is not None
    # "auto" lets the HF Trainer fill in sizes for the actual world size: nothing hard-coded that breaks
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] is bf16
    assert config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["stage"] == stage
    gathers = config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")
    assert gathers is (True if stage == 3 else None)


def test_training_arguments_follow_the_spec_and_the_launch() -> None:
    from pathlib import Path

    from kubefusion_trainer.training.runner import training_arguments
    from kubefusion_trainer.training.topology import Topology

    hp = SftConfig(
        globalBatchSize=32,
        microBatchSize=2,
        warmupRatio=1.0,
        checkpointInterval=50,
        resources={"zeroStage": 3},
    )
    two_cpus = training_arguments(
        hp, Path("/ckpt"), Topology(world_size=2, rank=0, local_rank=0), on_gpu=False
    )
    assert two_cpus["gradient_accumulation_steps"] == 8 and two_cpus["per_device_train_batch_size"] == 2
    assert two_cpus["ddp_backend"] == "gloo" and two_cpus["use_cpu"] and not two_cpus["bf16"]
    assert two_cpus["deepspeed"]["zero_optimization"]["stage"] == 3
    assert two_cpus["save_steps"] == 50 and two_cpus["output_dir"] == "/ckpt"
    assert two_cpus["warmup_steps"] < 1  # a ratio, never read as "1 step"
    one_gpu = training_arguments(
        SftConfig(globalBatchSize=32, resources={"zeroStage": 0}), Path("/c"), Topology(1, 0, 0), on_gpu=True
    )
    assert one_gpu["bf16"] and one_gpu["activation_checkpointing"] and "deepspeed" not in one_gpu
    assert "ddp_backend" not in one_gpu and one_gpu["gradient_accumulation_steps"] == 32


def test_single_process_rendezvous_fills_only_what_is_missing() -> None:
    from kubefusion_trainer.training.runner import single_process_rendezvous

    env = {"MASTER_ADDR": "10.0.0.1"}
    single_process_rendezvous(env)
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["MASTER_ADDR"] == "10.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536
