"""The operator through a run's whole lifecycle against the emulator, for RBAC derivation.

Not collected on its own (no test_ prefix): test_chart_rbac.py runs it, with the operator's integration
tests, under packaging_rbac_recorder. Besides a plain run (the operator's own tests), the chart's
RBAC must cover what users do to a run: progress scraped from stage pods, suspend and resume, a failed
stage retried with the kubefusion.dev/retry-stage annotation, and deleting the run.
"""
# ruff: noqa: F811  (the emulator fixture is imported from op_emulator)

from __future__ import annotations

import asyncio
import time

import pytest
from op_cluster import (
    DEPLOYMENTS,
    JOBS,
    PYTORCHJOBS,
    Cluster,
    children,
    condition,
    create_run,
    example,
    fast_config,
    operator_running,
    run_status,
    wait_for,
)
from op_emulator import emulator  # noqa: F401
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubefusion_operator.api import RETRY_ANNOTATION

pytestmark = pytest.mark.integration

NS, RUN = "ns1", "quickstart"
RUN_URL = f"/apis/kubefusion.dev/v1alpha1/namespaces/{NS}/fusionruns/{RUN}"
MERGE = {"Content-Type": "application/merge-patch+json"}


def _stage(emulator, name: str) -> dict:
    return next((s for s in run_status(emulator, NS, RUN).get("stages", []) if s["name"] == name), {})


def _job(emulator, name: str) -> dict:
    return emulator.find(JOBS, NS, name) or {}


async def _pod_for(emulator, job: dict, port: int) -> None:
    """The Job controller's and kubelet's part: a running pod from the Job's template, serving metrics."""
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-0",
            "labels": template["metadata"]["labels"],
            "annotations": {**template["metadata"].get("annotations", {}), "prometheus.io/port": str(port)},
        },
        "spec": template["spec"],
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }
    resp = await emulator.post(f"/api/v1/namespaces/{NS}/pods", json=pod)
    assert resp.status == 201, await resp.text()


async def _suspend_and_resume(emulator, suspended, resumed, what: str) -> None:
    await emulator.patch(RUN_URL, json={"spec": {"suspend": True}}, headers=MERGE)
    await wait_for(suspended, what=f"suspended {what}")
    await emulator.patch(RUN_URL, json={"spec": {"suspend": False}}, headers=MERGE)
    await wait_for(resumed, what=f"resumed {what}")


async def _advance_until(emulator, done, what: str) -> None:
    """Play the cluster (Deployments ready, Jobs complete, PyTorchJobs succeed) until done()."""
    cluster = Cluster(emulator, NS)
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {run_status(emulator, NS, RUN)}"
        await cluster.advance()
        await asyncio.sleep(0.02)


async def test_progress_suspend_retry_and_delete(emulator, tmp_path) -> None:
    registry = CollectorRegistry()
    Gauge("kubefusion_progress_done", "done", ["stage"], registry=registry).labels("prepare").set(7)
    Gauge("kubefusion_progress_total", "total", ["stage"], registry=registry).labels("prepare").set(10)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    # Every real API server serves CRDs; kopf watches them to notice resources installed later.
    emulator.declare(
        "apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", namespaced=False
    )
    try:
        async with operator_running(emulator, tmp_path, fast_config()):
            await create_run(emulator, example(RUN))
            jobs = await wait_for(lambda: children(emulator, JOBS), what="the first stage Job")
            prepare = jobs[0]

            # Progress: the operator lists the run's pods and reads their metrics.
            await _pod_for(emulator, _job(emulator, prepare), server.server_port)
            await wait_for(
                lambda: (_stage(emulator, "prepare").get("progress") or {}).get("done") == 7, what="progress"
            )

            # Suspend and resume a stage Job, the vLLM servers and a training PyTorchJob.
            await _suspend_and_resume(
                emulator,
                lambda: _job(emulator, prepare)["spec"].get("suspend") is True,
                lambda: _job(emulator, prepare)["spec"].get("suspend") is False,
                "Job",
            )
            await _advance_until(emulator, lambda: children(emulator, DEPLOYMENTS), "the vLLM servers")
            server_name = children(emulator, DEPLOYMENTS)[0]
            await _suspend_and_resume(
                emulator,
                lambda: emulator.find(DEPLOYMENTS, NS, server_name)["spec"]["replicas"] == 0,
                lambda: emulator.find(DEPLOYMENTS, NS, server_name)["spec"]["replicas"] > 0,
                "Deployment",
            )
            await _advance_until(emulator, lambda: children(emulator, PYTORCHJOBS), "the SFT PyTorchJob")
            sft = children(emulator, PYTORCHJOBS)[0]

            def sft_suspend() -> bool | None:
                return emulator.find(PYTORCHJOBS, NS, sft)["spec"]["runPolicy"].get("suspend")

            await _suspend_and_resume(
                emulator, lambda: sft_suspend() is True, lambda: sft_suspend() is False, "PyTorchJob"
            )

            # A failed stage, retried: the operator deletes the failed PyTorchJob to start it again.
            # (Re-creating it is the operator's own tests' business; RBAC needs the delete seen here.)
            await Cluster(emulator, NS).train(sft, "Failed")
            await wait_for(lambda: condition(emulator, NS, RUN, "Failed") == "True", what="Failed")
            failed_uid = emulator.find(PYTORCHJOBS, NS, sft)["metadata"]["uid"]
            await emulator.patch(
                RUN_URL, json={"metadata": {"annotations": {RETRY_ANNOTATION: "sft"}}}, headers=MERGE
            )
            await wait_for(
                lambda: (
                    (emulator.find(PYTORCHJOBS, NS, sft) or {}).get("metadata", {}).get("uid") != failed_uid
                ),
                what="failed PyTorchJob deleted",
            )

            # Delete: the operator removes every child it created.
            assert (await emulator.delete(RUN_URL)).status == 200
            await wait_for(
                lambda: not children(emulator, JOBS) and not emulator.live("v1/configmaps", NS),
                what="children deleted",
            )
    finally:
        server.shutdown()
