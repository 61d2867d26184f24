"""`kubefusion stage verify-code`: run every code answer of a phase against its tests, in sandboxes.

The code answers of a phase split into N sandbox shards (spec.scoring.codeExecution.sandboxPods). Each
shard's verdicts land in sandbox/<phase>/verdicts-of-N/<i>/verdicts.jsonl (atomic; an existing file is
kept, so a rerun or a retried pod redoes only unfinished shards); the score stage merges them
(`score --sandbox-verdicts`), each answer's exactly once, and judges them against the expected values,
which never leave the trusted side.

Three ways to run it:
  (default)                     every shard here, one after another (the local runner); writes the
                                completion record verify-code-<phase> with the isolation in effect.
  --stage-in DIR --shard I/N    trusted (a sandbox pod's init container, with the run's storage): write
                                shard I's inputs (code + test inputs + limits) to DIR/items.jsonl and
                                create its verdict folder.
  --inbox DIR --outbox DIR      untrusted code runs (a sandbox pod's main container: no config, no
                                secrets, no storage beyond these two folders): DIR/items.jsonl in,
                                OUTBOX/verdicts.jsonl out, written only after every answer's processes
                                are gone; strays the answers left in OUTBOX are removed first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.layout import Phase, RunLayout
from kubefusion_trainer.scoring.code_items import (
    INPUTS_FILE,
    CodeItem,
    prepare_answer,
    read_inputs,
    write_inputs,
    write_verdicts,
)
from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, Observation, SandboxLimits

if TYPE_CHECKING:  # the sandbox side (--inbox) runs without pydantic: config loads only where needed
    from kubefusion_trainer.config import FusionConfig

VERDICTS_FILE = "verdicts.jsonl"


def sandbox_limits(spec: FusionConfig) -> SandboxLimits:
    limits = spec.scoring.code_execution
    return SandboxLimits(
        timeout_seconds=limits.timeout_seconds, memory_mb=limits.memory_mb, max_processes=limits.max_processes
    )


def collect_items(spec: FusionConfig, layout: RunLayout, phase: Phase) -> list[CodeItem]:
    """Every code answer of the phase that needs running, in a stable order."""
    from kubefusion_trainer.scoring.by_prompt import read_own_samples
    from kubefusion_trainer.stages.score import load_labels, plan_units

    items: list[CodeItem] = []
    labels: dict[str, dict] = {}
    for unit in plan_units(spec, layout, phase):
        if unit.dataset.domain != "code":
            continue
        if unit.dataset.name not in labels:
            labels[unit.dataset.name] = load_labels(layout, unit.dataset)
        for record in read_own_samples(unit.sample_shards, (0, 1), set()):  # every answer of the folder
            tests = labels[unit.dataset.name].get(record["prompt_id"], (None, None))[1]
            prepared = prepare_answer(record, tests)  # type: ignore[arg-type]
            if isinstance(prepared, CodeItem):
                items.append(prepared)
    return items


def shard_count(spec: FusionConfig) -> int:
    return spec.scoring.code_execution.sandbox_pods


def run_items(
    items: list[CodeItem], sandbox: CodeSandbox, concurrency: int
) -> list[tuple[CodeItem, Observation]]:
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(zip(items, pool.map(lambda i: sandbox.execute(i.code, i.plan), items), strict=True))


def run_local(spec: FusionConfig, layout: RunLayout, phase: Phase, concurrency: int) -> dict[str, Any]:
    """Every shard on this machine (root: namespace sandboxes; otherwise process containment)."""
    count = shard_count(spec)
    items = collect_items(spec, layout, phase)
    sandbox: CodeSandbox | None = None
    counts: Counter = Counter()
    try:
        for index in range(count):
            path = layout.sandbox_verdicts(phase, index, count)
            if path.exists():
                counts["shards_skipped"] += 1
                continue
            if sandbox is None:
                sandbox = CodeSandbox(sandbox_limits(spec), concurrency=concurrency)
                print(f"code sandbox: {sandbox.isolation}", file=sys.stderr)
            results = run_items(items[index::count], sandbox, concurrency)
            write_verdicts(path, results, sandbox.isolation)
            counts["shards_run"] += 1
            counts["answers_run"] += len(results)
    finally:
        if sandbox is not None:
            sandbox.close()
    summary: dict[str, Any] = {"phase": phase, "shards": count, "code_answers": len(items), **counts}
    if sandbox is not None:
        summary["sandbox_isolation"] = sandbox.isolation
    return summary


def stage_in(spec: FusionConfig, layout: RunLayout, phase: Phase, index: int, count: int, inbox: Path) -> int:
    """Trusted: write shard `index`'s inputs for a sandbox pod and create its verdict folder."""
    if count != shard_count(spec):
        raise ValueError(f"--shard {index}/{count}: the spec says {shard_count(spec)} sandbox pods")
    items = collect_items(spec, layout, phase)[index::count]
    write_inputs(inbox / INPUTS_FILE, items, sandbox_limits(spec))
    layout.sandbox_verdicts(phase, index, count).parent.mkdir(parents=True, exist_ok=True)
    return len(items)


