"""Pure pieces: child objects to task states, status building, progress parsing, merge patches, CLI flags."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from kubefusion_operator.main import build_parser
from kubefusion_operator.merge_patch import merge_patch
from kubefusion_operator.observe import observe
from kubefusion_operator.planner import TaskState, plan_tasks
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.scrape import metrics_url, parse_progress
from kubefusion_operator.status import Observation, build_status, previous_status
from kubefusion_operator.validation import load_fusionrun

RUN = load_fusionrun(Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml")
TASKS = {t.name: t for t in plan_tasks(RUN.spec)}
CTX = RenderContext(RUN.name, "ns", "uid", RUN.spec)


def child(task: str, status: dict | None = None, **spec) -> dict:
    obj = build_task_children(CTX, TASKS[task])[-1]
    obj["spec"].update(spec)
    if status is not None:
        obj["status"] = status
    return obj


JOB_DONE = {"conditions": [{"type": "Complete", "status": "True"}]}
JOB_FAILED = {
    "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}]
}


@pytest.mark.parametrize(
    ("obj", "persisted", "queued", "expected"),
    [
        (child("prepare"), {}, False, TaskState.RUNNING),
        (child("prepare", JOB_DONE), {}, False, TaskState.SUCCEEDED),
        (child("prepare", JOB_FAILED), {}, False, TaskState.FAILED),
        (child("prepare", suspend=True), {}, False, TaskState.SUSPENDED),
        (child("prepare", suspend=True), {}, True, TaskState.RUNNING),  # Kueue has not admitted it yet
        (child("serve-sources/adder"), {}, False, TaskState.RUNNING),
        (child("serve-sources/adder", {"readyReplicas": 1}), {}, False, TaskState.READY),
        (child("serve-sources/adder", replicas=0), {}, False, TaskState.SUSPENDED),
        (
            child("sft", {"conditions": [{"type": "Succeeded", "status": "True"}]}),
            {},
            False,
            TaskState.SUCCEEDED,
        ),
        (child("sft", {"conditions": [{"type": "Failed", "status": "True"}]}), {}, False, TaskState.FAILED),
        (None, {"score": "Succeeded"}, False, TaskState.SUCCEEDED),  # its Job was deleted: still done
        (None, {"serve-sources/adder": "Running"}, False, TaskState.PENDING),  # a server that is gone is gone
    ],
)
def test_observe(obj, persisted, queued, expected) -> None:
    # As a real API server lists them: the kind is the list's, items carry no kind/apiVersion.
    listed = {obj["kind"]: [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}]} if obj else {}
    states, refs, failures = observe(TASKS.values(), listed, persisted, queued_by_kueue=queued)
    task = next(iter(persisted)) if obj is None else obj["metadata"]["annotations"]["kubefusion.dev/task"]
    assert states[task] == expected
    if obj is not None:
        assert refs[task] == [f"{obj['kind']}/{obj['metadata']['name']}"]
    if expected == TaskState.FAILED and task == "prepare":
        assert failures[0].child == "Job/quickstart-prepare" and failures[0].reason == "BackoffLimitExceeded"


def test_status_keeps_transition_times_and_start_times() -> None:
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(minutes=5)
    first = build_status(
        RUN.spec,
        RUN.name,
        "/data",
        previous_status(None),
        Observation(1, "Progressing", {"prepare": TaskState.RUNNING}),
        t0,
    )
    second = build_status(
        RUN.spec,
        RUN.name,
        "/data",
        first,
        Observation(1, "Progressing", {"prepare": TaskState.SUCCEEDED}),
        t1,
    )
    ready = {c.type: c for c in second.conditions}["Ready"]
    assert ready.status == "False" and ready.last_transition_time == t0
    prepare = second.stages[0]
    assert prepare.start_time == t0 and prepare.end_time == t1 and prepare.state == "Succeeded"
    assert prepare.outputs == ["/data/prepared/addition.jsonl", "/data/prepared/reversal.jsonl"]
    assert second.tasks == {"prepare": "Succeeded"}
    assert second.stage == "serve-sources" and second.progress == "1/8 stages"


def test_previous_status_tolerates_junk() -> None:
    assert previous_status({"conditions": "nonsense"}).conditions == []


def test_parse_progress_and_metrics_url() -> None:
    text = (
        '# TYPE kubefusion_progress_done gauge\nkubefusion_progress_done{stage="sample"} 7.0\n'
        '# TYPE kubefusion_progress_total gauge\nkubefusion_progress_total{stage="sample"} 20.0\n'
    )
    assert parse_progress(text) == (7, 20)
    assert parse_progress('kubefusion_progress_done{stage="x"} 3\n') == (3, None)
    pod = {
        "metadata": {"annotations": {"prometheus.io/port": "9100"}},
        "status": {"phase": "Running", "podIP": "10.0.0.5"},
    }
    assert metrics_url(pod) == "http://10.0.0.5:9100/metrics"
    assert metrics_url({"status": {"phase": "Pending"}}) is None


def test_merge_patch() -> None:
    old = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "d": 4}
    new = {"a": 1, "b": {"x": 1}, "c": [1], "e": 5}
    assert merge_patch(old, new) == {"b": {"y": None}, "c": [1], "d": None, "e": 5}
    assert merge_patch(new, new) == {}


def test_operator_flags() -> None:
    args = build_parser().parse_args([])
    assert (args.namespace, args.metrics_port, args.health_port) == ([], 8080, 8081)
    args = build_parser().parse_args(["-n", "team-a", "--namespace", "team-*", "--metrics-port", "9000"])
    assert args.namespace == ["team-a", "team-*"] and args.metrics_port == 9000
