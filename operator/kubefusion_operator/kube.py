"""The one module that talks to the Kubernetes API (besides kopf itself): create, patch, delete, list.

Credentials come from the official client's configuration loader (`kubernetes.config`), the same code
kubectl-compatible tools use: every kubeconfig form works (embedded or file CA and client certificate,
bearer tokens, token files, exec plugins such as `aws eks get-token` or `gke-gcloud-auth-plugin`) and
so does the in-cluster service account, whose projected token is re-read as the kubelet rotates it.
`load_configuration()` loads it once per login; `connection_info()` hands the same settings to kopf
and `KubeApi.from_configuration()` to our own calls.

Our calls go over aiohttp, not a second client library: kopf already runs on aiohttp in this event
loop, and the loaded configuration is the single source of TLS and auth (the loader writes embedded
certificate data to files and exposes the token through a refresh hook, which re-runs an exec plugin
or re-reads the token file when it expires; we ask it for the Authorization header before each
request). kubernetes_asyncio would bring its own port of the kubeconfig loader, a second reading of
the same file that could disagree with kopf's login. Bodies are JSON only when the server says so:
a text/plain `404 page not found` (a kind the server does not serve) or an HTML 5xx from a proxy
becomes an ApiError with its status code. Nothing here decides anything: handlers.py decides,
render/ builds.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kubefusion_operator.api import GROUP, PLURAL, VERSION

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

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
    "NetworkPolicy": Kind("networking.k8s.io", "v1", "networkpolicies"),
    "PyTorchJob": Kind("kubeflow.org", "v1", "pytorchjobs"),
    "TrainJob": Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "FusionRun": Kind(GROUP, VERSION, PLURAL),
}
CHILD_KINDS = ("ConfigMap", "Service", "Deployment", "Job", "PyTorchJob", "TrainJob", "NetworkPolicy")


class ApiError(Exception):
    """An API answer >= 400, whatever its body: a Status (reason, message) or the body's first line."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


# -- credentials ------------------------------------------------------------------------------------
def load_configuration(service_account_dir: Path | None = None) -> Any:
    """The official client's Configuration: the pod's service account if there is one, else kubeconfig.

    Raises kubernetes.config.ConfigException when neither is usable.
    """
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    sa_dir = service_account_dir or SERVICE_ACCOUNT_DIR
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").is_file():
        InClusterConfigLoader(
            token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt")
        ).load_and_set(configuration)
    else:
        # $KUBECONFIG read now (the library reads it once, at import); a:b:c lists are merged.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
            persist_config=False,
        )
    return configuration


def authorization(configuration: Any) -> str | None:
    """The Authorization header now (runs the loader's refresh hook: exec plugin, token file)."""
    if configuration.username and configuration.password:
        return configuration.get_basic_auth_token()
    header = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return f"Bearer {token}" if token and scheme.lower() == "bearer" else header


def connection_info(configuration: Any, **kwargs: Any) -> Any:
    """kopf's ConnectionInfo for the same configuration (kwargs: e.g. trust_env)."""
    import kopf

    header = authorization(configuration) or ""
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        **kwargs,
    )


def ssl_context(configuration: Any) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return True
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _error(status: int, reason: str, content_type: str, raw: bytes) -> ApiError:
    if "json" in content_type:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            return ApiError(status, body.get("reason") or reason, body.get("message") or "")
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return ApiError(status, reason, (text[0] if text else "")[:300])


class KubeApi:
    """Async Kubernetes API calls the operator makes for a FusionRun's children."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        scrape_timeout: float = 2.0,
        auth: Callable[[], str | None] | None = None,
        reload: Callable[[], Any] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "kubefusion-operator"}
        self._auth = auth or (lambda: f"Bearer {token}" if token else None)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._scrape_timeout = aiohttp.ClientTimeout(total=scrape_timeout)
        self._reload = reload  # loads a fresh Configuration after a 401 (a rotated token)
        self.requests = 0  # API requests made (the benchmark reads it)

    @classmethod
    def from_configuration(
        cls, configuration: Any, *, reload: Callable[[], Any] | None = None, **kwargs: Any
    ) -> KubeApi:
        """A client over a loaded kubernetes.client.Configuration (see load_configuration).

        reload (e.g. load_configuration): called after a 401 to load the credentials again (a
        service-account token the kubelet rotated, an exec credential that was revoked early); the
        request is then retried once.
        """
        return cls(
            configuration.host,
            ssl_context=ssl_context(configuration),
            auth=lambda: authorization(configuration),
            reload=reload,
            **kwargs,
        )

    def use_configuration(self, configuration: Any) -> None:
        """Switch to freshly loaded credentials (same server); requests in flight finish as they are."""
        self._ssl = ssl_context(configuration)
        self._auth = lambda: authorization(configuration)

    async def _reauthenticate(self) -> bool:
        if self._reload is None:
            return False
        self.use_configuration(await asyncio.to_thread(self._reload))  # may run an exec plugin
        return True

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
        retry_unauthorized: bool = True,
    ) -> Any:
        self.requests += 1
        headers = {"Content-Type": content_type} if content_type else {}
        if header := self._auth():
            headers["Authorization"] = header
        async with self._client().request(
            method, self.server + path, json=json, params=params, headers=headers, ssl=self._ssl
        ) as resp:
            raw = await resp.read()
            kind = resp.headers.get("Content-Type", "")
            status, reason = resp.status, resp.reason or ""
        if status == 401 and retry_unauthorized and await self._reauthenticate():
            return await self._call(
                method, path, json=json, params=params, content_type=content_type, retry_unauthorized=False
            )
        if status >= 400:
            raise _error(status, reason, kind, raw)
        if not raw:
            return None
        if "json" not in kind:
            raise ApiError(status, "NotJSON", f"{method} {path}: a {kind or 'untyped'} body")
        return _json_loads(raw)

    async def get_path(self, path: str) -> dict[str, Any] | None:
        """GET a raw API path (e.g. a group/version for discovery); None on 404, whatever its body."""
        try:
            return await self._call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str, labels: dict[str, str], fields: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind with these labels (and fields), as the server lists them (items have no
        kind/apiVersion).

        [] when the server does not serve the kind (404: its CRD is not installed).
        """
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())}
        if fields:
            params["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        try:
            body = await self._call("GET", KINDS[kind].path(namespace), params=params)
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
        return (body.get("items") or []) if isinstance(body, dict) else []

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
            if exc.status == 409 and exc.reason == "AlreadyExists":
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


def _json_loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(200, "BadJSON", f"the API answered malformed JSON: {exc}") from None
