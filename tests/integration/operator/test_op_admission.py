"""The emulator's admission checks refuse what kube-apiserver refuses, and the operator's children pass them."""
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import copy
import time

import pytest
from emulator_admission import pod_security, rbac, schema
from op_cluster import (
    JOBS,
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
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration

BARE_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "bare"},
    "spec": {"containers": [{"name": "stage", "image": "busybox"}]},
}
RESTRICTED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "good"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "stage",
                "image": "busybox",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    },
}


async def test_pod_security_refuses_a_bad_pod_in_a_restricted_namespace(emulator) -> None:
    emulator.admission_checks.append(pod_security.check)
    pod_security.label_namespace(emulator, "ns1", enforce="restricted")
    resp = await emulator.post("/api/v1/namespaces/ns1/pods", json=BARE_POD)
    assert resp.status == 403
    status = await resp.json()
    assert status["kind"] == "Status" and status["reason"] == "Forbidden"
    message = status["message"]
    assert message.startswith('pods "bare" is forbidden: violates PodSecurity "restricted:latest": ')
    for control in (
        'allowPrivilegeEscalation != false (container "stage"',
        "unrestricted capabilities",
        "runAsNonRoot != true",
        "seccompProfile",
    ):
        assert control in message
    assert emulator.find("v1/pods", "ns1", "bare") is None
    # The same pod in a namespace without the label, and a compliant pod in the labelled one, pass.
    assert (await emulator.post("/api/v1/namespaces/ns2/pods", json=BARE_POD)).status == 201
    assert (await emulator.post("/api/v1/namespaces/ns1/pods", json=RESTRICTED_POD)).status == 201
    # One forbidden field is enough.
    root = copy.deepcopy(RESTRICTED_POD)
    root["metadata"]["name"] = "root"
    root["spec"]["securityContext"]["runAsUser"] = 0
    resp = await emulator.post("/api/v1/namespaces/ns1/pods", json=root)
    assert resp.status == 403 and "runAsUser=0" in (await resp.json())["message"]


async def test_pod_security_refuses_a_job_whose_template_breaks_the_profile(emulator) -> None:
    emulator.admission_checks.append(pod_security.check)
    pod_security.label_namespace(emulator, "ns1", enforce="restricted")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "old-prepare"},
        "spec": {"template": {"spec": {**BARE_POD["spec"], "restartPolicy": "Never"}}},
    }
    resp = await emulator.post("/apis/batch/v1/namespaces/ns1/jobs", json=job)
    assert resp.status == 403
    message = (await resp.json())["message"]
    assert message.startswith('jobs.batch "old-prepare" is forbidden: violates PodSecurity')
    assert "spec.template.spec: allowPrivilegeEscalation != false" in message


async def test_a_run_in_a_restricted_namespace_succeeds(emulator, tmp_path) -> None:
    emulator.admission_checks.append(pod_security.check)
    pod_security.label_namespace(emulator, "ns1", enforce="restricted")
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await drive_to_end(emulator, "quickstart")
    assert condition(emulator, "ns1", "quickstart", "Succeeded") == "True", run_status(
        emulator, "ns1", "quickstart"
    )
    assert any(name == "quickstart-prepare" for _, _, name in emulator.timeline)
    assert emulator.live(JOBS, "ns1")  # the stage Jobs were admitted


async def test_schema_refuses_an_invalid_object_with_422_and_a_status_body(emulator) -> None:
    emulator.admission_checks.append(schema.check)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "typo"},
        "spec": {
            "backoffLimit": "three",
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "b"}]}},
        },
    }
    resp = await emulator.post("/apis/batch/v1/namespaces/ns1/jobs", json=job)
    assert resp.status == 422
    status = await resp.json()
    assert status["kind"] == "Status" and status["reason"] == "Invalid" and status["code"] == 422
    assert status["message"].startswith('Job.batch "typo" is invalid: spec.backoffLimit: Invalid value:')
    assert status["details"]["causes"][0]["field"] == "spec.backoffLimit"
    assert status["details"]["kind"] == "Job" and status["details"]["name"] == "typo"
    assert emulator.find(JOBS, "ns1", "typo") is None
    # An unknown field in a container is refused too (strict); a valid Job is stored.
    job["spec"]["backoffLimit"] = 3
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    resp = await emulator.post("/apis/batch/v1/namespaces/ns1/jobs", json=job)
    assert resp.status == 422 and "securityContxt" in (await resp.json())["message"]
    del job["spec"]["template"]["spec"]["containers"][0]["securityContxt"]
    assert (await emulator.post("/apis/batch/v1/namespaces/ns1/jobs", json=job)).status == 201
    # A patch that makes it invalid is refused and leaves it as it was.
    resp = await emulator.patch(
        "/apis/batch/v1/namespaces/ns1/jobs/typo",
        json={"spec": {"parallelism": "many"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status == 422
    assert "parallelism" not in emulator.find(JOBS, "ns1", "typo")["spec"]


# The test's own client sends these as if it were the operator's ServiceAccount (a kmock/ agent, so the
# chart's RBAC derivation does not count them as the operator's requests).
OPERATOR_AGENT = {"User-Agent": "kmock/ as-the-operator"}


def owned_job(name: str) -> dict:
    owner = {
        "apiVersion": "kubefusion.dev/v1alpha1",
        "kind": "FusionRun",
        "name": "quickstart",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "b"}]}}
        },
    }


