"""Trainer logs become Prometheus gauges; progress is step / total steps."""

from __future__ import annotations

from prometheus_client import generate_latest
from transformers import TrainerState

from kubefusion_trainer.progress import ProgressReporter
from kubefusion_trainer.training.metrics import MetricsCallback, metric_name


def test_metric_names() -> None:
    assert metric_name("loss") == "kubefusion_train_loss"
    assert metric_name("learning_rate") == "kubefusion_train_learning_rate"
    assert metric_name("alpha") == "kubefusion_train_alpha"
    assert metric_name("rewards/accuracies") == "kubefusion_train_reward_accuracies"
    assert metric_name("rewards/chosen_source") == "kubefusion_train_reward_chosen_source"
    assert metric_name("grad_norm") is None


def _value(reporter: ProgressReporter, name: str, stage: str = "train-wrpo") -> float | None:
    return reporter.registry.get_sample_value(name, {"stage": stage})


def test_callback_exports_progress_and_logged_values() -> None:
    reporter = ProgressReporter("train-wrpo", show_bar=False)
    callback = MetricsCallback(reporter)
    state = TrainerState(max_steps=40, global_step=10)  # a resumed run
    callback.on_train_begin(None, state, None)
    assert _value(reporter, "kubefusion_progress_total") == 40
    assert _value(reporter, "kubefusion_progress_done") == 10
    state.global_step = 11
    callback.on_step_end(None, state, None)
    callback.on_log(
        None,
        state,
        None,
        logs={
            "loss": 0.52,
            "learning_rate": 3e-4,
            "rewards/margins": 0.7,
            "rewards/accuracies": 1.0,
            "alpha": 0.05,
            "note": "text",
        },
    )
    assert _value(reporter, "kubefusion_progress_done") == 11
    assert _value(reporter, "kubefusion_train_loss") == 0.52
    assert _value(reporter, "kubefusion_train_learning_rate") == 3e-4
    assert _value(reporter, "kubefusion_train_reward_margins") == 0.7
    assert _value(reporter, "kubefusion_train_reward_accuracies") == 1.0
    assert _value(reporter, "kubefusion_train_alpha") == 0.05
    callback.on_log(None, state, None, logs={"loss": 0.4})
    assert _value(reporter, "kubefusion_train_loss") == 0.4
    assert b"kubefusion_train_loss" in generate_latest(reporter.registry)
