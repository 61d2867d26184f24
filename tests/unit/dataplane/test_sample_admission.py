"""Admission control and stall timeouts: what the server runs stays within the budget, stalls are retried
without duplicating answers, long answers that keep streaming never time out, transformers-serve streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dataplane_sample_helpers import SimServer, make_job, make_prompts

from kubefusion_trainer.sampling.admission import Admission
from kubefusion_trainer.sampling.client import Endpoint, RetryPolicy
from kubefusion_trainer.sampling.metrics import SampleMetrics
from kubefusion_trainer.sampling.requests import BadResponse
from kubefusion_trainer.sampling.runner import run_job
from kubefusion_trainer.sampling.stream import StreamError, read_stream
from kubefusion_trainer.shards import iter_folder

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=20)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        yield http


async def started(**kwargs: Any) -> SimServer:
    server = SimServer(**kwargs)
    await server.start()
    return server


def exactly_once(folder: Path, prompts: list[dict], n: int) -> None:
    keys = [(r["prompt_id"], r["sample_index"]) for r in iter_folder(folder)]
    assert len(keys) == len(set(keys)), "an answer was kept twice"
    assert set(keys) == {(p["prompt_id"], i) for p in prompts for i in range(n)}


async def test_admission_is_first_come_first_served_and_caps_big_requests() -> None:
    admission = Admission(6)
    assert await admission.acquire(4) == 4
    order: list[str] = []

    async def take(name: str, units: int) -> None:
        await admission.acquire(units)
        order.append(name)

    big = asyncio.create_task(take("big", 100))  # more than the budget: waits for all of it
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 1))  # would fit now, but queues behind the big one
    await asyncio.sleep(0.01)
    assert order == [] and admission.free == 2
    admission.release(4)
    await asyncio.wait_for(big, 1)
    assert order == ["big"] and admission.free == 0
    admission.release(6)
    await asyncio.wait_for(small, 1)
    assert order == ["big", "small"] and admission.in_flight == 1


async def test_a_cancelled_waiter_leaves_no_units_behind() -> None:
    admission = Admission(2)
    await admission.acquire(2)
    waiter = asyncio.create_task(admission.acquire(2))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    admission.release(2)
    assert admission.free == 2 and await admission.acquire(2) == 2


async def test_the_server_never_runs_more_answers_than_the_budget(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # 64 slots and lengths that vary, so answers of one request finish at different times
    server = await started(slots=64, ms_per_token=2.0, mean_tokens=20, sigma=0.8, chunk_seconds=0.02)
    try:
        prompts = make_prompts(24)
        ep = Endpoint("a", server.base_url, session, max_in_flight=7, retry=FAST_RETRY)
        await run_job(make_job(tmp_path, prompts, n=3, max_tokens=200), ep)
        exactly_once(tmp_path, prompts, 3)
        assert 3 <= server.engine.stats.max_running <= 7
        assert server.stats.streams == server.stats.requests == 24  # one streamed request per prompt
        assert ep.admission.free == 7
    finally:
        await server.stop()


async def test_answers_give_their_units_back_as_each_one_finishes(session: aiohttp.ClientSession) -> None:
    server = await started(slots=64, ms_per_token=5.0, mean_tokens=30, sigma=1.2, chunk_seconds=0.01)
    try:
        ep = Endpoint("a", server.base_url, session, max_in_flight=5, retry=FAST_RETRY)
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 5, "max_tokens": 200}
        lengths = sorted(server.answer_length(body, i) for i in range(5))
        assert lengths[0] < lengths[-1]  # the draw differs per choice
        seen: set[int] = set()
        task = asyncio.create_task(ep.complete(body))
        while not task.done():
            seen.add(ep.admission.free)
            await asyncio.sleep(0.002)
        assert len((await task).choices) == 5
        assert seen & {1, 2, 3, 4}, f"units came back only at the end: {sorted(seen)}"
    finally:
        await server.stop()


async def test_a_stalled_stream_is_retried_and_no_answer_is_kept_twice(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    def stall_first_three(number: int, body: dict) -> str | None:
        return "stall" if number < 3 else None

    server = await started(ms_per_token=1.0, answer_tokens=5, fault=stall_first_three, hang_seconds=30)
    metrics = SampleMetrics()
    try:
        prompts = make_prompts(6)
        ep = Endpoint(
            "a",
            server.base_url,
            session,
            max_in_flight=8,
            stall_timeout=0.3,
            retry=FAST_RETRY,
            metrics=metrics,
        )
        await run_job(make_job(tmp_path, prompts, n=2), ep)
        exactly_once(tmp_path, prompts, 2)
        assert server.stats.faults == {"stall": 3}
        assert metrics.value("errors", source="a", kind="timeout") == 3
        assert server.stats.duplicate_tokens == 0
        assert server.engine.stats.aborted_sequences == 0  # the stalled answers had finished decoding
    finally:
        await server.stop()


async def test_a_long_answer_that_keeps_streaming_never_times_out(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # each answer takes 100 tokens x 8 ms = 0.8 s, twice the stall timeout; chunks come every 0.05 s
    server = await started(ms_per_token=8.0, answer_tokens=100, chunk_seconds=0.05)
    metrics = SampleMetrics()
    try:
        prompts = make_prompts(3)
        ep = Endpoint("a", server.base_url, session, stall_timeout=0.4, retry=FAST_RETRY, metrics=metrics)
        await run_job(make_job(tmp_path, prompts, n=2, max_tokens=200), ep)
        exactly_once(tmp_path, prompts, 2)
        assert metrics.value("errors", source="a", kind="timeout") == 0
        assert metrics.value("retries", source="a") == 0
    finally:
        await server.stop()


async def test_a_client_that_gives_up_makes_the_server_abort_its_request(
    session: aiohttp.ClientSession,
) -> None:
    server = await started(slots=4, ms_per_token=50.0, answer_tokens=1000, chunk_seconds=10)
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
        with pytest.raises(TimeoutError):
            async with session.post(
                f"{server.base_url}/chat/completions", json=body, timeout=aiohttp.ClientTimeout(sock_read=0.3)
            ) as response:
                await response.read()
        deadline = asyncio.get_running_loop().time() + 10
        while server.engine.stats.aborted_sequences == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert server.engine.stats.aborted_sequences == 1
        assert server.engine.stats.wasted_tokens > 0
    finally:
        await server.stop()


async def _lines(*chunks: str) -> AsyncIterator[bytes]:
    for chunk in chunks:
        for line in chunk.splitlines(keepends=True):
            yield line.encode()


async def test_stream_reading_accepts_transformers_serve_and_refuses_broken_streams() -> None:
    # transformers serve: role chunk, content chunks, a finish chunk with usage, no [DONE]
    done: list[int] = []
    completion = await read_stream(
        _lines(
            'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
            'data: {"choices":[{"index":0,"delta":{"content":"4"}}]}\n\n',
            'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
            '"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n',
        ),
        done.append,
    )
    assert [c.content for c in completion.choices] == ["4"] and completion.completion_tokens == 1
    assert done == [0]
    with pytest.raises(BadResponse, match="unfinished"):
        await read_stream(_lines('data: {"choices":[{"index":0,"delta":{"content":"4"}}]}\n\n'))
    with pytest.raises(StreamError, match="out of memory"):
        await read_stream(_lines('data: {"error": "out of memory"}\n\n'))
    with pytest.raises(BadResponse, match="not JSON"):
        await read_stream(_lines("data: <html>\n\n"))


async def test_the_simulated_server_refuses_past_its_queue_and_decodes_slower_when_full(
    session: aiohttp.ClientSession,
) -> None:
    server = await started(slots=2, ms_per_token=1.0, ms_per_seq=1.0, answer_tokens=10_000, queue_limit=3)
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 2}
        url = f"{server.base_url}/chat/completions"
        first = asyncio.create_task(session.post(url, json=body))  # fills both slots
        second = asyncio.create_task(session.post(url, json=body))  # waits: 2 of 3 queue places
        deadline = asyncio.get_running_loop().time() + 10
        while server.stats.requests < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        async with session.post(url, json=body) as refused:  # 2 more would make 4 waiting
            assert refused.status == 503 and "queue full" in (await refused.text())
        assert server.engine.stats.refused_requests == 1
        assert server.engine.step_seconds(2) == pytest.approx(0.003)  # 1 ms + 1 ms per running answer
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await server.stop()
