"""What every training stage shares: arguments from the spec, resume, final save, completion record.

The stage modules (sft, dpo, wrpo) only build their trl trainer from a StageContext; run_stage does
the rest, the same way for all three, single process or under torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.config import RunConfig, TrainingHyperparameters
from kubefusion_trainer.layout import RunLayout, TrainStage
from kubefusion_trainer.training.checkpoints import (
    CheckpointMarkerCallback,
    checkpoint_step,
    latest_complete_checkpoint,
    publish_directory,
    remove_incomplete_checkpoints,
)
from kubefusion_trainer.training.deepspeed_config import build_deepspeed_config
from kubefusion_trainer.training.topology import Topology, detect_topology, gradient_accumulation

KEEP_CHECKPOINTS = 2  # the newest complete one survives while the next is being written


@dataclass
class StageContext:
    """Everything a stage module needs to build its trainer."""

    run: RunConfig
    stage: TrainStage
    layout: RunLayout
    hp: TrainingHyperparameters
    topology: Topology
    on_gpu: bool
    model_path: Path
    tokenizer: Any
    dataset: Any
    args: dict[str, Any]  # TrainingArguments fields common to every stage
    callbacks: list[Any] = field(default_factory=list)
    replay_examples: int = 0  # SFT rows replayed by a preference stage, included in dataset


def stage_hyperparameters(run: RunConfig, stage: TrainStage) -> TrainingHyperparameters:
    hp = getattr(run.spec.training, stage)
    if hp is None:
        raise ValueError(f"spec.training.{stage} is not set: this run has no {stage} stage")
    return hp


def start_model(run: RunConfig, layout: RunLayout, stage: TrainStage) -> Path:
    """SFT starts from spec.target.model; DPO and WRPO from the SFT output (also their reference)."""
    if stage == "sft":
        return Path(run.spec.target.model)
    path = layout.final_model("sft")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{stage} starts from the SFT model at {path}, which does not exist: train sft first"
        )
    return path


def stage_replay_rows(
    layout: RunLayout, stage: TrainStage, hp: TrainingHyperparameters, datasets: list[str]
) -> list[dict[str, Any]]:
    """A preference stage's replayed SFT rows (sftReplayFraction); none for SFT or a fraction of 0."""
    from kubefusion_trainer.training.data import load_training_rows
    from kubefusion_trainer.training.replay import replay_rows

    fraction = getattr(hp, "sft_replay_fraction", 0.0)
    if stage == "sft" or not fraction:
        return []
    return replay_rows(load_training_rows(layout, "sft", datasets), stage, fraction, hp.seed)


def load_tokenizer(model_path: Path, chat_template: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def training_arguments(
    hp: TrainingHyperparameters, output_dir: Path, topology: Topology, on_gpu: bool
) -> dict[str, Any]:
    """TrainingArguments fields from the spec, identical for SFT, DPO and WRPO."""
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": hp.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation(hp, topology.world_size),
        "num_train_epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": hp.scheduler,
        # A float below 1 is a ratio of the total steps; 1.0 itself would mean "one step".
        "warmup_steps": min(hp.warmup_ratio, 0.999),
        "max_length": hp.max_length,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "save_strategy": "steps",
        "save_steps": hp.checkpoint_interval,
        "save_total_limit": KEEP_CHECKPOINTS,
        "logging_steps": 1,
        "logging_first_step": True,
        "report_to": "none",
        "disable_tqdm": True,  # ProgressReporter draws the bar
        "dataloader_num_workers": 0,
        "bf16": on_gpu,
        "use_cpu": not on_gpu,
        # Needed for 8B models on GPUs; on CPU (tiny models) it only costs time.
        "activation_checkpointing": on_gpu,
    }
    if not on_gpu and topology.world_size > 1:
        args["ddp_backend"] = "gloo"
    deepspeed = build_deepspeed_config(hp.resources.zero_stage, bf16=on_gpu)
    if deepspeed is not None:
        args["deepspeed"] = deepspeed
    return args


def model_init_kwargs(on_gpu: bool) -> dict[str, Any]:
    return {"dtype": "bfloat16" if on_gpu else "float32"}


