"""The decode engine of the simulated OpenAI server: continuous batching with a bounded batch and queue.

Modelled on vLLM's scheduler, in simulated time:
- `slots` sequences (answers) decode at once (vLLM --max-num-seqs); every running sequence gains one token
  per decode step, and a step takes `base_ms + ms_per_seq * batch` (per-token latency rises with load).
- Sequences beyond the slots wait in a FIFO queue of at most `queue_limit` sequences; a request that does not
  fit is refused (QueueFull -> HTTP 503).
- A sequence admitted from the queue starts at once (prefill is not modelled).
- abort() drops a request's sequences (vLLM aborts a request whose client disconnected); the tokens they had
  decoded are counted as wasted.

Time is fluid rather than stepped: all running sequences advance together, so one counter (tokens decoded
per sequence since the start) and a heap of finish marks give every event in O(log n), whatever the batch.
Simulated seconds run `1 / time_scale` times faster than real ones (time_scale = real seconds per simulated
second), so an hour of serving fits in a benchmark; the clock is the event loop's, so a loop delayed by a
busy CPU still sees the right amount of decoding when it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Sequence:
    request: SimRequest
    index: int  # the choice index in its request
    length: int  # tokens this answer will have
    start_mark: float = -1.0  # the engine's per-sequence token counter when it started (-1: waiting)
    done_tokens: int = -1  # set when finished
    aborted: bool = False


@dataclass(eq=False)
class SimRequest:
    sequences: list[Sequence] = field(default_factory=list)
    events: asyncio.Queue[int] = field(default_factory=asyncio.Queue)  # indices of finished sequences
    queued_at: float = 0.0
    first_start: float | None = None


@dataclass
class EngineStats:
    finished_tokens: int = 0  # tokens of sequences that ran to the end
    wasted_tokens: int = 0  # tokens decoded for sequences aborted before the end
    aborted_sequences: int = 0
    refused_requests: int = 0  # queue full
    max_queue_wait: float = 0.0  # simulated seconds a sequence waited for a slot
    busy_integral: float = 0.0  # integral of running sequences over simulated time
    max_running: int = 0


class Engine:
    def __init__(
        self,
        slots: int = 32,
        base_ms: float = 1.0,
        ms_per_seq: float = 0.0,
        queue_limit: int | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.slots = slots
        self.base_ms = base_ms
        self.ms_per_seq = ms_per_seq
        self.queue_limit = queue_limit
        self.time_scale = time_scale
        self.stats = EngineStats()
        self._mark = 0.0  # tokens decoded by every running sequence since the start (fluid)
        self._now = 0.0  # simulated time of _mark
        self._origin: float | None = None
        self._running: list[tuple[float, int, Sequence]] = []  # heap of (finish mark, tie, sequence)
        self._running_count = 0
        self._waiting: deque[Sequence] = deque()
        self._tie = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- time ----
    def clock(self) -> float:
        """Simulated seconds since the engine started."""
        loop_time = asyncio.get_running_loop().time()
        if self._origin is None:
            self._origin = loop_time
        return (loop_time - self._origin) / self.time_scale if self.time_scale > 0 else 0.0

    def step_seconds(self, batch: int) -> float:
        return (self.base_ms + self.ms_per_seq * batch) / 1000.0

    def capacity_tokens_per_second(self) -> float:
        """Output tokens per simulated second with every slot busy (the most the engine can do)."""
        step = self.step_seconds(self.slots)
        return self.slots / step if step > 0 else float("inf")

    # ---- requests ----
    def submit(self, lengths: list[int]) -> SimRequest:
        self._advance()
        free = self.slots - self._running_count
        queued = len(self._waiting) + max(0, len(lengths) - free)
        if self.queue_limit is not None and queued > self.queue_limit:
            self.stats.refused_requests += 1
            raise QueueFull(f"queue full ({len(self._waiting)} sequences waiting, limit {self.queue_limit})")
        request = SimRequest(queued_at=self._now)
        for index, length in enumerate(lengths):
            sequence = Sequence(request, index, max(1, length))
            request.sequences.append(sequence)
            self._waiting.append(sequence)
        self._admit()
        self._kick()
        return request

    def progress(self, sequence: Sequence) -> int:
        """Tokens decoded so far for one sequence."""
        if sequence.done_tokens >= 0:
            return sequence.done_tokens
        if sequence.start_mark < 0 or sequence.aborted:
            return 0
        self._advance()
        return min(sequence.length, int(self._mark - sequence.start_mark))

    def abort(self, request: SimRequest) -> None:
        """Drop every unfinished sequence of a request; their decoded tokens are wasted."""
        self._advance()
        for sequence in request.sequences:
            if sequence.done_tokens >= 0 or sequence.aborted:
                continue
            sequence.aborted = True
            self.stats.aborted_sequences += 1
            if sequence.start_mark >= 0:
                self.stats.wasted_tokens += min(sequence.length, int(self._mark - sequence.start_mark))
                self._running_count -= 1  # its heap entry is skipped when popped
            else:
                self._waiting.remove(sequence)
        self._admit()
        self._kick()

    # ---- the decode loop ----
    def _advance(self) -> None:
        """Bring the fluid state up to the current simulated time, finishing sequences on the way."""
        if self.step_seconds(self.slots) <= 0:  # instant decoding (tests): finish whatever runs now
            while self._running_count:
                self._mark = (
                    self._running[-1][0] if len(self._running) == 1 else max(e[0] for e in self._running)
                )
                self._finish_due()
                self._admit()
            return
        target = self.clock()
        while self._now < target:
            self._drop_aborted_heads()
            batch = self._running_count
            if batch == 0:
                self._now = target
                break
            rate = 1.0 / self.step_seconds(batch)  # tokens per second per sequence
            next_finish = self._running[0][0]
            reach = self._now + (next_finish - self._mark) / rate
            until = min(target, reach)
            self.stats.busy_integral += batch * (until - self._now)
            self._mark += (until - self._now) * rate
            self._now = until
            if until >= reach:
                self._mark = max(self._mark, next_finish)
                self._finish_due()
                self._admit()

    def _drop_aborted_heads(self) -> None:
        while self._running and self._running[0][2].aborted:
            heapq.heappop(self._running)

    def _finish_due(self) -> None:
        while self._running and self._running[0][0] <= self._mark + 1e-9:
            _, _, sequence = heapq.heappop(self._running)
            if sequence.aborted:
                continue
            sequence.done_tokens = sequence.length
            self._running_count -= 1
            self.stats.finished_tokens += sequence.length
            sequence.request.events.put_nowait(sequence.index)

    def _admit(self) -> None:
        while self._waiting and self._running_count < self.slots:
            sequence = self._waiting.popleft()
            sequence.start_mark = self._mark
            request = sequence.request
            if request.first_start is None:
                request.first_start = self._now
            self.stats.max_queue_wait = max(self.stats.max_queue_wait, self._now - request.queued_at)
            heapq.heappush(self._running, (self._mark + sequence.length, next(self._tie), sequence))
            self._running_count += 1
            self.stats.max_running = max(self.stats.max_running, self._running_count)

    def _kick(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        assert self._wake is not None
        self._wake.set()

    async def _loop(self) -> None:
        """Wake at the next finish (or when a request arrives) so finished sequences are reported on time."""
        assert self._wake is not None
        while True:
            self._advance()
            self._drop_aborted_heads()
            timeout = None
            if self._running_count:
                rate = 1.0 / self.step_seconds(self._running_count)
                timeout = max(0.0, (self._running[0][0] - self._mark) / rate * self.time_scale)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
