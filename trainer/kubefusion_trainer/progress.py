"""Progress every stage reports: Prometheus metrics on an optional port, and a bar in a terminal.

The operator reads these from stage pods (no API access needed in the pods). Shared names:
  kubefusion_progress_done{stage}    units finished       kubefusion_progress_total{stage}  units in all
Stage-specific metrics use the prefix kubefusion_<stage>_ (e.g. kubefusion_sample_retries_total,
kubefusion_train_loss).
"""

from __future__ import annotations

import sys
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class ProgressReporter:
    def __init__(
        self,
        stage: str,
        unit: str = "items",
        metrics_port: int | None = None,
        registry: CollectorRegistry | None = None,
        show_bar: bool | None = None,
    ) -> None:
        self.stage = stage
        self.registry = registry or CollectorRegistry()
        self._done = Gauge("kubefusion_progress_done", "Units finished", ["stage"], registry=self.registry)
        self._total = Gauge("kubefusion_progress_total", "Units in all", ["stage"], registry=self.registry)
        self.server: Any = None
        if metrics_port is not None:
            self.server, _ = start_http_server(metrics_port, addr="0.0.0.0", registry=self.registry)
        self._bar: Any = None
        if show_bar if show_bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=stage, unit=unit, total=None)

    def set_total(self, total: int) -> None:
        self._total.labels(self.stage).set(total)
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, n: int = 1) -> None:
        self._done.labels(self.stage).inc(n)
        if self._bar is not None:
            self._bar.update(n)

    def set_done(self, done: int) -> None:
        self._done.labels(self.stage).set(done)
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.server is not None:
            self.server.shutdown()
