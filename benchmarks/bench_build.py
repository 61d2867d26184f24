"""Build-stage scale check: 158,000 prompts x 20 scored answers, as FuseChat-3.0's data mix.

Synthesises score shards (4 sources x 5 answers per prompt) and prepared prompts in a temp dir, runs
`kubefusion stage build` as a subprocess and prints its wall time and peak RSS (getrusage of the child)
against the goals: under 60 s and under 2 GB on a 2-core machine. It also prints the child's CPU time:
the build is one process, so wall time above CPU time means the machine was busy with other work.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_build.py [--prompts 158000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["gemma-2-27b", "mistral-large", "qwen-2-5-72b", "llama-3-1-70b"]
SAMPLES_PER_SOURCE = 5
SHARDS = 4
# (dataset, domain, share of prompts): roughly the paper's instruction / math / code mix.
MIX = [("instruction", "instruction", 0.51), ("math", "math", 0.33), ("code", "code", 0.16)]
ANSWER = "Sure. Here is a careful answer that explains every step, then gives the result: {n}. " * 3


def synthesise(root: Path, prompts: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    storage = root / "storage"
    datasets = []
    for name, domain, share in MIX:
        count = (
            int(prompts * share) if name != "code" else prompts - sum(int(prompts * s) for *_, s in MIX[:-1])
        )
        datasets.append({"name": name, "location": f"{name}.jsonl", "domain": domain, "sftFraction": 0.4})
        prepared = storage / "prepared" / f"{name}.jsonl"
        prepared.parent.mkdir(parents=True, exist_ok=True)
        shards = {
            (s, i): open(  # noqa: SIM115 - closed below, all at once
                _mkdir(storage / "scores" / "sources" / s / name) / f"shard-{i:05d}-of-{SHARDS:05d}.jsonl",
                "w",
            )
            for s in SOURCES
            for i in range(SHARDS)
        }
        with open(prepared, "w") as prompts_out:
            for n in range(count):
                pid = f"{name[:2]}{n:014x}"
                messages = json.dumps(
                    [{"role": "user", "content": f"Question {n} of {name}: please explain and solve."}]
                )
                split = "sft" if rng.random() < 0.4 else "pref"
                prompts_out.write(
                    f'{{"prompt_id": "{pid}", "dataset": "{name}", "domain": "{domain}", '
                    f'"messages": {messages}, "split": "{split}", "row_index": {n}}}\n'
                )
                for source in SOURCES:
                    out = shards[(source, n % SHARDS)]
                    for k in range(SAMPLES_PER_SOURCE):
                        reward = round(rng.uniform(0.0, 0.2), 6)
                        correct = (
                            "null" if domain == "instruction" else ("true" if rng.random() < 0.6 else "false")
                        )
                        out.write(
                            f'{{"prompt_id": "{pid}", "dataset": "{name}", "domain": "{domain}", "source": "{source}", '
                            f'"sample_index": {k}, "messages": {messages}, "answer": "{ANSWER.format(n=n + k)}", '
                            f'"finish_reason": "stop", "usage": {{"prompt_tokens": 20, "completion_tokens": 90}}, '
                            f'"reward": {reward}, "correct": {correct}, "reason": "synthetic"}}\n'
                        )
        for handle in shards.values():
            handle.close()
    config = {
        "name": "bench",
        "storageRoot": str(storage),
        "spec": {
            "target": {"model": "t"},
            "sources": [{"name": s, "model": f"org/{s}"} for s in SOURCES],
            "datasets": datasets,
            "scoring": {"rewardModel": {"model": "rm"}},
        },
    }
    path = root / "run.json"
    path.write_text(json.dumps(config))
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=158_000)
    parser.add_argument("--workers", type=int, default=2, help="The build's --workers. Default 2.")
    parser.add_argument("--keep", action="store_true", help="Keep the temp dir (its path is printed).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kf-bench-build-"))
    try:
        run(root, args.prompts, args.workers)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run(root: Path, prompts: int, workers: int) -> None:
    started = time.monotonic()
    config = synthesise(root, prompts)
    size = sum(p.stat().st_size for p in (root / "storage" / "scores").rglob("*.jsonl"))
    print(
        f"synthesised {prompts:,} prompts x {len(SOURCES) * SAMPLES_PER_SOURCE} answers "
        f"({size / 1e9:.2f} GB of score shards) in {time.monotonic() - started:.1f}s"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer")])}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    command = ["-m", "kubefusion_trainer.cli", "build", "--config", str(config), "--workers", str(workers)]
    result = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux: the largest single process (main or a worker)
    cpu = usage.ru_utime + usage.ru_stime
    if result.returncode != 0:
        sys.exit(f"build failed:\n{result.stderr}")
    print(result.stdout)
    stats = json.loads((root / "storage" / "data" / "sft" / "stats.json").read_text())
    answers = sum(s["answers"] for s in stats.values())
    bound = peak_mb * (workers + 1)
    print(f"{'measure':<34}{'goal':>10}{'measured':>12}{'ratio':>8}")
    print(f"{'wall time (s)':<34}{60:>10}{seconds:>12.1f}{seconds / 60:>8.2f}")
    print(f"{'CPU time, all processes (s)':<34}{'':>10}{cpu:>12.1f}")
    print(f"{'peak RSS, largest process (MB)':<34}{2048:>10}{peak_mb:>12.0f}{peak_mb / 2048:>8.2f}")
    label = f"  bound, all {workers + 1} processes (MB)"
    print(f"{label:<34}{2048:>10}{bound:>12.0f}{bound / 2048:>8.2f}")
    print(f"{'answers read':<34}{prompts * 20:>10,}{answers:>12,}")
    print(f"machine load average (1 min) when the build started: {load_before:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
