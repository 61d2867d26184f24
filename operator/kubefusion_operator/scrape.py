"""Stage progress from stage pods' Prometheus endpoints (kubefusion_trainer.progress), no pod API access.

The operator lists a run's running pods and reads kubefusion_progress_done/total from each; the
pods need no Kubernetes credentials at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubefusion_operator.api import StageProgress
from kubefusion_operator.render.names import METRICS_PORT, METRICS_PORT_ANNOTATION, TASK_ANNOTATION

UNITS = {"prepare": "prompts", "sample": "answers", "score": "answers", "build": "rows", "train": "steps"}


def parse_progress(text: str) -> tuple[int, int | None]:
    """(done, total) summed over every stage label in one pod's metrics text."""
    done, total, seen_total = 0.0, 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubefusion_progress_done":
                done += sample.value
            elif sample.name == "kubefusion_progress_total":
                total += sample.value
                seen_total = True
    return int(done), int(total) if seen_total else None


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip or (pod.get("status") or {}).get("phase") != "Running":
        return None
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "false":
        return None  # e.g. sandbox pods: no metrics, and their NetworkPolicy refuses us anyway
    port = annotations.get(METRICS_PORT_ANNOTATION, str(METRICS_PORT))
    return f"http://{ip}:{port}/metrics"


def pod_task(pod: Mapping[str, Any], task_by_label: Mapping[str, str]) -> str | None:
    meta = pod.get("metadata") or {}
    exact = (meta.get("annotations") or {}).get(TASK_ANNOTATION)
    return exact or task_by_label.get((meta.get("labels") or {}).get("kubefusion.dev/task", ""))


async def scrape_progress(
    pods: Iterable[Mapping[str, Any]],
    task_by_label: Mapping[str, str],
    fetch: Callable[[str], Awaitable[str | None]],
    unit_of: Callable[[str], str],
) -> dict[str, StageProgress]:
    """Progress per task: the sum over the task's pods (shards) that answered."""
    sums: dict[str, list[int | None]] = {}
    for pod in pods:
        task, url = pod_task(pod, task_by_label), metrics_url(pod)
        if task is None or url is None:
            continue
        text = await fetch(url)
        if text is None:
            continue
        try:
            done, total = parse_progress(text)
        except ValueError:
            continue  # not Prometheus text: someone else's port
        acc = sums.setdefault(task, [0, 0])
        acc[0] = (acc[0] or 0) + done
        acc[1] = None if acc[1] is None or total is None else acc[1] + total
    return {t: StageProgress(done=d or 0, total=tot, unit=unit_of(t)) for t, (d, tot) in sums.items()}
