"""Where each stage reads and writes under a run's storage root.

This is the only place that builds these paths: stages, the operator's status
outputs and the single-machine runner all ask a RunLayout.

    <root>/
      prepared/<dataset>.jsonl              normalised prompts (prepare)
      prepared/<dataset>.report.json        rows dropped or unmappable, with indices
      samples/<phase>/<model>/<dataset>/    answer shards (sample); phase = sources | target
        chunks/shard-I-of-N/chunk-*.jsonl   committed pieces of a shard still being sampled (shards.py)
      scores/<phase>/<model>/<dataset>/     scored shards (score)
      data/<kind>/<dataset>.jsonl           sft | dpo | wrpo training sets (build)
      data/<kind>/stats.json                rows, pairs and drops per dataset
      train/<stage>/checkpoints/            checkpoint-<step>/ folders (train); COMPLETE marks a whole one
      train/<stage>/final/                  save_pretrained output the next stage reads
      train/<stage>/.final.staging/         the final model while it is written (renamed to final/)
      train/<stage>/deepspeed.json          the DeepSpeed config the stage ran with
      eval/answers/<model>.jsonl            held-out answers, correctness and rewards per model (evaluate)
      eval/scorecard.json                   accuracy and win rate per dataset and model (evaluate)
      reports/                              report.md and plots (local runner)
      logs/                                 stage and server logs (local runner)
      config/<label>.yaml                   run configs the local runner hands its stage processes
      state/<stage>.json                    a stage's completion record
      tmp/<name>/                           a stage's scratch space (e.g. build's partitions), removed after
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Phase = Literal["sources", "target"]
DataKind = Literal["sft", "dpo", "wrpo"]
TrainStage = Literal["sft", "dpo", "wrpo"]

TARGET_MODEL_NAME = "target"


def candidate_endpoint(candidate: str) -> str:
    """RunConfig.endpoints key (and served model name) of an evaluation candidate's server."""
    return f"eval-{candidate}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # prepare
    @property
    def prepared_dir(self) -> Path:
        return self.root / "prepared"

    def prompts_file(self, dataset: str) -> Path:
        return self.prepared_dir / f"{dataset}.jsonl"

    def prepare_report(self, dataset: str) -> Path:
        return self.prepared_dir / f"{dataset}.report.json"

    # sample
    def samples_dir(self, phase: Phase, model: str, dataset: str) -> Path:
        return self.root / "samples" / phase / model / dataset

    def sample_shard(self, phase: Phase, model: str, dataset: str, index: int, count: int) -> Path:
        return self.samples_dir(phase, model, dataset) / shard_name(index, count)

    def sample_chunks_dir(self, phase: Phase, model: str, dataset: str, index: int, count: int) -> Path:
        """Chunk files of a shard in progress; removed once the shard file is committed."""
        return chunks_dir(self.samples_dir(phase, model, dataset), index, count)

    # score
    def scores_dir(self, phase: Phase, model: str, dataset: str) -> Path:
        return self.root / "scores" / phase / model / dataset

    def score_shard(self, phase: Phase, model: str, dataset: str, index: int, count: int) -> Path:
        return self.scores_dir(phase, model, dataset) / shard_name(index, count)

    # build
    def data_dir(self, kind: DataKind) -> Path:
        return self.root / "data" / kind

    def dataset_file(self, kind: DataKind, dataset: str) -> Path:
        return self.data_dir(kind) / f"{dataset}.jsonl"

    def build_stats(self, kind: DataKind) -> Path:
        return self.data_dir(kind) / "stats.json"

    # train
    def train_dir(self, stage: TrainStage) -> Path:
        return self.root / "train" / stage

    def checkpoints_dir(self, stage: TrainStage) -> Path:
        return self.train_dir(stage) / "checkpoints"

    def final_model(self, stage: TrainStage) -> Path:
        return self.train_dir(stage) / "final"

    def final_model_staging(self, stage: TrainStage) -> Path:
        """Where the final model is written before its atomic rename to final_model(stage)."""
        return self.train_dir(stage) / ".final.staging"

    def deepspeed_config(self, stage: TrainStage) -> Path:
        return self.train_dir(stage) / "deepspeed.json"

    # evaluate and report
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_answers(self, model: str) -> Path:
        return self.eval_dir / "answers" / f"{model}.jsonl"

    @property
    def scorecard(self) -> Path:
        return self.eval_dir / "scorecard.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def report(self) -> Path:
        return self.reports_dir / "report.md"

    def plot(self, name: str) -> Path:
        return self.reports_dir / f"{name}.png"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def run_config_file(self, label: str) -> Path:
        return self.root / "config" / f"{label}.yaml"

    # scratch space on the run's storage (large temporary files; the stage removes it)
    def scratch_dir(self, name: str) -> Path:
        return self.root / "tmp" / name

    # code answers run in sandboxes: per sandbox shard, the inputs it gets and the verdicts it returns
    def sandbox_verdicts(self, phase: Phase, index: int, count: int) -> Path:
        return self.root / "sandbox" / phase / f"verdicts-of-{count}" / str(index) / "verdicts.jsonl"

    # stage completion records
    def stage_record(self, stage: str) -> Path:
        return self.root / "state" / f"{stage}.json"


def chunks_dir(shard_folder: Path, index: int, count: int) -> Path:
    """Where the chunk files of shard index/count of a shard folder live."""
    return shard_folder / "chunks" / shard_name(index, count).removesuffix(".jsonl")


def shard_name(index: int, count: int) -> str:
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return f"shard-{index:05d}-of-{count:05d}.jsonl"


def parse_shard_name(name: str) -> tuple[int, int]:
    """(index, count) from a shard_name(); ValueError for any other name."""
    match = re.fullmatch(r"shard-(\d+)-of-(\d+)\.jsonl", name)
    if not match:
        raise ValueError(f"{name!r} is not a shard file name (shard-IIIII-of-NNNNN.jsonl)")
    index, count = int(match[1]), int(match[2])
    shard_name(index, count)
    return index, count
