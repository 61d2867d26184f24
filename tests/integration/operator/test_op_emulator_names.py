"""The names admission check refuses what kube-apiserver (and the training operator) would."""
# ruff: noqa: F811  (pytest fixtures imported from op_emulator are test arguments)

from __future__ import annotations

import pytest
from emulator_admission import names
from op_emulator import emulator  # noqa: F401

pytestmark = pytest.mark.integration

NS = "/apis/batch/v1/namespaces/ns1/jobs"


def job(name: str, **spec) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def pytorchjob(name: str, workers: int) -> dict:
    replicas = {"Master": {"replicas": 1}, "Worker": {"replicas": workers}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": replicas},
    }


async def test_check_is_on_by_default(emulator) -> None:
    assert names.check in emulator.admission_checks


@pytest.mark.parametrize(
    ("path", "obj", "field"),
    [
        ("/api/v1/namespaces/ns1/services", {"metadata": {"name": "9svc"}}, "metadata.name"),
        ("/api/v1/namespaces/ns1/services", {"metadata": {"name": "s" * 64}}, "metadata.name"),
        ("/api/v1/namespaces/ns1/configmaps", {"metadata": {"name": "Upper"}}, "metadata.name"),
        ("/api/v1/namespaces/ns1/configmaps", {"metadata": {"name": "c" * 254}}, "metadata.name"),
        (NS, job("j" * 64), "metadata.name"),
        (NS, job("j" * 61, completionMode="Indexed", completions=11), "metadata.name"),  # j*61-10: 64
        (
            "/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs",
            pytorchjob("p" * 54, 100),
            "spec.pytorchReplicaSpecs.Worker",
        ),
        ("/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs", pytorchjob("1train", 1), "metadata.name"),
    ],
    ids=[
        "service-digit",
        "service-64",
        "configmap-upper",
        "configmap-254",
        "job-64",
        "indexed-hostname",
        "pytorch-service",
        "pytorch-digit",
    ],
)
async def test_refuses_bad_names(emulator, path: str, obj: dict, field: str) -> None:
    resp = await emulator.post(path, json=obj)
    body = await resp.json()
    assert resp.status == 422, body
    assert body["reason"] == "Invalid" and f"{field}: Invalid value" in body["message"]
    assert emulator.timeline == []  # nothing was stored


@pytest.mark.parametrize(
    ("path", "obj"),
    [
        ("/api/v1/namespaces/ns1/services", {"metadata": {"name": "s" * 63}}),
        ("/api/v1/namespaces/ns1/configmaps", {"metadata": {"name": "a.b-" + "c" * 200}}),
        (NS, job("j" * 63)),
        (NS, job("j" * 61, completionMode="Indexed", completions=9)),  # largest hostname j*61-8: 63
        ("/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs", pytorchjob("p" * 53, 100)),  # p*53-worker-99: 63
    ],
    ids=["service-63", "configmap-subdomain", "job-63", "indexed-63", "pytorch-63"],
)
async def test_accepts_names_at_the_limit(emulator, path: str, obj: dict) -> None:
    resp = await emulator.post(path, json=obj)
    assert resp.status == 201, await resp.text()
