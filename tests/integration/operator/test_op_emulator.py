"""The emulator behaves like an API server where the operator, kopf and kubectl rely on it."""
# ruff: noqa: F811  (pytest fixtures imported from op_emulator are test arguments)

from __future__ import annotations

import asyncio
import json

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


MERGE = {"Content-Type": "application/merge-patch+json"}
JOBS = "/apis/batch/v1/namespaces/ns1/jobs"


async def test_list_items_carry_no_kind_but_gets_and_watches_do(emulator) -> None:
    await emulator.post(CM, json={"metadata": {"name": "a"}})
    listing = await (await emulator.get(CM)).json()
    assert listing["kind"] == "ConfigMapList" and listing["items"]
    assert all("kind" not in i and "apiVersion" not in i for i in listing["items"])
    fetched = await (await emulator.get(f"{CM}/a")).json()
    assert fetched["kind"] == "ConfigMap" and fetched["apiVersion"] == "v1"  # filled in on create


async def test_unserved_paths_answer_plain_text_404(emulator) -> None:
    emulator.withdraw("kubeflow.org/v1/pytorchjobs")
    for path in (
        "/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs",
        "/apis/kubeflow.org/v1/pytorchjobs",
        "/apis/kubeflow.org/v1",
        "/apis/nothing.example.com/v1/namespaces/ns1/widgets/w",
    ):
        resp = await emulator.get(path)
        assert resp.status == 404, path
        assert resp.content_type == "text/plain" and await resp.text() == "404 page not found\n", path
    resp = await emulator.post(
        "/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs", json={"metadata": {"name": "x"}}
    )
    assert resp.status == 404 and resp.content_type == "text/plain"
    groups = await (await emulator.get("/apis")).json()
    assert "kubeflow.org" not in {g["name"] for g in groups["groups"]}
    emulator.declare("kubeflow.org/v1/pytorchjobs", "PyTorchJob", subresources=["status"])
    assert (await emulator.get("/apis/kubeflow.org/v1/namespaces/ns1/pytorchjobs")).status == 200


async def test_missing_object_is_a_status_404_and_duplicates_409(emulator) -> None:
    resp = await emulator.get(f"{JOBS}/nope")
    body = await resp.json()
    assert resp.status == 404 and resp.content_type == "application/json"
    assert (body["kind"], body["reason"], body["message"]) == (
        "Status",
        "NotFound",
        'jobs.batch "nope" not found',
    )
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    assert (await emulator.post(JOBS, json=job)).status == 201
    again = await emulator.post(JOBS, json=job)
    body = await again.json()
    assert again.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "j" already exists'


async def test_stale_resource_version_conflicts(emulator) -> None:
    created = await (await emulator.post(CM, json={"metadata": {"name": "c"}, "data": {"k": "1"}})).json()
    stale = created["metadata"]["resourceVersion"]
    await emulator.patch(f"{CM}/c", json={"data": {"k": "2"}}, headers=MERGE)
    resp = await emulator.patch(
        f"{CM}/c", json={"metadata": {"resourceVersion": stale}, "data": {"k": "3"}}, headers=MERGE
    )
    assert resp.status == 409 and (await resp.json())["reason"] == "Conflict"
    put = await emulator.put(f"{CM}/c", json={**created, "data": {"k": "4"}})
    assert put.status == 409
    assert emulator.find("v1/configmaps", "ns1", "c")["data"] == {"k": "2"}


async def test_requests_a_real_server_refuses(emulator) -> None:
    wrong_ns = await emulator.post(CM, json={"metadata": {"name": "x", "namespace": "ns2"}})
    assert wrong_ns.status == 400
    wrong_kind = await emulator.post(
        CM, json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}
    )
    assert wrong_kind.status == 400
    cluster_path = await emulator.post("/api/v1/configmaps", json={"metadata": {"name": "x"}})
    assert cluster_path.status == 405
    no_namespace = await emulator.post(
        "/api/v1/namespaces/elsewhere/configmaps", json={"metadata": {"name": "x"}}
    )
    assert (
        no_namespace.status == 404
        and (await no_namespace.json())["message"] == 'namespaces "elsewhere" not found'
    )
    bad_selector = await emulator.get(CM, params={"labelSelector": "a in (x"})
    assert bad_selector.status == 400
    assert emulator.live("v1/configmaps") == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", ["a"]),
        ("tier==web", ["a"]),
        ("tier!=web", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("tier in (web,db)", ["a", "b"]),
        ("tier notin (web)", ["b", "c"]),
        ("tier in (web, db),env=prod", ["b"]),
        ("", ["a", "b", "c"]),
    ],
)
async def test_label_selectors(emulator, selector: str, expected: list[str]) -> None:
    for name, labels in (
        ("a", {"tier": "web"}),
        ("b", {"tier": "db", "env": "prod"}),
        ("c", {"env": "prod"}),
    ):
        await emulator.post(CM, json={"metadata": {"name": name, "labels": labels}})
    listing = await (await emulator.get(CM, params={"labelSelector": selector})).json()
    assert sorted(i["metadata"]["name"] for i in listing["items"]) == expected


