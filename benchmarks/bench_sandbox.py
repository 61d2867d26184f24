"""Code answers verified per second per CPU core: sandbox-pod (process) containment vs namespace containment.

The same answers (honest, wrong, crashing; function asserts and stdin/stdout tests) through both modes,
side by side in one run:
  namespace  as root: unshare net/pid/mount namespaces, private tmpfs, a uid per run (needs root);
  process    what sandbox pods and non-root runs use: subreaper launcher, Landlock, seccomp, rlimits. When
             this benchmark runs as root, this mode runs as an unprivileged uid with no capabilities
             (setpriv), as it would in a pod.
Each mode runs in a child process of its own. Per mode: answers per wall second, CPU seconds per answer
(this driver and every sandbox process, from getrusage), and answers per second per CPU core (wall rate
divided by the cores the run could use: min(concurrency, cores)). The verdicts of both modes must agree.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_sandbox.py [--answers 120]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_USER = "kf-sandbox-test"
ADD = "assert add(1, 2) == 3\nassert add(0, 5) == 5\nassert add(-2, 2) == 0"
IO = [
    {"input": "2 3\n", "output": "5\n"},
    {"input": "10 -4", "output": "6"},
    {"input": "1 1 1", "output": "3"},
]
KINDS = [
    ("honest expr", "def add(a, b):\n    return a + b\n", ADD),
    ("wrong expr", "def add(a, b):\n    return a - b\n", ADD),
    ("honest io", "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n", IO),
    ("wrong io", "print(5)\n", IO),
    ("crash", "def add(a, b):\n    raise ValueError('no')\n", ADD),
    ("exit early", "import sys\nsys.exit(0)\n", ADD),
]


def answers(count: int) -> list[tuple[str, str, object]]:
    return [KINDS[i % len(KINDS)] for i in range(count)]


def worker(mode: str, count: int, concurrency: int) -> dict:
    """Run in a child: one mode, all answers; print what was measured."""
    from concurrent.futures import ThreadPoolExecutor

    from kubefusion_trainer.scoring.code_extract import plan_tests
    from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, SandboxLimits

    box = CodeSandbox(
        SandboxLimits(timeout_seconds=10, memory_mb=256), concurrency=concurrency, containment_mode=mode
    )
    work = answers(count)
    box.run(work[0][1], plan_tests(work[0][2]))  # warm the page cache and the probes
    before_self, before_children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        got = list(pool.map(lambda a: box.run(a[1], plan_tests(a[2])), work))
    wall = time.perf_counter() - started
    after_self, after_children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = sum(
        getattr(after, f) - getattr(before, f)
        for after, before in ((after_self, before_self), (after_children, before_children))
        for f in ("ru_utime", "ru_stime")
    )
    box.close()
    return {
        "mode": mode,
        "isolation": box.isolation,
        "uid": os.getuid(),
        "wall": wall,
        "cpu": cpu,
        "verdicts": [[name, v.passed, v.category] for (name, _, _), v in zip(work, got, strict=True)],
    }


def run_mode(mode: str, count: int, concurrency: int) -> dict:
    command = [__file__, "--worker", mode, "--answers", str(count), "--concurrency", str(concurrency)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "trainer")}
    prefix, python = [], sys.executable
    if mode == "process" and os.geteuid() == 0:
        from kubefusion_trainer.scoring.code_sandbox import sandbox_python

        try:
            user = pwd.getpwnam(BENCH_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", BENCH_USER],
                check=True,
            )
            user = pwd.getpwnam(BENCH_USER)
        prefix = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
        python = sandbox_python(needs_world_readable=True)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "trainer")}
    done = subprocess.run(
        [*prefix, python, *command], capture_output=True, text=True, env=env, cwd="/", check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", choices=("namespace", "process"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.answers, args.concurrency)))
        return
    from kubefusion_trainer.scoring.containment import probe_namespaces

    modes = ["process"] + (["namespace"] if os.geteuid() == 0 and probe_namespaces() else [])
    results = {mode: run_mode(mode, args.answers, args.concurrency) for mode in modes}
    cores = min(args.concurrency, len(os.sched_getaffinity(0)))
    print(
        f"{args.answers} answers ({len(KINDS)} kinds), concurrency {args.concurrency}, {cores} cores usable"
    )
    print(
        f"{'mode':<10} {'uid':>6} {'answers/s':>10} {'/s/core':>8} {'CPU ms/answer':>14} {'answers/CPU-s':>14}"
    )
    for mode, r in results.items():
        rate = args.answers / r["wall"]
        print(
            f"{mode:<10} {r['uid']:>6} {rate:>10.1f} {rate / cores:>8.1f} {1000 * r['cpu'] / args.answers:>14.1f}"
            f" {args.answers / r['cpu']:>14.1f}"
        )
    for mode, r in results.items():
        print(f"  {mode}: {r['isolation']}")
    if len(results) == 2:
        process, namespace = results["process"], results["namespace"]
        ratio = (args.answers / process["wall"]) / (args.answers / namespace["wall"])
        cpu_ratio = namespace["cpu"] / process["cpu"]
        print(
            f"process / namespace: {ratio:.2f}x the answers per second per core, {cpu_ratio:.2f}x per CPU-second"
        )
        same = process["verdicts"] == namespace["verdicts"]
        print(f"verdicts identical in both modes: {same}")
        if not same:
            raise SystemExit("the two modes disagree")
    else:
        print("namespace mode needs root and permitted namespaces: only the process mode ran")


if __name__ == "__main__":
    main()
