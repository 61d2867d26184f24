"""Operator benchmark: many FusionRuns against the Kubernetes emulator, the operator in its own process.

    PYTHONPATH=operator:trainer:tests/integration/operator python benchmarks/bench_operator.py [--runs 200]

The benchmark plays the cluster in lockstep: at each step it completes the live child of every run
(Job Complete, Deployment ready, PyTorchJob Succeeded) and measures, per run, the time from that
write to the next child the operator creates, and the API requests the operator made for the step.
It runs a small fleet and the full one side by side and prints the ratios (how the operator scales).
The operator is `python -m kubefusion_operator operator` (real kopf, default timings) in a
subprocess, so its CPU time and peak RSS are its own (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    str(REPO / "operator"),
    str(REPO / "trainer"),
    str(REPO / "tests" / "integration" / "operator"),
]

import yaml  # noqa: E402
from op_cluster import DEPLOYMENTS, JOBS, PYTORCHJOBS, RUNS, Cluster  # noqa: E402
from op_emulator import RecordingEmulator, emulator_server, write_kubeconfig  # noqa: E402

CHILD_PLURALS = ("deployments", "jobs", "pytorchjobs")


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, peak


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def live_children(emu: RecordingEmulator, run: str) -> list[tuple[str, dict]]:
    out = []
    for key in (DEPLOYMENTS, JOBS, PYTORCHJOBS):
        out += [
            (key, o) for o in emu.live(key, "bench") if o["metadata"]["labels"]["kubefusion.dev/run"] == run
        ]
    return out


def finished(emu: RecordingEmulator, run: str) -> bool:
    status = (emu.find(RUNS, "bench", run) or {}).get("status") or {}
    return any(c["type"] == "Succeeded" and c["status"] == "True" for c in status.get("conditions", []))


async def step(emu: RecordingEmulator, cluster: Cluster, runs: list[str]) -> tuple[str, list[float], int]:
    """Complete the pending children of every run; wait for each run's next child."""
    stage = ""
    mark = len(emu.timeline)
    requests_before = len(emu.api_requests)
    started: dict[str, float] = {}
    for run in runs:
        for key, obj in live_children(emu, run):
            name = obj["metadata"]["name"]
            if key == DEPLOYMENTS and not (obj.get("status") or {}).get("readyReplicas"):
                await cluster.ready(name)
            elif key == JOBS and not (obj.get("status") or {}).get("conditions"):
                await cluster.complete(name)
            elif key == PYTORCHJOBS and not (obj.get("status") or {}).get("conditions"):
                await cluster.train(name)
            else:
                continue
            stage = stage or obj["metadata"]["labels"]["kubefusion.dev/stage"]
            started.setdefault(run, time.monotonic())
    latencies: dict[str, float] = {}
    deadline = time.monotonic() + 300
    scanned = mark
    last_finished_check = 0.0
    while len(latencies) < len(started) and time.monotonic() < deadline:
        end = len(emu.timeline)
        for i in range(scanned, end):
            kind, plural, name = emu.timeline[i]
            if kind == "ADDED" and plural in CHILD_PLURALS:
                run = name.split("-", 1)[0]  # children are named <run>-<suffix>; runs have no "-"
                if run in started and run not in latencies:
                    latencies[run] = emu.timeline_times[i] - started[run]
        scanned = end
        if time.monotonic() - last_finished_check > 0.5:  # cheap polling: the emulator shares this loop
            last_finished_check = time.monotonic()
            for run in started:
                if run not in latencies and finished(emu, run):
                    latencies[run] = float("nan")  # the last step: nothing comes next
        await asyncio.sleep(0.02)
    if len(latencies) < len(started):
        print(f"  step timed out: {len(started) - len(latencies)} runs got no next child", file=sys.stderr)
    # Let the stragglers' reconciles land before counting requests.
    await asyncio.sleep(0.5)
    operator_requests = len(emu.api_requests) - requests_before
    return stage, [v for v in latencies.values() if v == v], operator_requests


