"""The endpoint client and runner against a local simulated server: n handling, faults, deadlines, resume."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dataplane_sample_helpers import SimServer, make_job, make_prompts

from kubefusion_trainer.config import SamplingParams
from kubefusion_trainer.sampling.client import Endpoint, EndpointDown, RequestFailed, RetryPolicy
from kubefusion_trainer.sampling.metrics import SampleMetrics
from kubefusion_trainer.sampling.requests import request_body
from kubefusion_trainer.sampling.runner import run_job
from kubefusion_trainer.shards import chunk_files, iter_folder, read_jsonl

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=4)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def started(**kwargs: Any) -> SimServer:
    server = SimServer(ms_per_token=0.0, **kwargs)
    await server.start()
    return server


def endpoint(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> Endpoint:
    kwargs.setdefault("retry", FAST_RETRY)
    return Endpoint("a", url, http, **kwargs)


def check_exactly_n(folder: Path, prompts: list[dict], n: int) -> list[dict]:
    records = list(iter_folder(folder))
    per_prompt = Counter(r["prompt_id"] for r in records)
    assert per_prompt == {p["prompt_id"]: n for p in prompts}
    for pid in per_prompt:
        assert sorted(r["sample_index"] for r in records if r["prompt_id"] == pid) == list(range(n))
    return records


def test_request_body_sends_n_seed_and_penalty_only_when_they_matter() -> None:
    messages = [{"role": "user", "content": "hi"}]
    plain = request_body("m", messages, SamplingParams(), 1, 0)
    assert plain == {
        "model": "m",
        "messages": messages,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_tokens": 2048,
    }
    full = request_body("m", messages, SamplingParams(seed=10, repetition_penalty=1.1), 3, 2)
    assert (full["n"], full["seed"], full["repetition_penalty"]) == (3, 12, 1.1)


@pytest.mark.parametrize(
    ("max_choices", "extra", "requests"),
    [(None, 0, 6), (1, 0, 24), (2, 0, 6 * 2), (None, 2, 6)],
    ids=["honours-n", "ignores-n", "returns-fewer", "returns-more"],
)
async def test_exactly_n_records_per_prompt_whatever_the_server_does_with_n(
    tmp_path: Path, session: aiohttp.ClientSession, max_choices: int | None, extra: int, requests: int
) -> None:
    server = await started(max_choices=max_choices, extra_choices=extra)
    try:
        prompts = make_prompts(6)
        job = make_job(tmp_path, prompts, n=4)
        await run_job(job, endpoint(session, server.base_url), chunk_prompts=2)
        records = check_exactly_n(tmp_path, prompts, 4)
        assert server.stats.requests == requests
        assert {r["sampling"]["model"] for r in records} == {"org/a"}
        assert {b["model"] for b in server.stats.bodies} == {"org/a"}
        if max_choices == 1:  # one request per sample: seed + sample index
            assert {r["sample_index"]: r["sampling"]["seed"] for r in records} == {i: 7 + i for i in range(4)}
            assert all(r["usage"]["choices_in_request"] == 1 for r in records)
    finally:
        await server.stop()


def flaky(number: int, body: dict) -> str | None:
    faults = {0: "500", 1: "429", 2: "drop", 3: "hang", 4: "503", 5: "garbage"}
    return faults.get(number % 7) if number < 60 else None


async def test_intermittent_500_429_drops_and_timeouts_still_deliver_every_sample(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    server = await started(fault=flaky, hang_seconds=1.0, max_choices=1)
    metrics = SampleMetrics()
    try:
        prompts = make_prompts(8)
        ep = endpoint(
            session,
            server.base_url,
            stall_timeout=0.3,
            deadline=30,
            metrics=metrics,
            retry=RetryPolicy(base_delay=0.01, max_delay=0.05, max_attempts=50),
        )
        await run_job(make_job(tmp_path, prompts, n=3), ep)
        check_exactly_n(tmp_path, prompts, 3)
        assert set(server.stats.faults) == {"500", "429", "drop", "hang", "503", "garbage"}
        assert metrics.value("retries", source="a") >= sum(server.stats.faults.values())
        assert metrics.value("errors", source="a", kind="timeout") >= 1
        assert metrics.value("errors", source="a", kind="connection") >= 1
        assert metrics.value("errors", source="a", kind="bad_response") >= 1
        assert metrics.value("samples", source="a") == 24
    finally:
        await server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_dead_endpoint_fails_with_a_clear_error_after_its_deadline(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(EndpointDown) as error:
        await run_job(make_job(tmp_path, make_prompts(3), n=2), endpoint(session, url, deadline=0.5))
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 5
    assert url in str(error.value) and "'a'" in str(error.value) and "deadline 0.5s" in str(error.value)


async def test_a_request_the_server_refuses_fails_at_once_naming_the_status(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    server = await started(fault=lambda number, body: "422")
    try:
        with pytest.raises(RequestFailed, match="HTTP 422"):
            await run_job(make_job(tmp_path, make_prompts(2), n=2), endpoint(session, server.base_url))
        assert server.stats.requests <= 2  # no retries of a 4xx
    finally:
        await server.stop()


def poison(content: str, status: str = "500") -> Callable[[int, dict], str | None]:
    return lambda number, body: status if body["messages"][-1]["content"] == content else None


async def test_a_request_that_keeps_failing_while_others_succeed_gives_up(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    server = await started(fault=poison("question 5"))
    try:
        with pytest.raises(RequestFailed, match="failed one request 4 times"):
            await run_job(
                make_job(tmp_path, make_prompts(12), n=2),
                endpoint(session, server.base_url, max_in_flight=2, deadline=60),
            )
    finally:
        await server.stop()


async def test_finished_prompts_survive_a_failure_and_a_rerun_only_does_the_rest(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    prompts = make_prompts(10)
    server = await started(fault=poison("question 6", "400"))
    try:
        with pytest.raises(RequestFailed):
            await run_job(
                make_job(tmp_path, prompts, n=3),
                endpoint(session, server.base_url, max_in_flight=1),
                chunk_prompts=4,
            )
    finally:
        await server.stop()
    committed = [r for chunk in chunk_files(tmp_path) for r in read_jsonl(chunk)]
    done = Counter(r["prompt_id"] for r in committed)
    assert set(done.values()) == {3}  # whole prompts only
    assert set(done) == {p["prompt_id"] for p in prompts[:6]}  # concurrency 1: prompts 0-5 finished in order

    server = await started()
    try:
        job = make_job(tmp_path, prompts, n=3)
        counts = await run_job(job, endpoint(session, server.base_url))
        assert counts == {"prompts": 10, "skipped": 6, "sampled": 4}
        assert server.stats.requests == 4
        check_exactly_n(tmp_path, prompts, 3)
    finally:
        await server.stop()


async def test_a_rerun_after_the_prompt_set_grew_samples_only_the_new_prompts(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    prompts = make_prompts(8)
    server = await started()
    try:
        await run_job(make_job(tmp_path, prompts[:5], n=2), endpoint(session, server.base_url))
        assert server.stats.requests == 5
        counts = await run_job(make_job(tmp_path, prompts, n=2), endpoint(session, server.base_url))
        assert counts == {"prompts": 8, "skipped": 5, "sampled": 3}
        assert server.stats.requests == 8
        check_exactly_n(tmp_path, prompts, 2)
        counts = await run_job(make_job(tmp_path, prompts, n=2), endpoint(session, server.base_url))
        assert counts["sampled"] == 0 and server.stats.requests == 8  # complete: nothing asked again
    finally:
        await server.stop()


async def test_chunks_commit_on_time_as_well_as_on_count(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    server = SimServer(slots=1, ms_per_token=10.0, answer_tokens=5)  # 50 ms per answer, one at a time
    await server.start()
    try:
        job = make_job(tmp_path, make_prompts(6), n=1)
        task = asyncio.ensure_future(
            run_job(job, endpoint(session, server.base_url), chunk_prompts=100, chunk_seconds=0.08)
        )
        deadline = time.monotonic() + 10
        while not chunk_files(tmp_path) and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert chunk_files(tmp_path), "no chunk was committed before the job ended"
        await task
    finally:
        await server.stop()
