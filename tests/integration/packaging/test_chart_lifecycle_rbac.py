"""What the operator's own integration tests leave out, for RBAC derivation: run against the emulator.

test_chart_rbac.py derives the chart's RBAC from the requests of this test and of
tests/integration/operator (which must run first: this file sorts before it). The operator's tests cover a full run,
progress scraping, suspending stage Jobs and servers, retrying a failed Job and deleting a run; this
adds the training stage's PyTorchJob being suspended, resumed, failed and retried, and kopf's CRD
discovery (every real API server serves CRDs; kmock's emulator does not unless declared).
"""
# ruff: noqa: F811  (the emulator fixture is imported from op_emulator)

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # the operator's test harness
from op_cluster import (
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

from kubefusion_operator.api import RETRY_ANNOTATION

pytestmark = pytest.mark.integration

NS, RUN = "ns1", "quickstart"
RUN_URL = f"/apis/kubefusion.dev/v1alpha1/namespaces/{NS}/fusionruns/{RUN}"
MERGE = {"Content-Type": "application/merge-patch+json"}


async def _advance_until(emulator, done, what: str) -> None:
    """Play the cluster (Deployments ready, Jobs complete, PyTorchJobs succeed) until done()."""
    cluster = Cluster(emulator, NS)
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {run_status(emulator, NS, RUN)}"
        await cluster.advance()
        await asyncio.sleep(0.02)


async def test_training_stage_suspend_failure_and_retry(emulator, tmp_path) -> None:
    emulator.declare(
        "apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", namespaced=False
    )
    async with operator_running(emulator, tmp_path, fast_config()):
        await create_run(emulator, example(RUN))
        await _advance_until(emulator, lambda: children(emulator, PYTORCHJOBS), "the SFT PyTorchJob")
        sft = children(emulator, PYTORCHJOBS)[0]

        def sft_job() -> dict:
            return emulator.find(PYTORCHJOBS, NS, sft) or {}

        # Suspend and resume: the operator patches the PyTorchJob's runPolicy.suspend.
        await emulator.patch(RUN_URL, json={"spec": {"suspend": True}}, headers=MERGE)
        await wait_for(lambda: sft_job()["spec"]["runPolicy"].get("suspend") is True, what="suspended")
        await emulator.patch(RUN_URL, json={"spec": {"suspend": False}}, headers=MERGE)
        await wait_for(lambda: sft_job()["spec"]["runPolicy"].get("suspend") is False, what="resumed")

        # A failed training stage, retried: the operator deletes the failed PyTorchJob and starts it again.
        await Cluster(emulator, NS).train(sft, "Failed")
        await wait_for(lambda: condition(emulator, NS, RUN, "Failed") == "True", what="Failed")
        failed_uid = sft_job()["metadata"]["uid"]
        await emulator.patch(
            RUN_URL, json={"metadata": {"annotations": {RETRY_ANNOTATION: "sft"}}}, headers=MERGE
        )
        await wait_for(
            lambda: sft_job().get("metadata", {}).get("uid") not in (None, failed_uid),
            what="a new PyTorchJob",
        )
