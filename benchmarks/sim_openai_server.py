"""A simulated OpenAI chat-completions server: fixed decode slots, fixed latency per token, injectable faults.

Each answer (choice) holds one of `slots` decode slots for answer_tokens x ms_per_token; answers beyond the
slots queue, like a continuously batching server at its batch limit. Capacity = slots / (tokens x latency).
`max_choices` caps the choices per request (None: honour n like vLLM; 1: ignore n like transformers serve).
`extra_choices` adds surplus choices (a misbehaving server). `fault(request_number, body)` may return an HTTP
status as text ("500", "429" with Retry-After: 0, "422", ...), "garbage" (200 with a non-JSON body), "hang" (answer only after `hang_seconds`) or
"drop" (close the connection) to test retries. Used by benchmarks/bench_sampler.py and the sampler's fault tests.

Run standalone: python benchmarks/sim_openai_server.py --slots 32 --ms-per-token 1 --answer-tokens 100
(prints "PORT <n>" once it listens on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SimStats:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    choices: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)


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
    ) -> None:
        self.slots = slots
        self.ms_per_token = ms_per_token
        self.answer_tokens = answer_tokens
        self.max_choices = max_choices
        self.extra_choices = extra_choices
        self.fault = fault
        self.hang_seconds = hang_seconds
        self.keep_bodies = keep_bodies
        self.models = models  # what GET /v1/models lists; None: the route answers 404
        self.stats = SimStats()
        self._counter = itertools.count()
        self._free_at: list[float] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def capacity(self) -> float:
        """Answers per second at full occupancy."""
        return self.slots / (self.answer_tokens * self.ms_per_token / 1000.0)

    async def start(self, port: int = 0) -> str:
        self._free_at = [0.0] * self.slots  # a heap: when each slot is next free (loop time)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    async def stop(self) -> None:
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

    async def _decode_one(self) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, heapq.heappop(self._free_at))
        finish = start + self.answer_tokens * self.ms_per_token / 1000.0
        heapq.heappush(self._free_at, finish)
        await asyncio.sleep(finish - now)

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
        await asyncio.gather(*(self._decode_one() for _ in range(count)))
        self.stats.choices += count
        seed = body.get("seed")
        prompt = body["messages"][-1]["content"]
        choices = [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": f"answer to {prompt[:40]!r} seed={seed} choice={i}",
                },
                "finish_reason": "length",
            }
            for i in range(count)
        ]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": count * self.answer_tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.json_response(
            {
                "id": f"sim-{number}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": choices,
                "usage": usage,
            }
        )


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
    server = SimServer(args.slots, args.ms_per_token, args.answer_tokens, args.max_choices, keep_bodies=False)
    await server.start(args.port)
    print(f"PORT {server.port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--ms-per-token", type=float, default=1.0)
    parser.add_argument("--answer-tokens", type=int, default=100)
    parser.add_argument("--max-choices", type=int, default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
