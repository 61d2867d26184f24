"""Sampling at paper scale against a vLLM-like simulated server: the product, today's client and a naive one.

The server (sim_openai_server.py, a separate process, a fresh one per client) is shaped like one replica of
a 70B model on 4 H100s: 256 decode slots (--max-num-seqs), a decode step of 25 ms + 0.18 ms per running
answer (71 ms at 256: ~3,600 output tok/s, the published ~890 tok/s per H100 at TP4), answers drawn from a
lognormal with mean 500 tokens cut at max_tokens 2048 (a long tail), a queue of at most 8,192 waiting
answers (503 beyond), and a request aborted when its client disconnects (its tokens are wasted).
Simulated time runs fast (--time-scale real seconds per simulated second), and every figure below is in
simulated seconds; capacity is the server's output rate with every slot busy, so "% capacity" is measured
against the same clock in the same run.

  product    4 shards per replica (what the operator renders), each with the operator's --max-in-flight
             share of --max-num-seqs, streaming with the default stall timeout (300 s), released per answer
  today      the client before admission control (legacy_sampler.py): 4 shards x 256 requests of n=5, no
             streaming, a 600 s total timeout that counts queueing, the same retries; a shard that fails
             is restarted like a Job pod (backoffLimit 3) and skips what it committed
  naive      one answer per request, batches of 50 awaited in turn, no timeout (common pipeline code); run
             on the first --naive-answers answers only (its rate does not change with length)

Acceptance (issue 14): product >= 95% of capacity with zero timeouts and zero wasted tokens.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_sampler.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "trainer"))
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from legacy_sampler import LegacyEndpoint  # noqa: E402

from kubefusion_operator.api import ServingConfig  # noqa: E402
from kubefusion_operator.render.admission import shard_max_in_flight  # noqa: E402
from kubefusion_operator.render.jobs import BACKOFF_LIMIT, SHARDS_PER_REPLICA  # noqa: E402
from kubefusion_trainer.config import SamplingParams  # noqa: E402
from kubefusion_trainer.records import prompt_id  # noqa: E402
from kubefusion_trainer.sampling.client import Endpoint, RetryPolicy  # noqa: E402
from kubefusion_trainer.sampling.metrics import SampleMetrics  # noqa: E402
from kubefusion_trainer.sampling.runner import SampleJob, run_job  # noqa: E402
from kubefusion_trainer.shards import ShardWriter, iter_folder  # noqa: E402
from kubefusion_trainer.stages.sample import in_shard  # noqa: E402

PROFILE_70B = {"slots": 256, "base_ms": 25.0, "ms_per_seq": 0.18, "mean_tokens": 500.0, "sigma": 1.0}


@dataclass
class Row:
    name: str
    answers: int
    expected: int
    sim_seconds: float
    stats: dict[str, Any]
    timeouts: int = 0
    retries: int = 0
    failed_shards: int = 0


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        str(Path(__file__).with_name("sim_openai_server.py")),
        *("--slots", str(args.slots), "--base-ms", str(args.base_ms), "--ms-per-seq", str(args.ms_per_seq)),
        *("--mean-tokens", str(args.mean_tokens), "--sigma", str(args.sigma)),
        *("--queue-limit", str(args.queue_limit), "--time-scale", str(args.time_scale)),
        *("--chunk-seconds", str(args.chunk_seconds)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints its port once it listens
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"simulated server did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def server_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/sim/stats", timeout=30) as response:
        return json.loads(response.read())


def make_prompts(count: int) -> list[dict]:
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": f"benchmark prompt number {i}"}]
        prompts.append(
            {
                "prompt_id": prompt_id(messages),
                "dataset": "bench",
                "domain": "instruction",
                "messages": messages,
                "split": "pref",
            }
        )
    return prompts


async def run_shards(
    base_url: str, prompts: list[dict], args: argparse.Namespace, legacy: bool
) -> tuple[int, float, SampleMetrics, int]:
    """All shards of one source at once (one process stands for the shard pods); answers, sim s, metrics."""
    scale = args.time_scale
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    metrics = SampleMetrics()
    retry = RetryPolicy(base_delay=0.5 * scale, max_delay=30.0 * scale)
    shards = SHARDS_PER_REPLICA
    share = shard_max_in_flight(ServingConfig(extra_args=["--max-num-seqs", str(args.slots)]), shards)
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            def endpoint() -> Endpoint:
                common = {"metrics": metrics, "retry": retry, "deadline": 600.0 * scale}
                if legacy:
                    return LegacyEndpoint("bench", base_url, http, request_timeout=600.0 * scale, **common)
                return Endpoint(
                    "bench", base_url, http, max_in_flight=share, stall_timeout=300.0 * scale, **common
                )

            async def shard(index: int) -> None:
                nonlocal failed
                mine = [p for p in prompts if in_shard(p["prompt_id"], index, shards)]
                for _ in range(BACKOFF_LIMIT + 1):  # a failed pod is restarted; it skips committed prompts
                    job = SampleJob(
                        "bench", "sim", "bench", params, args.n, mine, ShardWriter(folder, index, shards)
                    )
                    try:
                        await run_job(job, endpoint())
                        return
                    except Exception:
                        failed += 1

            start = time.perf_counter()
            await asyncio.gather(*(shard(i) for i in range(shards)))
            elapsed = (time.perf_counter() - start) / scale
        return sum(1 for _ in iter_folder(folder)), elapsed, metrics, failed


async def run_naive(base_url: str, prompts: list[dict], args: argparse.Namespace) -> tuple[int, float]:
    work = [(p, i) for p in prompts for i in range(args.n)][: args.naive_answers]
    answers = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(prompt: dict, index: int) -> int:
            body = {
                "model": "sim",
                "messages": prompt["messages"],
                "max_tokens": args.max_tokens,
                "seed": index,
            }
            async with http.post(f"{base_url}/chat/completions", json=body) as response:
                response.raise_for_status()
                return len((await response.json())["choices"])

        start = time.perf_counter()
        for offset in range(0, len(work), args.naive_batch):
            answers += sum(
                await asyncio.gather(*(one(p, i) for p, i in work[offset : offset + args.naive_batch]))
            )
        elapsed = (time.perf_counter() - start) / args.time_scale
    return answers, elapsed


def run_client(name: str, args: argparse.Namespace, prompts: list[dict]) -> Row:
    process, base_url = start_server(args)
    try:
        if name == "naive":
            answers, seconds = asyncio.run(run_naive(base_url, prompts, args))
            return Row(
                name, answers, min(args.naive_answers, len(prompts) * args.n), seconds, server_stats(base_url)
            )
        answers, seconds, metrics, failed = asyncio.run(run_shards(base_url, prompts, args, name == "today"))
        stats = server_stats(base_url)
        timeouts = int(metrics.value("errors", source="bench", kind="timeout"))
        retries = int(metrics.value("retries", source="bench"))
        return Row(name, answers, len(prompts) * args.n, seconds, stats, timeouts, retries, failed)
    finally:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=3000, help="prompts in all (4 shards)")
    parser.add_argument("--n", type=int, default=5, help="answers per prompt")
    parser.add_argument("--slots", type=int, default=PROFILE_70B["slots"])
    parser.add_argument("--base-ms", type=float, default=PROFILE_70B["base_ms"])
    parser.add_argument("--ms-per-seq", type=float, default=PROFILE_70B["ms_per_seq"])
    parser.add_argument("--mean-tokens", type=float, default=PROFILE_70B["mean_tokens"])
    parser.add_argument("--sigma", type=float, default=PROFILE_70B["sigma"])
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--queue-limit", type=int, default=8192)
    parser.add_argument("--time-scale", type=float, default=0.05, help="real seconds per simulated second")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="simulated s between stream chunks")
    parser.add_argument("--naive-batch", type=int, default=50)
    parser.add_argument("--naive-answers", type=int, default=400)
    parser.add_argument("--clients", default="product,today,naive", help="comma-separated subset")
    args = parser.parse_args(argv)

    prompts = make_prompts(args.prompts)
    rows = [run_client(name, args, prompts) for name in args.clients.split(",")]
    capacity = rows[0].stats["capacity_tokens_per_second"]
    share = shard_max_in_flight(
        ServingConfig(extra_args=["--max-num-seqs", str(args.slots)]), SHARDS_PER_REPLICA
    )
    print(
        f"server: {args.slots} slots, step {args.base_ms:g} ms + {args.ms_per_seq:g} ms x batch, answers lognormal "
        f"mean {args.mean_tokens:g} (sigma {args.sigma:g}) cut at {args.max_tokens}, queue <= {args.queue_limit}; "
        f"capacity {capacity:,.0f} output tok/s; 1 simulated s = {args.time_scale * 1000:g} ms"
    )
    print(
        f"work: {args.prompts} prompts x n={args.n}; product: {SHARDS_PER_REPLICA} shards x --max-in-flight {share}"
    )
    header = (
        f"{'client':<9}{'answers':>9}{'sim s':>9}{'tok/s':>8}{'% cap':>7}{'busy':>6}{'timeouts':>9}{'retries':>8}"
        f"{'503s':>6}{'wasted tok':>11}{'dup tok':>8}{'max wait s':>11}{'failed':>7}"
    )
    print(header)
    ok = False
    for row in rows:
        s = row.stats
        useful = s["delivered_tokens"] - s["duplicate_tokens"]
        rate = useful / row.sim_seconds
        busy = s["busy_integral"] / (args.slots * s["sim_seconds"]) if s["sim_seconds"] else 0.0
        print(
            f"{row.name:<9}{row.answers:>9}{row.sim_seconds:>9.0f}{rate:>8.0f}{100 * rate / capacity:>6.1f}%"
            f"{100 * busy:>5.0f}%{row.timeouts:>9}{row.retries:>8}{s['refused_requests']:>6}"
            f"{s['wasted_tokens']:>11,}{s['duplicate_tokens']:>8,}{s['max_queue_wait']:>11.0f}{row.failed_shards:>7}"
        )
        if row.name == "product":
            ok = (
                row.answers == row.expected
                and rate / capacity >= 0.95
                and row.timeouts == 0
                and s["wasted_tokens"] + s["duplicate_tokens"] == 0
            )
    print("columns: % cap = useful output tokens per simulated second / capacity; busy = mean share of slots")
    print(
        "decoding; wasted = tokens of aborted answers; dup = answers delivered twice; failed = shard restarts"
    )
    print(f"product >= 95% of capacity, 0 timeouts, 0 wasted tokens: {'YES' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