async def bench(count: int, tmp: Path) -> dict:
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    async with emulator_server() as emu:
        emu.namespaces.add("bench")
        kubeconfig = write_kubeconfig(tmp / f"kubeconfig-{count}", str(emu.url), namespace="bench")
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer")]),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubefusion_operator",
            "operator",
            "--metrics-port",
            "-1",
            "--health-port",
            "-1",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            runs = [f"r{i:04d}" for i in range(count)]
            for run in runs:
                body = copy.deepcopy(doc)
                body["metadata"] = {"name": run}
                resp = await emu.post("/apis/kubefusion.dev/v1alpha1/namespaces/bench/fusionruns", json=body)
                assert resp.status == 201
            start = time.monotonic()
            deadline = start + 300
            while not all(live_children(emu, r) for r in runs) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            first_child = time.monotonic() - start
            print(f"  {count} runs: first children after {first_child:.1f}s", file=sys.stderr, flush=True)
            cluster = Cluster(emu, "bench")
            rows = []
            while not all(finished(emu, r) for r in runs) and len(rows) < 20:
                rows.append(await step(emu, cluster, runs))
                print(
                    f"  {count} runs: {rows[-1][0]} done, latencies {sorted(rows[-1][1])[:1]}..{sorted(rows[-1][1])[-1:]}",
                    file=sys.stderr,
                    flush=True,
                )
            cpu, peak = proc_stats(proc.pid)
            return {
                "runs": count,
                "rows": rows,
                "first_child": first_child,
                "cpu": cpu,
                "rss": peak,
                "wall": time.monotonic() - start,
                "done": sum(finished(emu, r) for r in runs),
            }
        finally:
            proc.terminate()
            await proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--small", type=int, default=20, help="the fleet size compared against")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = asyncio.run(bench(args.small, Path(tmp)))
        big = asyncio.run(bench(args.runs, Path(tmp)))
    print("\nkubefusion operator benchmark: quickstart FusionRuns (fusechat3, 2 sources), lockstep cluster\n")
    header = (
        f"{'step (stage completed)':<24} | {'median s':>8} {'p99 s':>7} {'req/run':>8} | "
        f"{'median s':>8} {'p99 s':>7} {'req/run':>8} | {'median x':>8} {'req/run x':>9}"
    )
    small_label, big_label = f"{small['runs']} runs", f"{big['runs']} runs"
    print(f"{'':<24} | {small_label:^25} | {big_label:^25} | {'ratio (big/small)':^19}")
    print(header)
    print("-" * len(header))
    for (stage, lat_s, req_s), (_, lat_b, req_b) in zip(small["rows"], big["rows"], strict=False):
        ms, mb = (
            (statistics.median(lat_s) if lat_s else float("nan")),
            (statistics.median(lat_b) if lat_b else float("nan")),
        )
        ps, pb = (
            (quantile(lat_s, 0.99) if lat_s else float("nan")),
            (quantile(lat_b, 0.99) if lat_b else float("nan")),
        )
        rs, rb = req_s / small["runs"], req_b / big["runs"]
        print(
            f"{stage:<24} | {ms:8.3f} {ps:7.3f} {rs:8.1f} | {mb:8.3f} {pb:7.3f} {rb:8.1f} | "
            f"{mb / ms if ms == ms and ms else float('nan'):8.2f} {rb / rs if rs else float('nan'):9.2f}"
        )
    print("-" * len(header))
    for label, key, fmt in [
        ("runs succeeded", "done", "{:.0f}"),
        ("first child after create, s", "first_child", "{:.2f}"),
        ("operator CPU, s", "cpu", "{:.1f}"),
        ("operator peak RSS, MiB", "rss", "{:.0f}"),
        ("wall, s", "wall", "{:.1f}"),
    ]:
        s_val = small[key] / (1 << 20) if key == "rss" else small[key]
        b_val = big[key] / (1 << 20) if key == "rss" else big[key]
        print(
            f"{label:<28} {fmt.format(s_val):>10} {fmt.format(b_val):>10}   ratio {b_val / s_val if s_val else float('nan'):.2f}"
        )
    print(
        f"operator CPU per run, ms: {1000 * small['cpu'] / small['runs']:.0f} ({small['runs']} runs), "
        f"{1000 * big['cpu'] / big['runs']:.0f} ({big['runs']} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