def run_inbox(inbox: Path, outbox: Path, concurrency: int) -> int:
    """Untrusted side: run the inbox's items, write the verdicts to the outbox. No config, no storage."""
    target = outbox / VERDICTS_FILE
    if target.exists():
        return 0  # done by an earlier pod of this index
    limits, items = read_inputs(inbox / INPUTS_FILE)
    sandbox = CodeSandbox(limits, concurrency=concurrency)
    print(f"code sandbox: {sandbox.isolation}", file=sys.stderr)
    try:
        results = run_items(items, sandbox, concurrency)
    finally:
        sandbox.close()
    for stray in outbox.iterdir():  # an answer may have written here (same uid): keep nothing of it
        if stray.is_dir() and not stray.is_symlink():
            shutil.rmtree(stray, ignore_errors=True)
        else:
            stray.unlink(missing_ok=True)
    outbox.chmod(0o700)
    write_verdicts(target, results, sandbox.isolation)
    return len(results)


def parse_shard(text: str) -> tuple[int, int]:
    from kubefusion_trainer.stages.score import parse_shard as parse

    return parse(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefusion stage verify-code", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="Run config file (not with --inbox).")
    parser.add_argument("--phase", choices=("sources", "target"), default="sources", help="Default sources.")
    parser.add_argument("--concurrency", type=int, default=2, help="Answers run at once. Default 2.")
    parser.add_argument("--shard", type=parse_shard, help="I/N: the sandbox shard (with --stage-in).")
    parser.add_argument("--stage-in", type=Path, help="Write one shard's inputs to this folder.")
    parser.add_argument("--inbox", type=Path, help="Run the inputs in this folder (a sandbox pod).")
    parser.add_argument("--outbox", type=Path, help="Write the verdicts to this folder (with --inbox).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        if args.inbox is not None:
            if args.outbox is None:
                raise ValueError("--inbox needs --outbox")
            ran = run_inbox(args.inbox, args.outbox, args.concurrency)
            print(json.dumps({"answers_run": ran}))
            return 0
        if args.config is None:
            raise ValueError("--config is required (except with --inbox)")
        from kubefusion_trainer.config import load_run_config

        config = load_run_config(args.config)
        layout = RunLayout(config.storage_root)
        if args.stage_in is not None:
            if args.shard is None:
                raise ValueError("--stage-in needs --shard I/N")
            staged = stage_in(config.spec, layout, args.phase, *args.shard, args.stage_in)
            print(json.dumps({"answers_staged": staged}))
            return 0
        summary = run_local(config.spec, layout, args.phase, args.concurrency)
        summary["seconds"] = round(time.monotonic() - started, 3)
        atomic_write_json(layout.stage_record(f"verify-code-{args.phase}"), summary)
    except (OSError, ValueError) as exc:
        print(f"verify-code: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