async def test_rbac_refuses_what_the_chart_does_not_grant(emulator) -> None:
    granted = rbac.chart_rules()
    without_finalizers = [r for r in granted if "fusionruns/finalizers" not in r.get("resources", [])]
    assert len(without_finalizers) == len(granted) - 1  # the chart grants it (blockOwnerDeletion)
    check = rbac.RbacCheck(without_finalizers, applies_to=lambda agent: agent == OPERATOR_AGENT["User-Agent"])
    emulator.admission_checks.append(check)
    url = "/apis/batch/v1/namespaces/ns1/jobs"
    resp = await emulator.post(url, json=owned_job("child"), headers=OPERATOR_AGENT)
    assert resp.status == 403
    message = (await resp.json())["message"]
    assert message.startswith('jobs.batch "child" is forbidden: cannot set blockOwnerDeletion')
    assert '"fusionruns/finalizers" in API group "kubefusion.dev"' in message
    # Not granted at all: Secrets.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    resp = await emulator.post("/api/v1/namespaces/ns1/secrets", json=secret, headers=OPERATOR_AGENT)
    assert resp.status == 403
    assert 'cannot create resource "secrets" in API group ""' in (await resp.json())["message"]
    # With the chart's full rules the child is created; the test's own requests are never checked.
    check.rules = granted
    assert (await emulator.post(url, json=owned_job("child"), headers=OPERATOR_AGENT)).status == 201
    assert (await emulator.post("/api/v1/namespaces/ns1/secrets", json=secret)).status == 201


async def test_a_run_passes_every_admission_check(emulator, tmp_path) -> None:
    """Restricted namespace, schema checks and the chart's RBAC at once: the run still succeeds."""
    pod_security.label_namespace(emulator, "ns1", enforce="restricted")
    emulator.admission_checks += [pod_security.check, schema.check, rbac.RbacCheck(rbac.chart_rules())]
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("wrpo-llama3-8b"))
        await drive_to_end(emulator, "wrpo-llama3-8b", timeout=60)
    assert condition(emulator, "ns1", "wrpo-llama3-8b", "Succeeded") == "True", run_status(
        emulator, "ns1", "wrpo-llama3-8b"
    )


def reconcile_failed(emulator) -> dict | None:
    conds = run_status(emulator, "ns1", "quickstart").get("conditions", [])
    return next((c for c in conds if c["type"] == "ReconcileFailed"), None)


async def calls_per_minute(emulator, seconds: float = 3.0) -> float:
    before, started = len(emulator.operator_requests()), time.monotonic()
    await asyncio.sleep(seconds)
    return (len(emulator.operator_requests()) - before) / (time.monotonic() - started) * 60


@pytest.mark.parametrize("refusal", ["schema-422", "rbac-403"])
async def test_a_refused_child_is_reported_on_the_run_without_a_hot_loop(emulator, tmp_path, refusal) -> None:
    """The API server refuses the first child (an invalid affinity the spec lets through; RBAC without
    `create jobs`): the run names the child and the server's message, retried with capped backoff."""
    doc = example("quickstart")
    if refusal == "schema-422":
        emulator.admission_checks.append(schema.check)
        doc["spec"]["scheduling"] = {"affinity": {"nodeAffinity": {"requiredDuringScheduling": {}}}}
        expected = ["Job/quickstart-prepare", "422 Invalid", "spec.template.spec.affinity.nodeAffinity"]
    else:
        rules = [r for r in rbac.chart_rules() if "jobs" not in r.get("resources", [])]
        emulator.admission_checks.append(rbac.RbacCheck(rules))
        expected = [
            "Job/quickstart-prepare",
            "403 Forbidden",
            'cannot create resource "jobs" in API group "batch"',
        ]
    config = fast_config(retry_backoff=0.2, retry_backoff_max=1.0, progress_interval=0.2)
    async with operator_running(emulator, tmp_path, config):
        await create_run(emulator, doc)
        cond = await wait_for(lambda: reconcile_failed(emulator), what="the ReconcileFailed condition")
        assert cond["status"] == "True" and cond["reason"] == "ChildRefused"
        for part in expected:
            assert part in cond["message"], (part, cond["message"])
        per_minute = await calls_per_minute(emulator)
        print(f"\n{refusal}: {per_minute:.0f} operator API calls per minute while refused")
        assert per_minute <= 60 / 1.0 * 12  # at most one attempt per backoff cap, a dozen calls each
    assert children(emulator, JOBS) == []


def test_pod_security_reads_partial_trainjob_pod_overrides() -> None:
    """TrainJob overrides are partial (the runtime supplies the rest): only values set to break the
    profile count."""
    container = {"name": "node", "env": [{"name": "A", "value": "1"}]}
    job = {"kind": "TrainJob", "spec": {"podTemplateOverrides": [{"spec": {"containers": [container]}}]}}
    assert pod_security.violations(job) == []
    container["securityContext"] = {"allowPrivilegeEscalation": True}
    job["spec"]["podTemplateOverrides"][0]["spec"]["securityContext"] = {"runAsUser": 0}
    problems = pod_security.violations(job)
    assert [p.split(":")[0] for p in problems] == ["spec.podTemplateOverrides[0].spec"] * 2
    assert "runAsNonRoot != true" in problems[0] and "allowPrivilegeEscalation != false" in problems[1]
