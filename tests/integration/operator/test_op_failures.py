"""Failed reconciles: retried by the operator with capped exponential backoff, reported on the run
(a ReconcileFailed condition and a Warning Event), cleared when a reconcile succeeds.

Faults are injected where a real cluster produces them: an admission refusal of a child (quota). A
training-operator CRD that is not installed is no fault: the run waits for it (checked here too).
"""
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from op_cluster import (
    JOBS,
    RUNS,
    Cluster,
    children,
    condition,
    create_run,
    drive_to_end,
    example,
    fast_config,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import Admission, emulator, refuse  # noqa: F401

pytestmark = pytest.mark.integration

BACKOFF, BACKOFF_MAX = 0.2, 1.0
WINDOW = 4.0  # seconds of failure over which API calls are counted


def failed_condition(emulator, name: str = "quickstart") -> dict | None:
    conds = run_status(emulator, "ns1", name).get("conditions", [])
    return next((c for c in conds if c["type"] == "ReconcileFailed"), None)


def warning_events(emulator, reason: str, name: str = "quickstart") -> list[dict]:
    return [
        e
        for e in emulator.live("v1/events", "ns1")
        if e["involvedObject"]["name"] == name and e["reason"] == reason and e["type"] == "Warning"
    ]


async def test_refused_child_is_retried_with_backoff_and_reported(emulator, tmp_path) -> None:
    attempts: list[float] = []
    quota = {"on": True}

    def exceeded_quota(_emu, admission: Admission) -> None:
        if quota["on"] and admission.verb == "create" and admission.resource.plural == "jobs":
            attempts.append(time.monotonic())
            raise refuse(
                403,
                "Forbidden",
                f'jobs.batch "{admission.obj["metadata"]["name"]}" is forbidden: exceeded quota: compute, '
                "requested: requests.cpu=2, used: requests.cpu=8, limited: requests.cpu=8",
            )

    emulator.admission_checks.append(exceeded_quota)
    config = fast_config(retry_backoff=BACKOFF, retry_backoff_max=BACKOFF_MAX, progress_interval=0.2)
    async with operator_running(emulator, tmp_path, config):
        await create_run(emulator, example("quickstart"))
        cond = await wait_for(lambda: failed_condition(emulator), what="the ReconcileFailed condition")
        assert cond["status"] == "True" and cond["reason"] == "ChildRefused"
        assert "Job/quickstart-prepare" in cond["message"] and "exceeded quota" in cond["message"]
        await wait_for(lambda: warning_events(emulator, "ChildRefused"), what="a Warning Event")
        assert "Job/quickstart-prepare" in warning_events(emulator, "ChildRefused")[0]["message"]

        # Count every API call the operator makes while the fault lasts.
        before, t0 = len(emulator.operator_requests()), time.monotonic()
        await asyncio.sleep(WINDOW)
        calls, elapsed = len(emulator.operator_requests()) - before, time.monotonic() - t0
        per_minute = calls / elapsed * 60
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        in_window = sum(1 for t in attempts if t0 <= t <= t0 + elapsed)
        print(
            f"\nAPI calls per minute while failing: {per_minute:.0f} ({calls} calls, {in_window} retries "
            f"in {elapsed:.1f}s); "
            f"retry gaps: {', '.join(f'{g:.2f}' for g in gaps)}s"
        )
        # Backoff: the gaps grow and stay at the cap (never a hot loop, never given up).
        assert gaps[0] < BACKOFF * 2 + 0.5 and max(gaps) < BACKOFF_MAX + 1.0
        assert min(gaps[-2:]) > BACKOFF_MAX * 0.8
        # Bounded: at the cap, at most one attempt per BACKOFF_MAX, each a dozen calls at most (read
        # the run, list 3 kinds, 2 creates, the status, an Event, kopf's echo handling).
        assert 1 <= in_window <= elapsed / (BACKOFF_MAX * 0.8) + 1
        assert calls <= 12 * (in_window + 1), (calls, in_window)
        assert per_minute <= 60 / BACKOFF_MAX * 12, per_minute

        quota["on"] = False  # the quota is raised: the next retry goes through
        await wait_for(
            lambda: children(emulator, JOBS) == ["quickstart-prepare"], what="the Job, once allowed"
        )
        await wait_for(lambda: failed_condition(emulator) is None, what="the condition to clear")
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"


async def test_missing_training_crd_is_reported_then_recovered(emulator, tmp_path) -> None:
    """No training operator is not a failed reconcile (issue 11): the run waits at its first training
    stage with a condition naming the CRD, every earlier stage runs, and it carries on once installed."""
    emulator.withdraw("kubeflow.org/v1/pytorchjobs")  # no training operator installed
    emulator.withdraw("trainer.kubeflow.org/v1alpha1/trainjobs")
    doc = example("quickstart")
    doc["spec"]["training"]["backend"] = "pytorchjob"
    config = fast_config(retry_backoff=BACKOFF, retry_backoff_max=BACKOFF_MAX)
    async with operator_running(emulator, tmp_path, config):
        await create_run(emulator, doc)
        cluster = Cluster(emulator)

        def waiting() -> dict | None:
            conds = run_status(emulator, "ns1", "quickstart").get("conditions", [])
            progressing = next((c for c in conds if c["type"] == "Progressing"), {})
            return progressing if progressing.get("reason") == "TrainingBackendMissing" else None

        deadline = time.monotonic() + 30
        while (cond := waiting()) is None:
            assert time.monotonic() < deadline, run_status(emulator, "ns1", "quickstart")
            await cluster.advance()  # every stage before training runs normally
            await asyncio.sleep(0.05)
        assert cond["status"] == "True" and "pytorchjobs.kubeflow.org" in cond["message"]
        assert failed_condition(emulator) is None  # waiting, not failing
        assert await wait_for(lambda: warning_events(emulator, "TrainingBackendMissing"), what="an Event")
        status = run_status(emulator, "ns1", "quickstart")
        assert {s["name"]: s["state"] for s in status["stages"]}["build"] == "Succeeded"
        emulator.declare("kubeflow.org/v1/pytorchjobs", "PyTorchJob", subresources=["status"])
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True"
    assert failed_condition(emulator) is None


async def test_no_spec_copy_in_annotations(emulator, tmp_path) -> None:
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS), what="the first Job")
        await Cluster(emulator).complete("quickstart-prepare")
        await wait_for(
            lambda: (
                len(children(emulator, JOBS)) > 1 or condition(emulator, "ns1", "quickstart", "Progressing")
            )
        )
    run = emulator.find(RUNS, "ns1", "quickstart")
    assert not any("last-handled-configuration" in k for k in (run["metadata"].get("annotations") or {}))
    assert not run["metadata"].get("finalizers")


async def test_refused_child_patch_names_the_child_and_the_server_message(emulator, tmp_path) -> None:
    def no_suspend(_emu, admission: Admission) -> None:
        patching = admission.verb == "patch" and admission.resource.plural == "jobs" and not admission.system
        if patching and (admission.obj.get("spec") or {}).get("suspend"):
            raise refuse(
                422, "Invalid", 'Job.batch "quickstart-prepare" is invalid: spec.suspend: Forbidden: test'
            )

    emulator.admission_checks.append(no_suspend)
    async with operator_running(
        emulator, tmp_path, fast_config(retry_backoff=BACKOFF, retry_backoff_max=BACKOFF_MAX)
    ):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"], what="the prepare Job")
        resp = await emulator.patch(
            "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart",
            json={"spec": {"suspend": True}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status == 200
        cond = await wait_for(lambda: failed_condition(emulator), what="the ReconcileFailed condition")
    assert cond["reason"] == "ChildRefused"
    assert cond["message"].startswith("patch Job/quickstart-prepare refused by the API server: 422 Invalid:")
    assert "spec.suspend: Forbidden: test" in cond["message"]
