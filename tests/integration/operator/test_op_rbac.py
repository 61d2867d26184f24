"""The RBAC the operator needs, derived from every API request it makes (docs/operator.md lists it)."""
# ruff: noqa: F811

from __future__ import annotations

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
    wait_for,
)
from op_emulator import emulator, rbac_rules  # noqa: F401

from kubefusion_operator.api import RETRY_ANNOTATION

pytestmark = pytest.mark.integration
URL = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns/quickstart"
MERGE = {"Content-Type": "application/merge-patch+json"}

# What the Helm chart's ClusterRole must grant (cluster-wide mode).
EXPECTED = {
    ("kubefusion.dev", "fusionruns"): {"list", "watch", "get", "patch"},
    ("kubefusion.dev", "fusionruns/status"): {"patch"},
    # Not a request: the authorization check blockOwnerDeletion triggers (op_emulator docstring).
    ("kubefusion.dev", "fusionruns/finalizers"): {"update"},
    ("apps", "deployments"): {"list", "watch", "create", "patch", "delete"},
    ("batch", "jobs"): {"list", "watch", "create", "patch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"list", "watch", "create", "patch", "delete"},
    ("", "services"): {"list", "create", "delete"},
    ("", "configmaps"): {"create", "list", "delete"},
    ("", "pods"): {"list"},
    ("", "events"): {"create", "list"},
    # Sandbox pods' deny-all NetworkPolicy (code datasets; test_op_sandbox.py creates and deletes one).
    ("networking.k8s.io", "networkpolicies"): {"list", "create", "delete"},
}


async def test_operator_requests_give_its_rbac(emulator, tmp_path) -> None:
    cluster = Cluster(emulator)
    async with operator_running(emulator, tmp_path):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"])
        # The progress ticker lists the run's pods while a stage runs.
        await wait_for(
            lambda: any(r.resource == "pods" for r in emulator.operator_requests()), what="a scrape"
        )
        await cluster.fail("quickstart-prepare")
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Failed") == "True")
        await emulator.patch(
            URL, json={"metadata": {"annotations": {RETRY_ANNOTATION: "prepare"}}}, headers=MERGE
        )
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True")
        await wait_for(
            lambda: (emulator.find(JOBS, "ns1", "quickstart-prepare") or {"status": 1}).get("status") is None
        )
        await cluster.complete("quickstart-prepare")
        await wait_for(lambda: len(children(emulator, "apps/v1/deployments")) == 2)
        await emulator.patch(URL, json={"spec": {"suspend": True}}, headers=MERGE)
        await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Suspended") == "True")
        await emulator.patch(URL, json={"spec": {"suspend": False}}, headers=MERGE)
        await drive_to_end(emulator, "quickstart")
        await emulator.delete(URL)
        await wait_for(lambda: emulator.live("v1/configmaps", "ns1") == [], what="cleanup")
    rules = rbac_rules(emulator.operator_requests())
    # Every request is allowed by the documented rules, and every documented resource was used
    # (verbs such as patch on jobs only show when a Job is live at suspend time).
    assert rules.keys() == EXPECTED.keys()
    for key, verbs in rules.items():
        assert verbs <= EXPECTED[key], key
    assert not any(r.resource == "secrets" for r in emulator.operator_requests())
