"""The sampler client as it was before admission control (kept as bench_sampler.py's baseline).

Behaviour of kubefusion_trainer.sampling.client.Endpoint at commit d0aaf6e: up to `concurrency` (256)
requests in flight per shard, each for all n answers of a prompt, no streaming, a *total* timeout of 600 s
that counts the time a request waits in the server's queue, and the same retry rules (backoff with full
jitter, 429/408/5xx/timeouts/connection errors retried, max_attempts while others succeed, endpoint
deadline). The runner (run_job) is unchanged since, so only the request path is reproduced here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kubefusion_trainer.sampling.client import RETRYABLE_STATUS, Endpoint, RequestFailed, _retry_after
from kubefusion_trainer.sampling.requests import BadResponse, Completion, parse_completion


class LegacyEndpoint(Endpoint):
    def __init__(self, *args: Any, concurrency: int = 256, request_timeout: float = 600.0, **kwargs: Any):
        super().__init__(*args, stream=False, **kwargs)
        self.concurrency = concurrency
        self.request_timeout = request_timeout
        self.slots = asyncio.Semaphore(concurrency)
        self._total_timeout = aiohttp.ClientTimeout(total=request_timeout)

    def prompts_in_flight(self, n: int) -> int:
        return max(1, self.concurrency)  # the old runner: one prompt task per request slot

    async def complete(self, body: dict[str, Any]) -> Completion:
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
                async with (
                    self.slots,
                    self.http.post(self.url, json=body, timeout=self._total_timeout) as response,
                ):
                    status, text = response.status, (await response.read()).decode("utf-8", errors="replace")
                    retry_after = _retry_after(response.headers.get("retry-after"))
                if status == 200:
                    try:
                        completion = parse_completion(json.loads(text))
                    except (ValueError, BadResponse) as exc:
                        kind, detail = "bad_response", str(exc)
                    else:
                        self._succeeded(completion)
                        return completion
                elif status in RETRYABLE_STATUS or status >= 500:
                    kind, detail = str(status), text[:300]
                else:
                    self.metrics.errors.labels(self.source, str(status)).inc()
                    raise RequestFailed(f"HTTP {status}: {text[:500]}")
            except TimeoutError:
                kind, detail = "timeout", f"no answer within {self.request_timeout:g}s"
            except aiohttp.ClientError as exc:
                kind, detail = "connection", f"{type(exc).__name__}: {exc}"
            self.metrics.errors.labels(self.source, kind).inc()
            await asyncio.sleep(self._after_failure(kind, detail, attempt, started, retry_after))
