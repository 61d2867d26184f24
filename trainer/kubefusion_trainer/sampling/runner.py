"""Sample N answers per prompt for a set of jobs, exactly once, committing chunks as prompts finish.

A SampleJob is one (model, dataset, shard): its prompts, N, the sampling params, and a ShardWriter. Prompts run
concurrently (enough to keep the endpoint's admission budget full); as each prompt gets all N answers its records join the
pending chunk, which is committed every `chunk_prompts` prompts or `chunk_seconds` seconds, whichever first
(see shards.py for why that is exactly once). On an error the prompts already finished are committed before it
propagates, so a rerun only redoes what was in flight. When every prompt of a job is committed the shard is
finalised.

N per prompt: one request with n=N first (vLLM shares the prompt's prefill); missing answers (a server that
ignores n, like `transformers serve`, returns one) are asked for again. Once an endpoint is seen ignoring n,
its prompts are sent as N single-answer requests at once. Surplus choices are dropped: always exactly N.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kubefusion_trainer.config import SamplingParams
from kubefusion_trainer.records import PromptRecord, SampleRecord
from kubefusion_trainer.sampling.client import Endpoint
from kubefusion_trainer.sampling.requests import request_body, sample_record
from kubefusion_trainer.shards import ShardWriter

RAMP_STEP, RAMP_PAUSE = 8, 0.001  # launching many prompts at once: pause this long every this many


@dataclass
class SampleJob:
    source: str  # the name in records and metrics (a source name, or "target")
    model: str  # the request's `model` (vLLM --served-model-name / the path transformers serve loaded)
    dataset: str
    params: SamplingParams
    n: int
    prompts: list[PromptRecord]
    writer: ShardWriter
    counts: dict[str, int] = field(default_factory=dict)


async def sample_prompt(endpoint: Endpoint, job: SampleJob, prompt: PromptRecord) -> list[SampleRecord]:
    """Exactly job.n records for one prompt, sample_index 0..n-1."""
    records: dict[int, SampleRecord] = {}

    async def ask(first: int, count: int) -> None:
        body = request_body(job.model, prompt["messages"], job.params, count, first)
        completion = await endpoint.complete(body)
        got = completion.choices[:count]
        if count > 1 and len(got) < count and len(got) == 1:
            endpoint.honours_n = False
        elif count > 1 and len(got) == count:
            endpoint.honours_n = True
        for offset, choice in enumerate(got):
            records[first + offset] = sample_record(
                prompt,
                job.source,
                job.model,
                job.params,
                first + offset,
                choice,
                completion,
                count,
                body.get("seed"),
            )

    while len(records) < job.n:
        missing = [i for i in range(job.n) if i not in records]
        if endpoint.honours_n is False or len(missing) == 1:
            try:
                async with asyncio.TaskGroup() as group:  # one failure cancels the prompt's other requests
                    for i in missing:
                        group.create_task(ask(i, 1))
            except BaseExceptionGroup as errors:
                raise errors.exceptions[0] from None
        else:
            # ask for the missing run starting at the first gap (answers fill first, first+1, ...)
            first = missing[0]
            run = 1
            while first + run < job.n and first + run not in records:
                run += 1
            await ask(first, run)
    return [records[i] for i in range(job.n)]


async def run_job(
    job: SampleJob,
    endpoint: Endpoint,
    on_prompt_done: Callable[[int], None] | None = None,
    chunk_prompts: int = 64,
    chunk_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """Sample every prompt of the job not yet committed, then finalise its shard. Returns counts.

    on_prompt_done(samples) is called as answers are done (committed ones included, at the start).
    """
    done = job.writer.done_prompt_ids()
    todo = [p for p in job.prompts if p["prompt_id"] not in done]
    job.counts = {"prompts": len(job.prompts), "skipped": len(job.prompts) - len(todo), "sampled": 0}
    if on_prompt_done is not None and job.counts["skipped"]:
        on_prompt_done(job.counts["skipped"] * job.n)  # progress counts committed work too
    pending: list[SampleRecord] = []
    pending_prompts = 0
    last_commit = clock()

    def take() -> list[SampleRecord]:
        nonlocal pending, pending_prompts, last_commit
        records, pending = pending, []
        job.counts["sampled"] += pending_prompts
        pending_prompts, last_commit = 0, clock()
        return records

    async def commit() -> None:
        # in a thread: a slow fsync (network volumes) must not stall the requests in flight
        await asyncio.to_thread(job.writer.commit_chunk, take())

    in_flight: set[asyncio.Task[list[SampleRecord]]] = set()
    finished: asyncio.Queue[asyncio.Task[list[SampleRecord]]] = asyncio.Queue()  # O(1) per completion
    queue = iter(todo)
    limit = endpoint.prompts_in_flight(job.n)
    try:
        while True:
            launched = 0
            while len(in_flight) < limit and (prompt := next(queue, None)) is not None:
                task = asyncio.ensure_future(sample_prompt(endpoint, job, prompt))
                task.add_done_callback(finished.put_nowait)
                in_flight.add(task)
                launched += 1
                if launched % RAMP_STEP == 0:
                    # let the first requests reach the server before hundreds of connections compete
                    await asyncio.sleep(RAMP_PAUSE)
            if not in_flight:
                break
            ready = []
            try:
                async with asyncio.timeout(max(0.0, chunk_seconds - (clock() - last_commit))):
                    ready.append(await finished.get())
            except TimeoutError:
                pass
            while not finished.empty():
                ready.append(finished.get_nowait())
            in_flight.difference_update(ready)
            failed = [t for t in ready if t.cancelled() or t.exception() is not None]
            for task in ready:
                if not task.cancelled() and task.exception() is None:
                    pending.extend(task.result())
                    pending_prompts += 1
                    if on_prompt_done is not None:
                        on_prompt_done(job.n)
            if failed:  # finished prompts are committed below
                raise asyncio.CancelledError() if failed[0].cancelled() else failed[0].exception()  # type: ignore[misc]
            if pending_prompts >= chunk_prompts or clock() - last_commit >= chunk_seconds:
                await commit()  # an empty commit writes nothing but restarts the clock
    except BaseException:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for task in in_flight:  # prompts that finished while we were cancelling the rest
            if task.done() and not task.cancelled() and task.exception() is None:
                pending.extend(task.result())
                pending_prompts += 1
        job.writer.commit_chunk(take())  # synchronously: we may be being cancelled
        raise
    await commit()
    await asyncio.to_thread(job.writer.finalize)
    return job.counts


async def run_jobs(
    jobs: list[SampleJob],
    endpoints: dict[str, Endpoint],
    on_prompt_done: Callable[[int], None] | None = None,
    chunk_prompts: int = 64,
    chunk_seconds: float = 30.0,
) -> dict[tuple[str, str], BaseException | dict[str, int]]:
    """Run all jobs concurrently (each on its source's endpoint). One job's failure does not stop others:
    the result maps (source, dataset) to its counts or its exception."""

    async def one(job: SampleJob) -> dict[str, int]:
        return await run_job(job, endpoints[job.source], on_prompt_done, chunk_prompts, chunk_seconds)

    coroutines: list[Awaitable[Any]] = [one(job) for job in jobs]
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    return {(job.source, job.dataset): result for job, result in zip(jobs, results, strict=True)}