async def _watch_lines(emulator, params: dict[str, str], count: int, timeout: float = 5.0) -> list[dict]:
    events = []
    resp = await emulator.get(CM, params={"watch": "true", **params})
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await resp.content.readline()
            if not line:
                break  # the server ended the watch
            events.append(json.loads(line))
    resp.close()
    return events


async def test_watch_resumes_from_a_resource_version(emulator) -> None:
    await emulator.post(CM, json={"metadata": {"name": "before"}})
    listing = await (await emulator.get(CM)).json()
    version = listing["metadata"]["resourceVersion"]
    await emulator.post(CM, json={"metadata": {"name": "after", "labels": {"x": "1"}}})
    await emulator.delete(f"{CM}/after")
    events = await _watch_lines(emulator, {"resourceVersion": version}, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("DELETED", "after"),
    ]
    assert events[0]["object"]["kind"] == "ConfigMap"  # watch events carry kind, unlike list items
    other = await _watch_lines(
        emulator, {"resourceVersion": version, "labelSelector": "x!=1", "timeoutSeconds": "1"}, 1
    )
    assert other == []  # the selector applies to watches too
    now = await _watch_lines(emulator, {}, 1)  # no resourceVersion: the current objects as ADDED first
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in now] == [("ADDED", "before")]


async def test_watch_from_a_compacted_version_is_410_gone(emulator) -> None:
    created = await (await emulator.post(CM, json={"metadata": {"name": "a"}})).json()
    await emulator.patch(f"{CM}/a", json={"data": {"k": "v"}}, headers=MERGE)
    emulator.compact()
    events = await _watch_lines(emulator, {"resourceVersion": created["metadata"]["resourceVersion"]}, 1)
    assert events[0]["type"] == "ERROR"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")


async def test_watch_bookmarks_and_timeout(emulator) -> None:
    emulator.bookmark_interval = 0.1
    listing = await (await emulator.get(CM)).json()
    events = await _watch_lines(
        emulator,
        {
            "resourceVersion": listing["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "1",
        },
        100,
    )
    assert events and {e["type"] for e in events} == {"BOOKMARK"}  # the stream ended at timeoutSeconds
    assert events[-1]["object"]["kind"] == "ConfigMap" and events[-1]["object"]["metadata"]["resourceVersion"]
    quiet = await _watch_lines(
        emulator, {"resourceVersion": listing["metadata"]["resourceVersion"], "timeoutSeconds": "1"}, 1
    )
    assert quiet == []  # no bookmarks unless asked for; the stream still ends at the timeout


async def test_patch_needs_a_patch_media_type(emulator) -> None:
    await emulator.post(CM, json={"metadata": {"name": "p"}})
    plain = await emulator.patch(f"{CM}/p", json={"data": {"k": "v"}})  # application/json
    assert plain.status == 415 and (await plain.json())["reason"] == "UnsupportedMediaType"
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    assert (await emulator.patch(f"{CM}/p", json={"data": {"k": "v"}}, headers=strategic)).status == 200
    runs = "/apis/kubefusion.dev/v1alpha1/namespaces/ns1/fusionruns"
    await emulator.post(runs, json={"metadata": {"name": "r"}, "spec": {}})
    custom = await emulator.patch(f"{runs}/r", json={"spec": {"a": 1}}, headers=strategic)
    assert custom.status == 415  # no strategic merge for custom resources
    apply = {"Content-Type": "application/apply-patch+yaml"}
    assert (await emulator.patch(f"{CM}/p", data=b"data: {k: w}", headers=apply)).status == 415
    assert emulator.find("v1/configmaps", "ns1", "p")["data"] == {"k": "v"}
