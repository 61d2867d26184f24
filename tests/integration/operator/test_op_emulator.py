"""The emulator behaves like an API server where the operator, kopf and kubectl rely on it."""
# ruff: noqa: F811  (pytest fixtures imported from op_emulator are test arguments)

from __future__ import annotations

import pytest
from op_emulator import ApiRequest, emulator, rbac_rules  # noqa: F401

pytestmark = pytest.mark.integration

CM = "/api/v1/namespaces/ns1/configmaps"


async def test_create_fills_metadata_and_patch_bumps_versions(emulator) -> None:
    resp = await emulator.post(CM, json={"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}})
    assert resp.status == 201
    created = await resp.json()
    meta = created["metadata"]
    assert (
        meta["namespace"] == "ns1" and meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    )
    again = await emulator.post(CM, json={"metadata": {"name": "a"}})
    assert again.status == 409
    resp = await emulator.patch(
        f"{CM}/a", json={"data": {"k": "w"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    patched = await resp.json()
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2 and patched["data"] == {"k": "w"}
    failed = await emulator.patch(
        f"{CM}/a",
        json=[{"op": "test", "path": "/data/k", "value": "old"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert failed.status == 422
    await emulator.post(CM, json={"metadata": {"name": "b", "labels": {"x": "2"}}})
    listing = await (await emulator.get(CM, params={"labelSelector": "x=1"})).json()
    assert listing["kind"] == "ConfigMapList" and listing["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a"]
    core = await (await emulator.get("/api/v1")).json()
    assert core["groupVersion"] == "v1"
    assert (await emulator.delete(f"{CM}/a")).status == 200
    assert (await emulator.get(f"{CM}/a")).status == 404


async def test_status_subresource_and_recording(emulator) -> None:
    url = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns"
    await emulator.post(url, json={"metadata": {"name": "r"}, "spec": {"a": 1}})
    await emulator.patch(
        f"{url}/r",
        json={"status": {"x": 1}, "spec": {"a": 1}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert "status" not in emulator.find("kubefusion.dev/v1alpha1/fusionruns", "ns1", "r")
    await emulator.patch(
        f"{url}/r/status", json={"status": {"x": 1}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    obj = emulator.find("kubefusion.dev/v1alpha1/fusionruns", "ns1", "r")
    assert obj["status"] == {"x": 1} and obj["metadata"]["generation"] == 1
    await emulator.get("/apis/kubefusion.dev/v1alpha1/fusionruns")
    assert emulator.api_requests == [
        ApiRequest("create", "kubefusion.dev", "fusionruns", None, True),
        ApiRequest("patch", "kubefusion.dev", "fusionruns", None, True),
        ApiRequest("patch", "kubefusion.dev", "fusionruns", "status", True),
        ApiRequest("list", "kubefusion.dev", "fusionruns", None, False),
    ]
    assert rbac_rules(emulator.api_requests)[("kubefusion.dev", "fusionruns")] == {"create", "patch", "list"}
