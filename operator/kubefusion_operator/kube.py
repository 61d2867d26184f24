"""The one module that talks to the Kubernetes API (besides kopf itself): create, patch, delete, list.

A small async client over aiohttp, built from kopf's ConnectionInfo, so that it shares kopf's event
loop and credentials (in-cluster service account or kubeconfig). It also scrapes stage pods'
Prometheus endpoints. Nothing here decides anything: handlers.py decides, render/ builds.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubefusion_operator.api import GROUP, PLURAL, VERSION


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Service": Kind("", "v1", "services"),
    "Pod": Kind("", "v1", "pods"),
    "Event": Kind("", "v1", "events"),
    "Deployment": Kind("apps", "v1", "deployments"),
    "Job": Kind("batch", "v1", "jobs"),
    "PyTorchJob": Kind("kubeflow.org", "v1", "pytorchjobs"),
    "FusionRun": Kind(GROUP, VERSION, PLURAL),
}
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "Job", "PyTorchJob")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


def _ssl_context(info: Any) -> ssl.SSLContext | bool:
    if getattr(info, "insecure", False):
        return False
    if not info.server.startswith("https"):
        return True
    context = ssl.create_default_context(cafile=info.ca_path or None, cadata=_text(info.ca_data))
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    return context


def _text(data: str | bytes | None) -> str | None:
    return data.decode() if isinstance(data, bytes) else data


class KubeApi:
    """Async Kubernetes API calls the operator makes for a FusionRun's children."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        scrape_timeout: float = 2.0,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "kubefusion-operator"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._scrape_timeout = aiohttp.ClientTimeout(total=scrape_timeout)
        self.requests = 0  # API requests made (the benchmark reads it)

    @classmethod
    def from_connection_info(cls, info: Any, **kwargs: Any) -> KubeApi:
        return cls(info.server, token=info.token, ssl_context=_ssl_context(info), **kwargs)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=30)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        self.requests += 1
        headers = {"Content-Type": content_type} if content_type else {}
        async with self._client().request(
            method, self.server + path, json=json, params=params, headers=headers, ssl=self._ssl
        ) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            if resp.status >= 400:
                body = body if isinstance(body, dict) else {}
                raise ApiError(resp.status, body.get("reason", resp.reason or ""), body.get("message", ""))
            return body

    async def list(
        self, kind: str, namespace: str, labels: dict[str, str], fields: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        params = {"labelSelector": selector}
        if fields:
            params["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        body = await self._call("GET", KINDS[kind].path(namespace), params=params)
        items = body.get("items", []) if isinstance(body, dict) else []
        # Filter again: a proxy or an old API server may ignore the selector.
        return [i for i in items if labels.items() <= (i.get("metadata", {}).get("labels") or {}).items()]

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", KINDS[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create; False when it already exists (creation is idempotent)."""
        kind = KINDS[obj["kind"]]
        try:
            await self._call("POST", kind.path(obj["metadata"].get("namespace")), json=obj)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self._call(
                "PATCH",
                KINDS[kind].path(namespace, name, subresource),
                json=patch,
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (pods go too); False when it was already gone."""
        try:
            await self._call(
                "DELETE",
                KINDS[kind].path(namespace, name),
                json={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def scrape(self, url: str) -> str | None:
        """A stage pod's Prometheus text, or None when it does not answer (a pod restarting)."""
        try:
            async with self._client().get(
                url, timeout=self._scrape_timeout, headers={"Accept": "text/plain"}
            ) as r:
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
