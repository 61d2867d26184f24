"""Admission control: at most `budget` answers (sequences) being generated at once for one endpoint.

A server replica runs a bounded number of sequences (vLLM --max-num-seqs); whatever a client sends beyond
that waits in the server's queue, where time passes without progress and a client timeout turns into lost
work. So a request for n answers first takes n units here, and gives each back as soon as its answer is
finished (streaming tells per choice), not when the whole request is: with a long tail of answer lengths,
releasing per answer keeps the replica's batch full.

Waiters are served first-come first-served (a request for 5 units is not starved by requests for 1); a
request for more than the whole budget takes the whole budget.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"an admission budget must be at least 1, not {budget}")
        self.budget = budget
        self.free = budget
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def in_flight(self) -> int:
        return self.budget - self.free

    async def acquire(self, units: int) -> int:
        """Wait until `units` (at most the budget) are free and take them; returns how many were taken."""
        units = max(1, min(units, self.budget))
        if not self._waiters and self.free >= units:
            self.free -= units
            return units
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (units, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(units)  # granted, then cancelled before we could use it
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return units

    def release(self, units: int) -> None:
        self.free = min(self.budget, self.free + units)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            units, future = self._waiters.popleft()
            if future.done():
                continue
            self.free -= units
            future.set_result(None)
