"""`kubefusion stage prepare --config FILE [--metrics-port P]`: load, filter and normalise the prompt datasets.

For every dataset of the spec it writes (atomically, so a rerun simply redoes it and finished files stay whole):
  prepared/<dataset>.jsonl          PromptRecords (records.py) with prompt_id, domain and split
  prepared/<dataset>.report.json    rows read / written / filtered, and the indices of broken, empty and
                                    duplicate rows (see dataprep.normalize)
  samples/sources/<existing>/<dataset>/shard-00000-of-00001.jsonl
                                    the dataset's existingAnswers as SampleRecords of that pseudo-source
and finally state/prepare.json with the counts. It first checks that it can write the run folder and, if not,
fails with the uid/gid it runs as, the PVC (KUBEFUSION_STORAGE_PVC) and how to fix it. Dataset locations are described in dataprep.loading
(relative paths: the current directory first, then the storage root). Exit status 1 when a dataset cannot be
loaded at all or yields no prompt; broken rows alone do not fail the stage (they are reported).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.config import DatasetConfig, RunConfig, load_run_config
from kubefusion_trainer.dataprep.loading import DatasetLoadError, iter_rows
from kubefusion_trainer.dataprep.normalize import PreparedDataset, normalize
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.progress import ProgressReporter
from kubefusion_trainer.shards import complete_shards, write_jsonl, write_shard


class PrepareError(RuntimeError):
    pass


PVC_ENV = "KUBEFUSION_STORAGE_PVC"  # set by the operator in stage pods: the claim behind the run folder


def check_writable(root: str | Path) -> None:
    """Fail early, with the fix, when this process cannot write the run folder (every stage writes it)."""
    folder = Path(root)
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        uid, gid, groups = os.getuid(), os.getgid(), sorted(set(os.getgroups()) - {os.getgid()})
        claim = os.environ.get(PVC_ENV)
        where = f"PersistentVolumeClaim {claim!r} (spec.storage.pvc)" if claim else "the run's storage"
        raise PrepareError(
            f"the run folder {folder} on {where} is not writable by uid {uid}, gid {gid}"
            f"{f', supplementary groups {groups}' if groups else ''}: {exc.strerror or exc}.\n"
            "  Fix: make the volume writable by this user. Either set spec.podSecurity.fsGroup (Kubernetes "
            "then gives the volume to that group, where the volume type supports it), or, for volumes that "
            "ignore fsGroup (many NFS exports, CephFS, Filestore), make the volume's root group-writable by "
            f"a group the pods have: e.g. `chgrp {gid} <export root> && chmod 2775 <export root>`, or set "
            "spec.podSecurity.runAsUser/runAsGroup/supplementalGroups to the owner of the volume's root. "
            "A read-only mount (readOnly, ReadOnlyMany) cannot hold a run."
        ) from exc


def check_existing_answer_names(run: RunConfig, dataset: DatasetConfig) -> None:
    """An existingAnswers name must not share a folder with a source that samples the same dataset."""
    sampled = {s.name for s in run.spec.dataset_sources(dataset)}
    for spec in dataset.existing_answers:
        if spec.source in sampled:
            raise PrepareError(
                f"dataset {dataset.name}: existingAnswers source {spec.source!r} is also a sampled source of "
                "this dataset; give the existing answers another name"
            )


def prepare_dataset(run: RunConfig, dataset: DatasetConfig) -> PreparedDataset:
    check_existing_answer_names(run, dataset)
    evaluation = run.spec.evaluation
    held_out = evaluation.held_out_fraction if evaluation is not None else 0.0
    seed = run.spec.training.sft.seed
    return normalize(iter_rows(dataset, run.storage_root), dataset, held_out_fraction=held_out, seed=seed)


def write_outputs(layout: RunLayout, dataset: DatasetConfig, prepared: PreparedDataset) -> None:
    for source, records in prepared.existing.items():
        folder = layout.samples_dir("sources", source, dataset.name)
        for stale in complete_shards(folder):  # only shard 0 of 1 is ours; drop any other count
            if stale.name != "shard-00000-of-00001.jsonl":
                stale.unlink()
        write_shard(folder, 0, 1, records)
    write_jsonl(layout.prompts_file(dataset.name), prepared.prompts)
    atomic_write_json(layout.prepare_report(dataset.name), prepared.report.as_dict())


def summary_line(report: dict[str, Any]) -> str:
    line = (
        f"{report['dataset']}: {report['rows_read']} rows -> {report['written']} prompts "
        f"({', '.join(f'{k} {v}' for k, v in sorted(report['splits'].items())) or 'none'}); "
        f"filtered {report['filtered']}, empty {report['empty_count']}, duplicate {report['duplicate_count']}, "
        f"over limit {report['over_limit']}, broken {report['broken_count']}"
    )
    if report["broken"]:
        shown = "; ".join(f"row {b['row']}: {b['reason']}" for b in report["broken"][:5])
        more = report["broken_count"] - min(5, len(report["broken"]))
        line += f"\n  broken rows: {shown}" + (f" (+{more} more in the report)" if more > 0 else "")
    return line


def run_prepare(run: RunConfig, reporter: ProgressReporter | None = None) -> dict[str, Any]:
    """Prepare every dataset; returns the completion record (also written to state/prepare.json)."""
    layout = RunLayout(run.storage_root)
    check_writable(run.storage_root)
    datasets: dict[str, Any] = {}
    failures = []
    if reporter is not None:
        reporter.set_total(len(run.spec.datasets))
    for dataset in run.spec.datasets:
        try:
            prepared = prepare_dataset(run, dataset)
        except (DatasetLoadError, PrepareError) as exc:
            failures.append(str(exc))
            print(f"error: {exc}", file=sys.stderr)
            continue
        write_outputs(layout, dataset, prepared)
        report = prepared.report.as_dict()
        print(summary_line(report))
        if prepared.report.written == 0:
            failures.append(
                f"dataset {dataset.name}: no prompt left (see {layout.prepare_report(dataset.name)})"
            )
        datasets[dataset.name] = {
            k: report[k]
            for k in (
                "rows_read",
                "written",
                "filtered",
                "empty_count",
                "duplicate_count",
                "over_limit",
                "broken_count",
                "splits",
                "existing_answers",
            )
        }
        if reporter is not None:
            reporter.advance()
    if failures:
        raise PrepareError("prepare failed:\n  " + "\n  ".join(failures))
    record = {
        "stage": "prepare",
        "datasets": datasets,
        "prompts": sum(d["written"] for d in datasets.values()),
    }
    atomic_write_json(layout.stage_record("prepare"), record)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubefusion stage prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the run config file (RunConfig YAML/JSON)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run_config(args.config)
    except Exception as exc:  # yaml, pydantic and OS errors all name the problem
        print(f"{args.config}: invalid run config: {exc}", file=sys.stderr)
        return 2
    reporter = ProgressReporter("prepare", unit="datasets", metrics_port=args.metrics_port)
    try:
        run_prepare(run, reporter)
    except PrepareError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        reporter.close()
    return 0