def single_process_rendezvous(env: MutableMapping[str, str]) -> None:
    """RANK/WORLD_SIZE/MASTER_* for a lone process (what torchrun would set), on a free local port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(port)),
    ):
        env.setdefault(name, value)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


TrainerFactory = Callable[[StageContext], Any]


def prepare_stage(
    run: RunConfig, stage: TrainStage, callbacks: list[Any] | None = None, on_gpu: bool | None = None
) -> StageContext:
    """Read the spec, the environment and the stage's data into a StageContext (no side effects on storage
    beyond starting the process group DeepSpeed needs)."""
    import torch

    from kubefusion_trainer.training.data import load_training_dataset

    layout = RunLayout(run.storage_root)
    hp = stage_hyperparameters(run, stage)
    if hp.resources.zero_stage and "WORLD_SIZE" not in os.environ:
        single_process_rendezvous(os.environ)  # DeepSpeed wants a process group even for one process
    topology = detect_topology()
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    args = training_arguments(hp, layout.checkpoints_dir(stage), topology, on_gpu)
    model_path = start_model(run, layout, stage)
    names = [d.name for d in run.spec.datasets]
    replayed = stage_replay_rows(layout, stage, hp, names)
    dataset = load_training_dataset(layout, stage, names, extra_rows=replayed)
    if "deepspeed" in args:
        import deepspeed

        # Accelerate starts torch.distributed itself on CPU, but DeepSpeed's own comm layer (which sizes
        # ZeRO-3's partitions and checks the batch arithmetic) must know the process group too.
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    return StageContext(
        run=run,
        stage=stage,
        layout=layout,
        hp=hp,
        topology=topology,
        on_gpu=on_gpu,
        model_path=model_path,
        tokenizer=load_tokenizer(model_path, run.spec.target.chat_template),
        dataset=dataset,
        args=args,
        replay_examples=len(replayed),
        callbacks=[CheckpointMarkerCallback(), *(callbacks or [])],
    )


def completed_record(run: RunConfig, stage: TrainStage) -> dict[str, Any] | None:
    """The completion record of a stage whose final model is in place, else None."""
    layout = RunLayout(run.storage_root)
    record = layout.stage_record(f"train-{stage}")
    if record.is_file() and (layout.final_model(stage) / "config.json").is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    return None


def run_stage(
    run: RunConfig,
    stage: TrainStage,
    build_trainer: TrainerFactory,
    metrics_port: int | None = None,
    callbacks: list[Any] | None = None,
    on_gpu: bool | None = None,
) -> dict[str, Any]:
    """Train one stage to completion (resuming from the latest complete checkpoint) and publish it.

    A stage that already completed is not trained again (its record comes back with skipped=True).
    """
    from kubefusion_trainer.progress import ProgressReporter
    from kubefusion_trainer.training.metrics import MetricsCallback

    done = completed_record(run, stage)
    if done is not None:
        return {**done, "skipped": True}
    ctx = prepare_stage(run, stage, callbacks, on_gpu)
    layout, final = ctx.layout, ctx.layout.final_model(stage)
    checkpoints = layout.checkpoints_dir(stage)
    staging = layout.final_model_staging(stage)
    if ctx.topology.is_main:
        remove_incomplete_checkpoints(checkpoints)
        shutil.rmtree(staging, ignore_errors=True)
        if "deepspeed" in ctx.args:
            atomic_write_json(layout.deepspeed_config(stage), ctx.args["deepspeed"])
    _barrier()  # nobody looks for checkpoints while rank 0 clears the unfinished ones
    resume = latest_complete_checkpoint(checkpoints)

    reporter = None
    if ctx.topology.is_main:
        reporter = ProgressReporter(f"train-{stage}", unit="steps", metrics_port=metrics_port)
        ctx.callbacks.append(MetricsCallback(reporter))
    try:
        trainer = build_trainer(ctx)
        started = time.monotonic()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        trainer.save_model(str(staging))  # every rank: ZeRO-3 gathers the weights for rank 0
        _barrier()
        record = {
            "stage": f"train-{stage}",
            "global_step": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "resumed_from_step": checkpoint_step(resume) if resume else None,
            "train_loss": result.training_loss,
            "examples": len(ctx.dataset),
            "replay_examples": ctx.replay_examples,
            "world_size": ctx.topology.world_size,
            "gradient_accumulation_steps": ctx.args["gradient_accumulation_steps"],
            "global_batch_size": ctx.hp.global_batch_size,
            "deepspeed_zero_stage": ctx.hp.resources.zero_stage,
            "seconds": round(time.monotonic() - started, 3),
            "final_model": str(final),
        }
        if ctx.topology.is_main:
            publish_directory(staging, final)
            atomic_write_json(layout.stage_record(f"train-{stage}"), record)
        _barrier()
        return record
    finally:
        if reporter is not None:
            reporter.close()
