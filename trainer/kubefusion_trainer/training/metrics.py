"""Training progress as Prometheus metrics (rank 0 only) and a terminal bar.

kubefusion_progress_done/total{stage="train-<stage>"} = optimizer step / total steps, plus
kubefusion_train_loss, kubefusion_train_learning_rate, kubefusion_train_epoch, kubefusion_train_alpha
(WRPO) and kubefusion_train_reward_<name> for every rewards/<name> the trainer logs (chosen, rejected,
margins, accuracies; WRPO adds chosen_source and chosen_target), all labelled {stage}.
"""

from __future__ import annotations

import re
from typing import Any

from prometheus_client import Gauge
from transformers import TrainerCallback

from kubefusion_trainer.progress import ProgressReporter

SCALARS = {
    "loss": "kubefusion_train_loss",
    "learning_rate": "kubefusion_train_learning_rate",
    "epoch": "kubefusion_train_epoch",
    "alpha": "kubefusion_train_alpha",
}
HELP = {
    "kubefusion_train_loss": "Training loss (mean over the last logging interval)",
    "kubefusion_train_learning_rate": "Current learning rate",
    "kubefusion_train_epoch": "Fractional epoch",
    "kubefusion_train_alpha": "WRPO weight of the source's chosen answer",
}


def metric_name(log_key: str) -> str | None:
    """Prometheus name for a Trainer log key, or None for keys not exported."""
    if log_key in SCALARS:
        return SCALARS[log_key]
    if log_key.startswith("rewards/"):
        return "kubefusion_train_reward_" + re.sub(r"[^a-zA-Z0-9_]", "_", log_key.split("/", 1)[1])
    return None


class MetricsCallback(TrainerCallback):
    """Feeds a ProgressReporter from the Trainer. Build it only on rank 0 (it may serve a port)."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter
        self._gauges: dict[str, Gauge] = {}

    def _gauge(self, name: str) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(
                name, HELP.get(name, name.replace("_", " ")), ["stage"], registry=self.reporter.registry
            )
        return self._gauges[name]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.set_total(state.max_steps)
        self.reporter.set_done(state.global_step)  # a resumed run starts where it stopped

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reporter.set_done(state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        for key, value in (logs or {}).items():
            name = metric_name(key)
            if name is not None and isinstance(value, int | float):
                self._gauge(name).labels(self.reporter.stage).set(float(value))
