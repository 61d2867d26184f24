"""`kubefusion stage build`: scored answers -> training sets in trl's formats.

--phase sources  data/sft/<dataset>.jsonl (messages) and data/dpo/<dataset>.jsonl (prompt/chosen/rejected)
--phase target   data/wrpo/<dataset>.jsonl (prompt, chosen = [best source, best target], rejected)
Rules: building/rules.py. Each dataset's outputs are written atomically and recorded in the kind's
stats.json (rows, pairs and drops by reason); a rerun skips datasets already recorded there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_open, atomic_write_json
from kubefusion_trainer.building.build import (
    DatasetStats,
    SourcesPlan,
    remove_scratch,
    run_partitions,
    sources_task,
    wrpo_task,
)
from kubefusion_trainer.building.index import SOURCE_TAG, TARGET_TAG, BuildInputError, partition
from kubefusion_trainer.config import DatasetConfig, FusionConfig, load_run_config
from kubefusion_trainer.layout import TARGET_MODEL_NAME, DataKind, Phase, RunLayout
from kubefusion_trainer.shards import complete_shards, missing_shards


def score_files(layout: RunLayout, phase: Phase, model: str, dataset: str) -> list[Path]:
    """The score shards of one model and dataset; an error while the set is unfinished."""
    folder = layout.scores_dir(phase, model, dataset)
    missing = missing_shards(folder)
    if missing:
        raise BuildInputError(
            f"{folder}: scoring is unfinished ({len(missing)} shards missing, e.g. {missing[0]}); "
            "finish `kubefusion stage score` first"
        )
    return complete_shards(folder)


def source_models(spec: FusionConfig, dataset: DatasetConfig) -> list[str]:
    return [s.name for s in spec.dataset_sources(dataset)] + [e.source for e in dataset.existing_answers]


def load_splits(layout: RunLayout, dataset: str) -> dict[str, str]:
    """prompt_id -> split, from the prepared prompts (the split prepare assigned with records.assign_split)."""
    path = layout.prompts_file(dataset)
    if not path.exists():
        raise BuildInputError(f"{path}: prepared prompts are missing (run `kubefusion stage prepare` first)")
    splits = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                splits[record["prompt_id"]] = record["split"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise BuildInputError(
                    f"{path}:{number}: not a prompt record with prompt_id and split ({exc})"
                ) from exc
    return splits


def _stats_entries(layout: RunLayout, kind: DataKind) -> dict[str, Any]:
    path = layout.build_stats(kind)
    return json.loads(path.read_text()) if path.exists() else {}


def build_dataset_sources(
    layout: RunLayout, spec: FusionConfig, dataset: DatasetConfig, partition_entries: int, workers: int
) -> DatasetStats:
    inputs = [
        (SOURCE_TAG, f)
        for m in source_models(spec, dataset)
        for f in score_files(layout, "sources", m, dataset.name)
    ]
    if not inputs:
        raise BuildInputError(
            f"dataset {dataset.name}: no score shards under {layout.root / 'scores' / 'sources'}"
        )
    splits = load_splits(layout, dataset.name)
    scratch = layout.scratch_dir(f"build-sources-{dataset.name}")
    plan = SourcesPlan(
        dataset.name,
        dataset.domain,
        dataset.sft_only,
        set(dataset.sources) if dataset.sources is not None else None,
        (spec.scoring.margin.min, spec.scoring.margin.max),
    )
    try:
        parts = partition(inputs, scratch, partition_entries, workers)
        with ExitStack() as stack:
            sft_out = stack.enter_context(atomic_open(layout.dataset_file("sft", dataset.name)))
            dpo_out = (
                None
                if dataset.sft_only
                else stack.enter_context(atomic_open(layout.dataset_file("dpo", dataset.name)))
            )
            outputs = {"sft": sft_out} if dpo_out is None else {"sft": sft_out, "dpo": dpo_out}
            task = sources_task(plan, [path for _, path in inputs], splits.get)
            return run_partitions(task, parts, outputs, scratch, workers)
    finally:
        remove_scratch(scratch)


def build_dataset_wrpo(
    layout: RunLayout, spec: FusionConfig, dataset: DatasetConfig, partition_entries: int, workers: int
) -> DatasetStats:
    target = [(TARGET_TAG, f) for f in score_files(layout, "target", TARGET_MODEL_NAME, dataset.name)]
    if not target:
        raise BuildInputError(
            f"dataset {dataset.name}: no target score shards (run sample/score --phase target)"
        )
    sources = [
        (SOURCE_TAG, f)
        for m in source_models(spec, dataset)
        for f in score_files(layout, "sources", m, dataset.name)
    ]
    splits = load_splits(layout, dataset.name)
    scratch = layout.scratch_dir(f"build-target-{dataset.name}")
    try:
        parts = partition(target + sources, scratch, partition_entries, workers)
        with atomic_open(layout.dataset_file("wrpo", dataset.name)) as out:
            task = wrpo_task(dataset.name, dataset.domain, [path for _, path in target + sources], splits.get)
            return run_partitions(task, parts, {"wrpo": out}, scratch, workers)
    finally:
        remove_scratch(scratch)


def format_table(rows: dict[str, dict[str, Any]], phase: Phase) -> str:
    counts = ("sft_rows", "dpo_pairs") if phase == "sources" else ("wrpo_rows",)
    header = ["dataset", "prompts", *counts, "dropped"]
    lines = []
    for name, stats in rows.items():
        drops = {
            **{f"sft: {k}": v for k, v in stats["dropped_sft"].items()},
            **{f"pref: {k}": v for k, v in stats["dropped_pref"].items()},
        }
        dropped = ", ".join(f"{k} {v}" for k, v in drops.items()) or "-"
        lines.append([name, str(stats["prompts"]), *(str(stats[c]) for c in counts), dropped])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *lines]
    )


def run(
    config_path: str, phase: Phase, partition_entries: int = 1_000_000, workers: int = 2
) -> dict[str, Any]:
    config = load_run_config(config_path)
    spec, layout = config.spec, RunLayout(config.storage_root)
    started = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    kinds: tuple[DataKind, ...] = ("sft", "dpo") if phase == "sources" else ("wrpo",)
    recorded = {kind: _stats_entries(layout, kind) for kind in kinds}
    for dataset in spec.datasets:
        if phase == "target" and dataset.sft_only:
            continue
        primary = kinds[0]
        if dataset.name in recorded[primary] and layout.dataset_file(primary, dataset.name).exists():
            done[dataset.name] = recorded[primary][dataset.name]  # built by an earlier run
            continue
        build = build_dataset_sources if phase == "sources" else build_dataset_wrpo
        stats = build(layout, spec, dataset, partition_entries, workers).as_dict()
        for kind in kinds:  # the primary kind last: its entry marks the dataset as done
            if kind == "dpo" and dataset.sft_only:
                continue
            recorded[kind][dataset.name] = stats
        for kind in reversed(kinds):
            atomic_write_json(layout.build_stats(kind), recorded[kind])
        done[dataset.name] = stats
    summary = {"phase": phase, "datasets": done, "seconds": round(time.monotonic() - started, 3)}
    atomic_write_json(layout.stage_record(f"build-{phase}"), summary)
    print(format_table(done, phase))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion stage build", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Run config file (YAML or JSON).")
    parser.add_argument(
        "--phase",
        choices=("sources", "target"),
        default="sources",
        help="sources: SFT data and DPO pairs; target: WRPO quadruples. Default sources.",
    )
    parser.add_argument(
        "--partition-answers",
        type=int,
        default=1_000_000,
        help="About this many answers per in-memory partition (peak memory grows with it). Default 1000000.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Processes for both passes (1: all in this process). Default min(2, CPUs).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args.config, args.phase, args.partition_answers, max(1, args.workers))
    except (BuildInputError, OSError, ValueError) as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
