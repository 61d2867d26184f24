"""Progress from stage pods, the operator's /metrics, Kubernetes Events, and no secret leaks."""
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import logging

import aiohttp
import pytest
from op_cluster import (
    JOBS,
    Cluster,
    children,
    condition,
    create_run,
    drive_to_end,
    example,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import emulator  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from kubefusion_operator.main import start_metrics_server
from kubefusion_operator.metrics import OperatorMetrics
from kubefusion_trainer.progress import ProgressReporter

pytestmark = pytest.mark.integration
CANARY = "hf_CANARY_7f3a9c1e2b4d6f80"


def stage(emulator, name: str) -> dict:
    return next(s for s in run_status(emulator, "ns1", "quickstart")["stages"] if s["name"] == name)


async def test_progress_is_read_from_stage_pods(emulator, tmp_path) -> None:
    reporter = ProgressReporter("prepare", unit="prompts", metrics_port=0, show_bar=False)
    try:
        async with operator_running(emulator, tmp_path):
            await create_run(emulator, example("quickstart"))
            await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
            # The Job's pod as the kubelet would show it; its metrics endpoint is a real stage reporter.
            job = emulator.find(JOBS, "ns1", "quickstart-prepare")
            template = job["spec"]["template"]["metadata"]
            pod = {
                "metadata": {
                    "name": "quickstart-prepare-x1",
                    "labels": template["labels"],
                    "annotations": {
                        **template["annotations"],
                        "prometheus.io/port": str(reporter.server.server_port),
                    },
                },
                "spec": {"containers": []},
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            }
            resp = await emulator.post("/api/v1/namespaces/ns1/pods", json=pod)
            assert resp.status == 201
            reporter.set_total(10)
            reporter.advance(4)
            await wait_for(
                lambda: (stage(emulator, "prepare").get("progress") or {}).get("done") == 4,
                what="scraped progress",
            )
            assert stage(emulator, "prepare")["progress"] == {"done": 4, "total": 10, "unit": "prompts"}
            assert run_status(emulator, "ns1", "quickstart")["progress"] == "0/8 stages, prepare 40%"
            reporter.advance(6)
            await Cluster(emulator).complete("quickstart-prepare")
            await wait_for(lambda: stage(emulator, "prepare")["state"] == "Succeeded")
        status = run_status(emulator, "ns1", "quickstart")
        assert (
            stage(emulator, "prepare")["progress"]["done"]
            == stage(emulator, "prepare")["progress"]["total"]
            == 10
        )
        assert status["counts"]["prompts"] == 10
    finally:
        reporter.close()


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_and_events(emulator, tmp_path) -> None:
    metrics = OperatorMetrics()
    server, port = start_metrics_server(metrics, 0, "127.0.0.1")
    try:
        async with operator_running(emulator, tmp_path, metrics=metrics):
            await create_run(emulator, example("quickstart"))
            await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True")
            during = await scrape(port)
            await drive_to_end(emulator, "quickstart")
            await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Succeeded") == "True")
            # kopf posts Events in the background: the last one may still be on its way.
            await wait_for(
                lambda: any(e.get("reason") == "RunSucceeded" for e in emulator.live("v1/events", "ns1")),
                what="the RunSucceeded Event",
            )
            after = await scrape(port)
    finally:
        server.shutdown()
    assert during[("kubefusion_operator_runs", (("phase", "Progressing"),))] == 1
    assert after[("kubefusion_operator_runs", (("phase", "Progressing"),))] == 0
    assert after[("kubefusion_operator_runs", (("phase", "Succeeded"),))] == 1
    assert (
        after[("kubefusion_operator_stage_transitions_total", (("stage", "sample"), ("state", "Succeeded")))]
        == 1
    )
    assert after[("kubefusion_operator_stage_duration_seconds_count", (("stage", "dpo"),))] == 1
    assert after[("kubefusion_operator_children_created_total", (("kind", "Job"),))] == 6
    assert after[("kubefusion_operator_children_created_total", (("kind", "PyTorchJob"),))] == 2
    assert after[("kubefusion_operator_reconciles_total", ())] > 5
    assert ("kubefusion_operator_work_items", (("kind", "samples"),)) in after
    # Bounded cardinality: no label carries a run name.
    assert not any("quickstart" in str(labels) for _, labels in after)

    events = [e for e in emulator.live("v1/events", "ns1") if e["involvedObject"]["name"] == "quickstart"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("StageStarted") == 8 and reasons.count("StageSucceeded") == 8
    assert "RunSucceeded" in reasons and "ServerStopped" in reasons
    assert all(e["involvedObject"]["kind"] == "FusionRun" for e in events)


async def test_no_secret_value_leaks(emulator, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = {"metadata": {"name": "hf-token"}, "data": {"token": base64.b64encode(CANARY.encode()).decode()}}
    assert (await emulator.post("/api/v1/namespaces/ns1/secrets", json=secret)).status == 201
    test_requests = len(emulator.api_requests)
    doc = example("quickstart", credentials={"hfToken": {"name": "hf-token", "key": "token"}})
    metrics = OperatorMetrics()
    server, port = start_metrics_server(metrics, 0, "127.0.0.1")
    try:
        async with operator_running(emulator, tmp_path, metrics=metrics):
            await create_run(emulator, doc)
            await drive_to_end(emulator, "quickstart")
            metrics_text = str(await scrape(port))
    finally:
        server.shutdown()
    assert not [r for r in emulator.api_requests[test_requests:] if r.resource == "secrets"], (
        "the operator read secrets"
    )
    everything = {
        "status": run_status(emulator, "ns1", "quickstart"),
        "events": emulator.live("v1/events", "ns1"),
        "configmaps": emulator.live("v1/configmaps", "ns1"),
        "children": [emulator.live(k, "ns1") for k in ("batch/v1/jobs", "kubeflow.org/v1/pytorchjobs")],
    }
    dumped = json.dumps(everything, default=str)
    assert "hf-token" in dumped  # the reference is there (in the children's env)...
    for where, text in [("API objects", dumped), ("logs", caplog.text), ("metrics", metrics_text)]:
        assert CANARY not in text, f"the secret value leaked into {where}"
        assert base64.b64encode(CANARY.encode()).decode() not in text, (
            f"the encoded secret leaked into {where}"
        )
