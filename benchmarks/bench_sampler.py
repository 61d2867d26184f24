"""Sampler throughput against a simulated server, side by side with a naive client, in one run.

The server (benchmarks/sim_openai_server.py, a separate process) has `slots` decode slots and takes
answer_tokens x ms_per_token per answer; capacity = slots / (answer_tokens x ms_per_token) answers/s.
  ours            kubefusion's sampler (runner + endpoint client, chunk commits to a temp folder included)
  ours (no n)     the same against a server that ignores `n` (like `transformers serve`)
  naive           one request per sample, fixed batches of 50 awaited in turn (common pipeline code)
Goal: ours >= 95% of the server's capacity.

    PYTHONPATH=operator:trainer /work/main/.venv/bin/python benchmarks/bench_sampler.py
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "trainer"))

from kubefusion_trainer.config import SamplingParams  # noqa: E402
from kubefusion_trainer.records import prompt_id  # noqa: E402
from kubefusion_trainer.sampling.client import Endpoint  # noqa: E402
from kubefusion_trainer.sampling.runner import SampleJob, run_job  # noqa: E402
from kubefusion_trainer.shards import ShardWriter, iter_folder  # noqa: E402


def start_server(args: argparse.Namespace, max_choices: int | None) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        str(Path(__file__).with_name("sim_openai_server.py")),
        "--slots",
        str(args.slots),
        "--ms-per-token",
        str(args.ms_per_token),
        "--answer-tokens",
        str(args.answer_tokens),
    ]
    if max_choices is not None:
        command += ["--max-choices", str(max_choices)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints its port once it listens
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"simulated server did not start: {line!r}")
    return process, f"http://127.0.0.1:{int(line.split()[1])}/v1"


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


async def run_ours(
    base_url: str, prompts: list[dict], n: int, params: SamplingParams, concurrency: int
) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as folder:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            endpoint = Endpoint("bench", base_url, http, concurrency=concurrency)
            job = SampleJob("bench", "sim", "bench", params, n, prompts, ShardWriter(folder, 0, 1))
            start = time.perf_counter()
            await run_job(job, endpoint)
            elapsed = time.perf_counter() - start
        return sum(1 for _ in iter_folder(folder)), elapsed


async def run_naive(
    base_url: str, prompts: list[dict], n: int, params: SamplingParams, batch: int
) -> tuple[int, float]:
    work = [(p, i) for p in prompts for i in range(n)]
    answers = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(prompt: dict, index: int) -> int:
            body = {
                "model": "sim",
                "messages": prompt["messages"],
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": params.max_tokens,
                "seed": index,
            }
            async with http.post(f"{base_url}/chat/completions", json=body) as response:
                response.raise_for_status()
                return len((await response.json())["choices"])

        start = time.perf_counter()
        for offset in range(0, len(work), batch):
            answers += sum(await asyncio.gather(*(one(p, i) for p, i in work[offset : offset + batch])))
        elapsed = time.perf_counter() - start
    return answers, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=320)
    parser.add_argument("--n", type=int, default=5, help="samples per prompt")
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--ms-per-token", type=float, default=1.0)
    parser.add_argument("--answer-tokens", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=256, help="our sampler's --concurrency")
    parser.add_argument("--naive-batch", type=int, default=50)
    args = parser.parse_args(argv)

    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.answer_tokens, seed=0)
    prompts = make_prompts(args.prompts)
    capacity = args.slots / (args.answer_tokens * args.ms_per_token / 1000.0)
    servers = {"honours n": start_server(args, None), "ignores n": start_server(args, 1)}
    try:
        rows = [
            (
                "ours",
                asyncio.run(run_ours(servers["honours n"][1], prompts, args.n, params, args.concurrency)),
            ),
            (
                "ours (no n)",
                asyncio.run(run_ours(servers["ignores n"][1], prompts, args.n, params, args.concurrency)),
            ),
            (
                "naive",
                asyncio.run(run_naive(servers["honours n"][1], prompts, args.n, params, args.naive_batch)),
            ),
        ]
    finally:
        for process, _ in servers.values():
            process.kill()
            process.wait()

    naive_rate = rows[-1][1][0] / rows[-1][1][1]
    print(
        f"server: {args.slots} slots, {args.ms_per_token:g} ms/token, {args.answer_tokens} tokens/answer "
        f"-> capacity {capacity:.1f} samples/s; {args.prompts} prompts x N={args.n}"
    )
    print(f"{'client':<14}{'samples':>9}{'wall s':>9}{'samples/s':>11}{'% capacity':>12}{'vs naive':>10}")
    for name, (samples, elapsed) in rows:
        rate = samples / elapsed
        print(
            f"{name:<14}{samples:>9}{elapsed:>9.2f}{rate:>11.1f}{100 * rate / capacity:>11.1f}%"
            f"{rate / naive_rate:>9.2f}x"
        )
    expected = args.prompts * args.n
    if any(samples != expected for _, (samples, _) in rows):
        print(f"ERROR: expected {expected} samples from every client", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
