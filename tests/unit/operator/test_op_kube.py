"""KubeApi against a tiny HTTP server answering as kube-apiserver and proxies do: bodies are JSON only
when they say so, unserved kinds are "none installed", and a 401 reloads the credentials once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp.web
import pytest
import pytest_asyncio
from kubernetes import client

from kubefusion_operator.kube import ApiError, KubeApi, authorization


def status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code)


ROUTES = {
    "/apis/kubeflow.org/v1/namespaces/ns/pytorchjobs": lambda: aiohttp.web.Response(
        status=404, text="404 page not found\n", content_type="text/plain"
    ),
    "/apis/kubeflow.org/v1": lambda: aiohttp.web.Response(
        status=404, text="404 page not found\n", content_type="text/plain"
    ),
    "/apis/batch/v1": lambda: aiohttp.web.json_response(
        {"kind": "APIResourceList", "groupVersion": "batch/v1"}
    ),
    "/apis/batch/v1/namespaces/ns/jobs": lambda: aiohttp.web.json_response(
        {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": [{"metadata": {"name": "j"}}]}
    ),
    "/apis/batch/v1/namespaces/ns/jobs/gone": lambda: status(404, "NotFound", 'jobs.batch "gone" not found'),
    "/api/v1/namespaces/ns/configmaps": lambda: aiohttp.web.Response(
        status=503,
        text="<html>\n<h1>503 Service Temporarily Unavailable</h1>\n</html>",
        content_type="text/html",
    ),
    "/api/v1/namespaces/ns/pods": lambda: status(403, "Forbidden", 'pods is forbidden: User "x" cannot list'),
    "/api/v1/namespaces/ns/services": lambda: aiohttp.web.Response(text="ok", content_type="text/plain"),
}


@pytest_asyncio.fixture()
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    tokens: list[str] = []

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        tokens.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") == "Bearer expired":
            return status(401, "Unauthorized", "Unauthorized")
        if request.method == "POST":
            data = await request.json()
            if data["metadata"]["name"] == "exists":
                return status(409, "AlreadyExists", 'jobs.batch "exists" already exists')
            return status(409, "Conflict", "the object has been modified")
        return ROUTES[request.path]()

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", tokens  # type: ignore[union-attr]
    await runner.cleanup()


@pytest_asyncio.fixture()
async def api(server) -> AsyncIterator[KubeApi]:
    kube = KubeApi(server[0], token="t")
    yield kube
    await kube.close()


async def test_unserved_kind_lists_as_none_installed(api: KubeApi) -> None:
    assert await api.list("PyTorchJob", "ns", {"a": "b"}) == []
    assert await api.get_path("/apis/kubeflow.org/v1") is None
    assert (await api.get_path("/apis/batch/v1"))["groupVersion"] == "batch/v1"


async def test_list_items_come_as_served(api: KubeApi) -> None:
    assert await api.list("Job", "ns", {"a": "b"}) == [{"metadata": {"name": "j"}}]
    assert await api.get("Job", "ns", "gone") is None


async def test_non_json_errors_keep_their_status(api: KubeApi) -> None:
    with pytest.raises(ApiError) as html:
        await api.list("ConfigMap", "ns", {})
    assert html.value.status == 503 and html.value.message == "<html>"
    with pytest.raises(ApiError) as forbidden:
        await api.list("Pod", "ns", {})
    assert (forbidden.value.status, forbidden.value.reason) == (403, "Forbidden")
    assert 'User "x" cannot list' in forbidden.value.message
    with pytest.raises(ApiError) as text:
        await api.list("Service", "ns", {})
    assert text.value.reason == "NotJSON"


async def test_create_is_idempotent_only_for_already_exists(api: KubeApi) -> None:
    job = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "exists", "namespace": "ns"}}
    assert await api.create(job) is False
    with pytest.raises(ApiError):
        await api.create({**job, "metadata": {"name": "other", "namespace": "ns"}})


async def test_401_reloads_credentials_once(server) -> None:
    url, tokens = server
    fresh = client.Configuration(
        host=url, api_key={"BearerToken": "fresh"}, api_key_prefix={"BearerToken": "Bearer"}
    )
    stale = client.Configuration(
        host=url, api_key={"BearerToken": "expired"}, api_key_prefix={"BearerToken": "Bearer"}
    )
    reloads = []

    def reload() -> client.Configuration:
        reloads.append(1)
        return fresh

    api = KubeApi.from_configuration(stale, reload=reload)
    try:
        assert await api.list("Job", "ns", {}) == [{"metadata": {"name": "j"}}]
    finally:
        await api.close()
    assert tokens == ["Bearer expired", "Bearer fresh"] and reloads == [1]


def test_authorization_header_forms() -> None:
    in_cluster = client.Configuration(api_key={"BearerToken": "bearer abc"})  # the in-cluster loader's form
    assert authorization(in_cluster) == "Bearer abc"
    assert authorization(client.Configuration()) is None
    basic = client.Configuration(username="u", password="p")
    assert authorization(basic).startswith("Basic ")
