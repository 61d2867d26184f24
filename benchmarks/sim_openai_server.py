"""A simulated OpenAI chat-completions server shaped like vLLM, with injectable faults.

Decoding is sim_engine.Engine: `slots` answers decode at once, a step takes base_ms + ms_per_seq x batch,
extra answers wait in a queue of at most `queue_limit` (beyond it: HTTP 503), and a request whose client
disconnects or times out is aborted (its decoded tokens are wasted), as vLLM does. Answer lengths are
`answer_tokens` each, or with `mean_tokens` a lognormal (long-tailed) draw cut at the request's max_tokens,
derived from (prompt, seed, choice) so that asking again gives the same answer. `time_scale` is real seconds
per simulated second (1: real time).

`stream: true` answers as vLLM does: server-sent chunks per choice (content deltas every `chunk_seconds` of
simulated time, a choice's finish_reason as soon as it ends), the usage chunk when stream_options asks, and
`[DONE]`. Nothing is sent while a request waits for a slot (time to first token includes the queue).

`max_choices` caps the choices per request (None: honour n like vLLM; 1: ignore n like transformers serve).
`extra_choices` adds surplus choices (a misbehaving server). `fault(request_number, body)` may return an HTTP
status as text ("500", "429" with Retry-After: 0, "422", ...), "garbage" (200 with a non-JSON body), "hang"
(answer only after `hang_seconds`), "drop" (close the connection) or "stall" (a stream that sends nothing for
`hang_seconds`).

GET /sim/stats reports the engine's counters (tokens delivered, wasted, duplicated; refusals; queue wait).
Used by benchmarks/bench_sampler.py and the sampler's fault tests. Standalone (prints "PORT <n>"):
    python benchmarks/sim_openai_server.py --slots 256 --base-ms 25 --ms-per-seq 0.18 --mean-tokens 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from sim_engine import Engine, QueueFull, SimRequest


@dataclass
class SimStats:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    choices: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    delivered_tokens: int = 0  # tokens of answers sent to a client in full
    duplicate_tokens: int = 0  # ... of answers (prompt, seed, choice) sent before
    streams: int = 0


class SimServer:
    def __init__(
        self,
        slots: int = 32,
        ms_per_token: float = 1.0,
        answer_tokens: int = 16,
        max_choices: int | None = None,
        extra_choices: int = 0,
        fault: Callable[[int, dict[str, Any]], str | None] | None = None,
        hang_seconds: float = 30.0,
        keep_bodies: bool = True,
        models: list[str] | None = None,
        *,
        ms_per_seq: float = 0.0,
        queue_limit: int | None = None,
        mean_tokens: float | None = None,
        sigma: float = 1.0,
        time_scale: float = 1.0,
        chunk_seconds: float = 1.0,
    ) -> None:
        self.engine = Engine(slots, ms_per_token, ms_per_seq, queue_limit, time_scale)
        self.slots = slots
        self.answer_tokens = answer_tokens
        self.mean_tokens = mean_tokens
        self.sigma = sigma
        self.max_choices = max_choices
        self.extra_choices = extra_choices
        self.fault = fault
        self.hang_seconds = hang_seconds
        self.keep_bodies = keep_bodies
        self.models = models  # what GET /v1/models lists; None: the route answers 404
        self.chunk_seconds = chunk_seconds
        self.stats = SimStats()
        self._delivered: set[str] = set()
        self._counter = itertools.count()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def capacity(self) -> float:
        """Answers per simulated second at full occupancy with fixed-length answers."""
        return self.engine.capacity_tokens_per_second() / self.answer_tokens

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/sim/stats", self._stats)
        # handler_cancellation: a client that disconnects cancels its handler, which aborts its request
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    async def stop(self) -> None:
        await self.engine.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        if self.models is None:
            raise web.HTTPNotFound()
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        self.engine._advance()
        return web.json_response(
            {
                **{k: v for k, v in asdict(self.stats).items() if k != "bodies"},
                **asdict(self.engine.stats),
                "sim_seconds": self.engine.clock(),
                "running": self.engine._running_count,
                "waiting": len(self.engine._waiting),
                "capacity_tokens_per_second": self.engine.capacity_tokens_per_second(),
            }
        )

    def answer_length(self, body: dict[str, Any], choice: int) -> int:
        limit = int(body.get("max_tokens") or 1 << 30)
        if self.mean_tokens is None:
            return min(self.answer_tokens, limit)
        key = f"{json.dumps(body.get('messages'), sort_keys=True)}|{body.get('seed')}|{choice}"
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        mu = math.log(self.mean_tokens) - self.sigma**2 / 2  # lognormal with this mean before the cut
        return max(1, min(limit, int(rng.lognormvariate(mu, self.sigma))))

    def _base_text(self, body: dict[str, Any], choice: int) -> str:
        prompt = body["messages"][-1]["content"]
        return f"answer to {prompt[:40]!r} seed={body.get('seed')} choice={choice}"

    def _delivered_once(self, body: dict[str, Any], choice: int, tokens: int) -> None:
        self.stats.delivered_tokens += tokens
        key = f"{json.dumps(body.get('messages'), sort_keys=True)}|{body.get('seed')}|{choice}"
        if key in self._delivered:
            self.stats.duplicate_tokens += tokens
        self._delivered.add(key)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        number = next(self._counter)
        self.stats.requests += 1
        body = await request.json()
        if self.keep_bodies:
            self.stats.bodies.append(body)
        fault = self.fault(number, body) if self.fault is not None else None
        if fault is not None:
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        if fault is not None and fault.isdigit():
            headers = {"Retry-After": "0"} if fault == "429" else {}
            return web.json_response(
                {"error": {"message": f"simulated {fault}"}}, status=int(fault), headers=headers
            )
        if fault == "garbage":
            return web.Response(text="<html>proxy error page</html>", content_type="text/html")
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
        n = int(body.get("n") or 1)
        count = (n if self.max_choices is None else min(n, self.max_choices)) + self.extra_choices
        try:
            sim = self.engine.submit([self.answer_length(body, i) for i in range(count)])
        except QueueFull as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=503)
        try:
            if body.get("stream"):
                return await self._stream(request, body, sim, stall=fault == "stall")
            for _ in range(count):
                await sim.events.get()
            return self._whole_answer(number, body, sim)
        finally:
            self.engine.abort(sim)  # a no-op once every sequence finished

    def _whole_answer(self, number: int, body: dict[str, Any], sim: SimRequest) -> web.Response:
        choices = []
        for sequence in sim.sequences:
            text = f"{self._base_text(body, sequence.index)} tokens={sequence.length}"
            choices.append(
                {
                    "index": sequence.index,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": _finish_reason(body, sequence.length),
                }
            )
            self._delivered_once(body, sequence.index, sequence.length)
        self.stats.choices += len(choices)
        return web.json_response(
            {
                "id": f"sim-{number}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": _usage(body, sim),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], sim: SimRequest, stall: bool
    ) -> web.StreamResponse:
        self.stats.streams += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        interval = self.chunk_seconds * self.engine.time_scale
        sent = [0] * len(sim.sequences)
        finished: set[int] = set()
        while len(finished) < len(sim.sequences):
            with contextlib.suppress(TimeoutError):
                finished.add(await asyncio.wait_for(sim.events.get(), interval))
            while not sim.events.empty():
                finished.add(sim.events.get_nowait())
            if stall:  # decoding goes on, nothing is ever sent: the client must notice and give up
                await asyncio.sleep(self.hang_seconds)
            deltas = []
            for sequence in sim.sequences:
                i, done = sequence.index, self.engine.progress(sequence)
                if sent[i] < 0 or (done <= sent[i] and i not in finished):
                    continue
                text = self._base_text(body, i) if sent[i] == 0 else ""
                delta: dict[str, Any] = {"content": f"{text} +{done - sent[i]}"}
                if sent[i] == 0:
                    delta["role"] = "assistant"
                choice = {"index": i, "delta": delta, "finish_reason": None}
                if i in finished:
                    choice["finish_reason"] = _finish_reason(body, sequence.length)
                    sent[i] = -1  # reported
                else:
                    sent[i] = done
                deltas.append(choice)
            if deltas:
                await response.write(_sse({"object": "chat.completion.chunk", "choices": deltas}))
        for sequence in sim.sequences:
            self._delivered_once(body, sequence.index, sequence.length)
        self.stats.choices += len(sim.sequences)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                _sse({"object": "chat.completion.chunk", "choices": [], "usage": _usage(body, sim)})
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _finish_reason(body: dict[str, Any], length: int) -> str:
    return "length" if body.get("max_tokens") and length >= int(body["max_tokens"]) else "stop"


def _usage(body: dict[str, Any], sim: SimRequest) -> dict[str, int]:
    prompt = len(str(body["messages"][-1]["content"]).split())
    completion = sum(s.length for s in sim.sequences)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@contextlib.contextmanager
def serve_in_thread(server: SimServer) -> Iterator[SimServer]:
    """Run a SimServer on its own event loop in a thread (for code that calls asyncio.run itself)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("simulated server did not start within 30 s")
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


