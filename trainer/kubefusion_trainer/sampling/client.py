"""An async client for one OpenAI-compatible chat endpoint (vLLM, `transformers serve`, ...).

- Admission control (admission.py): at most `max_in_flight` answers being generated at once, this client's
  share of what the server replica runs (vLLM --max-num-seqs); a request for n answers takes n units and
  gives each back when that answer finishes. Nothing waits in the server's queue long enough to time out.
- Streaming (stream.py): answers arrive as server-sent chunks, so the timeout is a *stall* timeout: no byte
  from the server for `stall_timeout` seconds (waiting for the first token included). A long answer that
  keeps coming never times out. A server that refuses `stream` is asked without it from then on.
- Retries with exponential backoff and full jitter on connection errors, stalls, errors inside a stream,
  429, 408 and 5xx (a numeric Retry-After is honoured); other 4xx answers fail at once (RequestFailed, with
  the server's message). A retried request asks again for the same answers with the same seeds; a partial
  stream is dropped, so no answer is ever kept twice.
- Endpoint deadline: when every request has failed for `deadline` seconds in a row, EndpointDown names the
  endpoint and the source, and every other request on this endpoint stops too.
- A single request that keeps failing while the endpoint answers others gives up after `max_attempts`
  (RequestFailed) instead of retrying forever.
The HTTP session (aiohttp: httpx's connection pool costs O(connections) per request, which dominates at
hundreds of concurrent requests), the clock and the jitter are injected so tests can drive them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubefusion_trainer.sampling.admission import Admission
from kubefusion_trainer.sampling.metrics import SampleMetrics
from kubefusion_trainer.sampling.requests import BadResponse, Completion, parse_completion
from kubefusion_trainer.sampling.stream import StreamError, read_stream

RETRYABLE_STATUS = {408, 425, 429}


class SampleError(RuntimeError):
    pass


class EndpointDown(SampleError):
    pass


class RequestFailed(SampleError):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.5
    """First backoff in seconds; doubles per attempt (full jitter)."""
    max_delay: float = 30.0
    """Longest backoff in seconds."""
    max_attempts: int = 10
    """Attempts of one request while the endpoint answers others."""


class Endpoint:
    def __init__(
        self,
        source: str,
        base_url: str,
        http: aiohttp.ClientSession,
        *,
        max_in_flight: int = 256,
        stall_timeout: float = 300.0,
        deadline: float = 600.0,
        stream: bool = True,
        retry: RetryPolicy | None = None,
        metrics: SampleMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.http = http
        self.admission = Admission(max_in_flight)
        self.stall_timeout = stall_timeout
        self.stream = stream
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.metrics = metrics or SampleMetrics()
        self.clock, self.jitter = clock, jitter
        # no total timeout: a long answer is fine as long as bytes keep coming
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=stall_timeout)
        self.honours_n: bool | None = None  # learnt from the first answers: does the server return n choices?
        self._failing_since: float | None = None
        self._last_success: float | None = None
        self._down: EndpointDown | None = None

    def __repr__(self) -> str:
        return f"Endpoint({self.source!r}, {self.base_url!r})"

    @property
    def max_in_flight(self) -> int:
        return self.admission.budget

    def prompts_in_flight(self, n: int) -> int:
        """Prompts to keep started so that admission always has a request waiting for freed units."""
        return max(2, 2 * -(-self.admission.budget // max(n, 1)))

    async def complete(self, body: dict[str, Any]) -> Completion:
        """POST one chat completion, retrying as the module docstring says."""
        started = self.clock()
        attempt = 0
        while True:
            if self._down is not None:
                raise self._down
            attempt += 1
            if attempt > 1:
                self.metrics.retries.labels(self.source).inc()
            self.metrics.requests.labels(self.source).inc()
            retry_after = None
            try:
                status, text, completion, retry_after = await self._post(body)
                if completion is not None:
                    self._succeeded(completion)
                    return completion
                if status == 200:
                    try:
                        completion = parse_completion(json.loads(text))
                    except (ValueError, BadResponse) as exc:
                        kind, detail = "bad_response", str(exc)
                    else:
                        self._succeeded(completion)
                        return completion
                elif self.stream and status in (400, 422) and "stream" in text:
                    self.stream = False  # a server without streaming: ask again at once, whole answers
                    attempt -= 1
                    continue
                elif status in RETRYABLE_STATUS or status >= 500:
                    kind, detail = str(status), text[:300]
                else:
                    self.metrics.errors.labels(self.source, str(status)).inc()
                    raise RequestFailed(
                        f"endpoint {self.url} (source {self.source!r}) refused a request with HTTP "
                        f"{status}: {text[:500]}"
                    )
            except TimeoutError:
                kind, detail = "timeout", f"no progress for {self.stall_timeout:g}s (stalled)"
            except BadResponse as exc:
                kind, detail = "bad_response", str(exc)
            except StreamError as exc:
                kind, detail = "stream_error", str(exc)
            except aiohttp.ClientError as exc:
                kind, detail = "connection", f"{type(exc).__name__}: {exc}"
            self.metrics.errors.labels(self.source, kind).inc()
            await asyncio.sleep(self._after_failure(kind, detail, attempt, started, retry_after))

    async def _post(self, body: dict[str, Any]) -> tuple[int, str, Completion | None, float | None]:
        """One attempt under admission: (status, error text, completion when streamed, Retry-After)."""
        held = await self.admission.acquire(int(body.get("n") or 1))

        def answer_done(index: int) -> None:
            nonlocal held
            if held > 0:  # the server's slot for this answer is free again
                held -= 1
                self.admission.release(1)

        try:
            if self.stream:
                body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with self.http.post(self.url, json=body, timeout=self._timeout) as response:
                retry_after = _retry_after(response.headers.get("retry-after"))
                streamed = response.headers.get("content-type", "").startswith("text/event-stream")
                if response.status == 200 and streamed:
                    return 200, "", await read_stream(response.content, answer_done), None
                text = (await response.read()).decode("utf-8", errors="replace")
                return response.status, text, None, retry_after
        finally:
            self.admission.release(held)

    def _succeeded(self, completion: Completion) -> None:
        self._failing_since = None
        self._last_success = self.clock()
        self.metrics.samples.labels(self.source).inc(len(completion.choices))
        self.metrics.tokens.labels(self.source, "prompt").inc(completion.prompt_tokens)
        self.metrics.tokens.labels(self.source, "completion").inc(completion.completion_tokens)

    def _after_failure(
        self, kind: str, detail: str, attempt: int, started: float, retry_after: float | None
    ) -> float:
        """Raise when the endpoint is down or this request is hopeless; else the seconds to wait."""
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        if failing_for >= self.deadline:
            self._down = EndpointDown(
                f"endpoint {self.base_url} for source {self.source!r} is down: every request failed for "
                f"{failing_for:.1f}s (deadline {self.deadline:g}s, --endpoint-deadline); last error {kind}: {detail}"
            )
            raise self._down
        answered_others = self._last_success is not None and self._last_success > started
        if attempt >= self.retry.max_attempts and answered_others:
            raise RequestFailed(
                f"endpoint {self.base_url} (source {self.source!r}) failed one request {attempt} times while "
                f"answering others; last error {kind}: {detail}"
            )
        delay = self.jitter() * min(self.retry.max_delay, self.retry.base_delay * 2 ** min(attempt - 1, 30))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry.max_delay))
        # wake up in time to report a dead endpoint at its deadline
        return max(0.0, min(delay, self.deadline - failing_for + 0.01))


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
