"""`kubefusion stage sample --config FILE [options]`: N answers per prompt from each source (or the SFT target).

  --phase sources   every source answers its datasets' sft + pref prompts, N = dataset.samplesPerSource;
                    endpoint RunConfig.endpoints[source name], request model = the source's `model`
  --phase target    the SFT target answers the pref prompts, N = target.samplesPerPrompt; endpoint
                    endpoints["target"], request model = --model, by default the only model the endpoint
                    lists at GET /models (vLLM), else the path of train/sft/final (transformers serve)
Held-out (eval) prompts are never sampled. `--shard I/N` takes the prompts whose id, read as a hex number, is
I modulo N: disjoint, deterministic subsets for the pods of an Indexed Job. Output: samples/<phase>/<model>/
<dataset>/shard-I-of-N.jsonl (SampleRecords), committed in chunks while running (shards.py); a rerun after a
kill at any moment skips what is committed and loses nothing. `--max-in-flight` bounds the answers being
generated at once per endpoint (this shard's share of the server replica's batch; sampling/admission.py);
answers stream, and `--stall-timeout` retries a request only when the server stops sending.

Completion records (state/): sample-<phase>-<source> per source, and sample-<phase> once every source of the
phase is done (phase target: sample-target only), each with the suffix -shard-I-of-N when sharded.
Exit status 1 when a source failed (its error names the endpoint and source; other sources still finish and
keep their shards), 2 on a bad config, 143 on SIGTERM (after committing every finished prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

from kubefusion_trainer.atomic import atomic_write_json
from kubefusion_trainer.config import RunConfig, load_run_config
from kubefusion_trainer.layout import TARGET_MODEL_NAME, Phase, RunLayout
from kubefusion_trainer.progress import ProgressReporter
from kubefusion_trainer.records import PromptRecord
from kubefusion_trainer.sampling.client import Endpoint, RetryPolicy
from kubefusion_trainer.sampling.metrics import SampleMetrics
from kubefusion_trainer.sampling.runner import SampleJob, run_jobs
from kubefusion_trainer.shards import ShardWriter, in_prompt_shard, read_jsonl


class PlanError(ValueError):
    pass


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return index, count


def in_shard(pid: str, index: int, count: int) -> bool:
    return in_prompt_shard(pid, index, count)  # the score stage splits its work the same way


def load_prompts(layout: RunLayout, dataset: str) -> list[PromptRecord]:
    path = layout.prompts_file(dataset)
    if not path.is_file():
        raise PlanError(f"{path} is missing: run `kubefusion stage prepare` first")
    return read_jsonl(path)  # type: ignore[return-value]


def plan_jobs(
    run: RunConfig,
    phase: Phase,
    shard: tuple[int, int] = (0, 1),
    only_sources: Sequence[str] | None = None,
    target_model: str | None = None,
) -> list[SampleJob]:
    """The (model, dataset) jobs of this shard, with the prompts each must answer."""
    layout = RunLayout(run.storage_root)
    spec = run.spec
    index, count = shard
    known = {s.name for s in spec.sources}
    for name in only_sources or ():
        if name not in known:
            raise PlanError(
                f"--source {name!r} is not a source of this run (known: {', '.join(sorted(known))})"
            )
    jobs = []
    for dataset in spec.datasets:
        prompts = [p for p in load_prompts(layout, dataset.name) if in_shard(p["prompt_id"], index, count)]
        if phase == "target":
            models = [
                (
                    TARGET_MODEL_NAME,
                    target_model or str(layout.final_model("sft")),
                    spec.target.sampling,
                    spec.target.samples_per_prompt,
                )
            ]
            wanted = [p for p in prompts if p.get("split") == "pref"]
        else:
            models = [
                (s.name, s.model, s.sampling, dataset.samples_per_source)
                for s in spec.dataset_sources(dataset)
                if not only_sources or s.name in only_sources
            ]
            wanted = [p for p in prompts if p.get("split") in ("sft", "pref")]
        for name, model, params, n in models:
            writer = ShardWriter(layout.samples_dir(phase, name, dataset.name), index, count)
            jobs.append(SampleJob(name, model, dataset.name, params, n, wanted, writer))
    return jobs


def record_name(phase: Phase, source: str | None, shard: tuple[int, int]) -> str:
    name = f"sample-{phase}" if source is None or phase == "target" else f"sample-{phase}-{source}"
    return name if shard[1] == 1 else f"{name}-shard-{shard[0]}-of-{shard[1]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubefusion stage sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the run config file (RunConfig YAML/JSON)")
    parser.add_argument(
        "--phase",
        choices=["sources", "target"],
        default="sources",
        help="sample the sources (default) or the SFT target",
    )
    parser.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="NAME",
        help="sample only this source (repeatable; phase sources)",
    )
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        metavar="I/N",
        help="handle shard I of N of the prompts (Indexed Job index / completions)",
    )
    parser.add_argument(
        "--max-in-flight",
        "--concurrency",
        dest="max_in_flight",
        type=int,
        default=256,
        metavar="ANSWERS",
        help="answers being generated at once per endpoint: this shard's share of what the server replica "
        "runs (vLLM --max-num-seqs); a request for n answers counts n. The operator sets it (default 256)",
    )
    parser.add_argument(
        "--stall-timeout",
        "--request-timeout",
        dest="stall_timeout",
        type=float,
        default=300.0,
        help="seconds without a byte from the server (first token included) before a request is retried; "
        "answers stream, so a long answer never times out (default 300)",
    )
    parser.add_argument(
        "--endpoint-deadline",
        type=float,
        default=600.0,
        help="seconds an endpoint may fail every request before the stage gives up (default 600)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=10,
        help="attempts of one request while its endpoint answers others (default 10)",
    )
    parser.add_argument(
        "--chunk-prompts",
        type=int,
        default=64,
        help="commit a chunk every this many finished prompts (default 64)",
    )
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=30.0,
        help="... or this many seconds, whichever first (default 30)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="phase target: the request's model name (default: the one model the endpoint lists at /models, "
        "e.g. vLLM --served-model-name target; else the train/sft/final path, which transformers serve expects)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    return parser


async def served_model(http: aiohttp.ClientSession, base_url: str) -> str | None:
    """The model id an endpoint lists at GET /models when it lists exactly one; None when unknown."""
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with http.get(f"{base_url.rstrip('/')}/models", timeout=timeout) as response:
            if response.status != 200:
                return None
            data = await response.json(content_type=None)
        ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
        return ids[0] if len(ids) == 1 and isinstance(ids[0], str) else None
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        return None


async def run_sample(run: RunConfig, args: argparse.Namespace, reporter: ProgressReporter) -> int:
    phase: Phase = args.phase
    layout = RunLayout(run.storage_root)
    target_model = args.model
    if phase == "target" and target_model is None and run.endpoints.get(TARGET_MODEL_NAME):
        async with aiohttp.ClientSession() as http:
            target_model = await served_model(http, run.endpoints[TARGET_MODEL_NAME])
    jobs = plan_jobs(run, phase, args.shard, args.sources, target_model)
    metrics = SampleMetrics(reporter.registry)
    reporter.set_total(sum(len(job.prompts) * job.n for job in jobs))
    retry = RetryPolicy(max_attempts=args.max_attempts)
    # the endpoints bound concurrency themselves: no connection limit in the session
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        endpoints = {}
        for source in sorted({job.source for job in jobs}):
            url = run.endpoints.get(source)
            if not url:
                raise PlanError(f"endpoints has no URL for {source!r} (RunConfig.endpoints)")
            endpoints[source] = Endpoint(
                source,
                url,
                http,
                max_in_flight=args.max_in_flight,
                stall_timeout=args.stall_timeout,
                deadline=args.endpoint_deadline,
                retry=retry,
                metrics=metrics,
            )
        # SIGTERM (pod deletion, preemption): cancel, which commits every finished prompt before exiting
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / not POSIX
            loop.add_signal_handler(signal.SIGTERM, current.cancel)
        results = await run_jobs(jobs, endpoints, reporter.advance, args.chunk_prompts, args.chunk_seconds)
    failed: dict[str, list[str]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for (source, dataset), result in results.items():
        if isinstance(result, BaseException):
            failed.setdefault(source, []).append(f"{dataset}: {result}")
        else:
            counts.setdefault(source, {})[dataset] = result
            print(f"{source}/{dataset}: {result['prompts']} prompts ({result['skipped']} already done)")
    for source, datasets in counts.items():
        if source not in failed:
            atomic_write_json(
                layout.stage_record(record_name(phase, source, args.shard)),
                {
                    "stage": "sample",
                    "phase": phase,
                    "source": source,
                    "shard": list(args.shard),
                    "datasets": datasets,
                },
            )
    all_sources = {s.name for s in run.spec.sources} if phase == "sources" else {TARGET_MODEL_NAME}
    if not failed and (phase == "target" or set(counts) >= all_sources or not args.sources):
        atomic_write_json(
            layout.stage_record(record_name(phase, None, args.shard)),
            {"stage": "sample", "phase": phase, "shard": list(args.shard), "sources": counts},
        )
    for source, errors in failed.items():
        for error in errors:
            print(f"error: source {source}: {error}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run_config(args.config)
    except Exception as exc:  # yaml, pydantic and OS errors all name the problem
        print(f"{args.config}: invalid run config: {exc}", file=sys.stderr)
        return 2
    reporter = ProgressReporter("sample", unit="samples", metrics_port=args.metrics_port)
    try:
        return asyncio.run(run_sample(run, args, reporter))
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("interrupted: finished prompts are committed; rerun to continue", file=sys.stderr)
        return 143
    finally:
        reporter.close()