async def _serve(args: argparse.Namespace) -> None:
    server = SimServer(
        args.slots,
        args.base_ms,
        args.answer_tokens,
        args.max_choices,
        keep_bodies=False,
        ms_per_seq=args.ms_per_seq,
        queue_limit=args.queue_limit,
        mean_tokens=args.mean_tokens,
        sigma=args.sigma,
        time_scale=args.time_scale,
        chunk_seconds=args.chunk_seconds,
    )
    await server.start(args.port)
    print(f"PORT {server.port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slots", type=int, default=32, help="decode slots (vLLM --max-num-seqs)")
    parser.add_argument("--base-ms", "--ms-per-token", type=float, default=1.0, help="decode step, batch 0")
    parser.add_argument("--ms-per-seq", type=float, default=0.0, help="extra step time per running answer")
    parser.add_argument("--answer-tokens", type=int, default=100, help="fixed answer length")
    parser.add_argument("--mean-tokens", type=float, default=None, help="lognormal answer lengths, this mean")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma (tail weight)")
    parser.add_argument("--queue-limit", type=int, default=None, help="most waiting answers (503 beyond)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="real seconds per simulated second")
    parser.add_argument("--chunk-seconds", type=float, default=1.0, help="simulated seconds between deltas")
    parser.add_argument("--max-choices", type=int, default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
