"""A Kubernetes API emulator for the operator's tests, recording every request it serves.

kmock.KubernetesEmulator is an in-memory API server over real HTTP. This subclass makes it behave like
a real API server where kopf, kubectl and our client rely on it:
- create fills metadata.uid, resourceVersion, generation, creationTimestamp, namespace (and a name
  from generateName) and answers 201; a second create of the same name answers 409;
- every write bumps resourceVersion; generation grows when anything outside metadata/status changes;
- PATCH takes merge patches and JSON patches (a failed `test` op answers 422); writes to /status
  change only .status, and writes to the main resource leave .status alone when the resource has a
  status subresource; PUT replaces (409 on a stale resourceVersion);
- DELETE honours finalizers (deletionTimestamp, then gone when they are removed);
- lists carry kind/apiVersion/resourceVersion and honour equality label selectors (a=b, a!=b, a, !a);
- /api/v1 discovery says groupVersion v1; /openapi/v2 and /openapi/v3 answer empty documents;
- a create whose ownerReferences set blockOwnerDeletion records the authorization check kube-apiserver's
  OwnerReferencesPermissionEnforcement plugin makes: `update` on the owner's `finalizers` subresource
  (so RBAC derived from the recorded requests grants it; emulator_admission/rbac.py enforces it).
Like kmock it has no garbage collection by ownerReference and no schema validation.

Recording (for RBAC derivation, e.g. by the Helm chart's tests)::

    async with emulator_server() as emulator:
        ...  # run the operator against emulator.url
        emulator.api_requests        # [ApiRequest(verb, api_group, resource, subresource, namespaced), ...]
        emulator.operator_requests() # the same without the test's own client and kubectl
        rbac_rules(emulator.api_requests)  # {(api_group, resource_or_resource/subresource): {verbs}}

verb is the RBAC verb: get, list, watch, create, patch, update, delete, deletecollection.
Only resource requests are recorded (discovery and /version are not: RBAC allows them to everyone).
The pytest fixture `emulator` (import it into a test module: `from op_emulator import emulator`)
yields a started RecordingEmulator with the resources the operator uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import datetime
import itertools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import aiohttp.web
import jsonpatch
import kmock
import pytest_asyncio
import yaml
from kmock._internal import dicts, k8s, rendering

# (group/version/plural, kind, namespaced, subresources)
OPERATOR_RESOURCES: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("kubefusion.dev/v1alpha1/fusionruns", "FusionRun", True, ("status",)),
    ("apps/v1/deployments", "Deployment", True, ("status", "scale")),
    ("batch/v1/jobs", "Job", True, ("status",)),
    ("kubeflow.org/v1/pytorchjobs", "PyTorchJob", True, ("status",)),
    ("v1/services", "Service", True, ()),
    ("v1/configmaps", "ConfigMap", True, ()),
    ("v1/events", "Event", True, ()),
    ("v1/pods", "Pod", True, ("status",)),
    ("v1/secrets", "Secret", True, ()),
    ("v1/namespaces", "Namespace", False, ("status",)),
]


SHORT_NAMES = {"FusionRun": {"fr"}, "Deployment": {"deploy"}, "Service": {"svc"}, "ConfigMap": {"cm"}}


# The User-Agent of the request being served (aiohttp serves each request in its own task): admission
# checks that depend on who asks (emulator_admission/rbac.py) read it.
current_agent: contextvars.ContextVar[str] = contextvars.ContextVar("current_agent", default="")


class ApiRequest(NamedTuple):
    verb: str  # the RBAC verb
    api_group: str  # "" for the core group
    resource: str  # plural
    subresource: str | None
    namespaced: bool


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_error(code: int, reason: str, message: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=code, reason=reason, message=message, details={})


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _method(request: rendering.Request) -> str:
    return str(getattr(request.method, "value", request.method)).upper()


def _rbac_verb(request: rendering.Request) -> str:
    method = _method(request)
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())


class Admission(NamedTuple):
    """One write as an admission check sees it."""

    verb: str  # create | patch | update
    resource: Any  # kmock.resource (group, version, plural)
    namespace: str | None
    obj: dict[str, Any]  # the object as it would be stored
    old: dict[str, Any] | None  # the stored object before the write (None on create)
    subresource: str | None
    system: bool  # written by the test as a controller/kubelet would (emulator.write), not a client


AdmissionCheck = Callable[["RecordingEmulator", Admission], None]


def refuse(code: int, reason: str, message: str) -> k8s.KubernetesError:
    """The error an admission check raises: the API server's Status with this code, reason, message."""
    return _status_error(code, reason, message)


class RecordingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server behaviour listed in the module docstring, and a request log."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.api_requests: list[ApiRequest] = []
        self.api_request_agents: list[str] = []  # the User-Agent of each recorded request
        self.namespaces: set[str] = {"default", "ns1", "ns2"}  # besides those of stored objects
        # resource -> (namespace, name) -> object: lists and fetches without scanning every object.
        self._index: dict[Any, dict[tuple[str | None, str], Any]] = {}
        # Every write as the watchers see it, in order: (ADDED|MODIFIED|DELETED, plural, name).
        self.timeline: list[tuple[str, str, str]] = []
        self.timeline_times: list[float] = []  # time.monotonic() of each timeline entry
        self._rv = itertools.count(1000)
        # Admission: each check sees every write before it is stored and refuses it by raising a
        # k8s.KubernetesError (use `refuse()`); checks live in their own modules (emulator_admission/).
        self.admission_checks: list[AdmissionCheck] = []
        self.fallback["get", "/openapi/v2"] << {"swagger": "2.0", "info": {}, "paths": {}, "definitions": {}}
        self.fallback["get", "/openapi/v3"] << {"paths": {}}
        for key, kind, namespaced, subresources in OPERATOR_RESOURCES:
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=namespaced,
                subresources=set(subresources),
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
                shortnames=SHORT_NAMES.get(kind, set()),
            )

    def operator_requests(self) -> list[ApiRequest]:
        """The recorded requests except the tests' own (kmock's client) and kubectl's."""
        return [
            r
            for r, agent in zip(self.api_requests, self.api_request_agents, strict=True)
            if not agent.startswith(("kmock/", "kubectl"))
        ]

    # -- helpers for tests ------------------------------------------------------------------------
    def declare(
        self, key: str, kind: str, *, namespaced: bool = True, subresources: Iterable[str] = ()
    ) -> None:
        self.resources[key] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            subresources=set(subresources),
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        )

    def live(self, key: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The objects of a resource ("apps/v1/deployments") that exist now."""
        index = self._index.get(kmock.resource(key), {})
        return [
            obj.raw
            for (ns, _), obj in list(index.items())
            if not obj.deleted and (namespace is None or ns == namespace)
        ]

    def find(self, key: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._index.get(kmock.resource(key), {}).get((namespace, name))
        return None if obj is None or obj.deleted else obj.raw

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        for known in self.resources:
            if known == resource:
                return self.resources[known]
        return None

    async def write(
        self, key: str, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch an object as the cluster would (controllers, kubelet), with a watch event."""
        resource = kmock.resource(key)
        async with self._lock:
            return await self._patch(resource, namespace, name, patch, subresource=None, system=True)

    def _admit(self, admission: Admission) -> None:
        for check in self.admission_checks:
            check(self, admission)

    async def _publish(self, resource: kmock.resource, type_: str, obj: dict[str, Any]) -> None:
        self.timeline.append((type_, resource.plural, obj["metadata"]["name"]))
        self.timeline_times.append(time.monotonic())
        await self._buses[resource].put({"type": type_, "object": obj})

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse /api/v1/namespaces (it takes "namespaces" for a namespace prefix): kopf asks
        # for it when it serves only some namespaces, so serve it here.
        if raw_request.path.rstrip("/") != "/api/v1/namespaces" or raw_request.method != "GET":
            return await super().__call__(raw_request)
        watch = raw_request.query.get("watch") in ("true", "1")
        self.api_requests.append(ApiRequest("watch" if watch else "list", "", "namespaces", None, False))
        self.api_request_agents.append(raw_request.headers.get("User-Agent", ""))
        if not watch:
            names = sorted(self.namespaces | {ns for index in self._index.values() for ns, _ in index if ns})
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": str(next(self._rv))},
                    "items": [
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names
                    ],
                }
            )
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        await asyncio.Event().wait()  # namespaces never change here; held open until the client goes
        return response

    # -- the API server -----------------------------------------------------------------------------
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if (
            resource is None
            or not resource.plural
            or (resource.plural == "namespaces" and request.name is None and request.namespace is not None)
        ):
            return await kmock.RawHandler._handle(self, request)
        info = self._info(resource)
        namespaced = request.namespace is not None or bool(
            info and info.namespaced and request.name is None and _method(request) == "POST"
        )
        self.api_request_agents.append(request.headers.get("User-Agent", ""))
        current_agent.set(request.headers.get("User-Agent", ""))
        self.api_requests.append(
            ApiRequest(
                _rbac_verb(request),
                resource.group or "",
                resource.plural,
                request.subresource,
                request.namespace is not None or namespaced,
            )
        )
        if info is None:
            return await self._render_error(k8s.KubernetesResourceNotFoundError())
        method = _method(request)
        try:
            async with self._lock:
                if method == "POST" and request.name is None:
                    obj = await self._create(request, info)
                    return aiohttp.web.json_response(obj, status=201)
                if method == "PATCH" and request.name:
                    obj = await self._patch(
                        resource,
                        request.namespace,
                        request.name,
                        request.data,
                        subresource=request.subresource,
                    )
                    return aiohttp.web.json_response(obj)
                if method == "PUT" and request.name:
                    obj = await self._replace(request)
                    return aiohttp.web.json_response(obj)
                if method == "DELETE" and request.name:
                    obj = await self._delete(resource, request.namespace, request.name)
                    return aiohttp.web.json_response(obj)
                if method == "GET" and request.params.get("watch") not in ("true", "1"):
                    pass  # served below, outside the lock
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)
        # Reads are served directly: kmock's generic matching scans every past request (quadratic).
        try:
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._stream_watch(request)
            if method == "GET" and request.name and not request.subresource:
                return aiohttp.web.json_response(await self._serve_fetch(request))
            if method == "GET" and not request.name:
                return aiohttp.web.json_response(await self._serve_list(request))
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)
        return await kmock.RawHandler._handle(self, request)

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        selector = request.params.get("labelSelector", "")
        async for event in self._serve_watch(request):
            if not isinstance(event, dict):
                continue  # kmock's first yield only flushes the headers
            labels = (event.get("object") or {}).get("metadata", {}).get("labels") or {}
            if _selector_matches(selector, labels):
                await response.write(json.dumps(event).encode() + b"\n")
        return response

    def _stored(self, resource: kmock.resource, namespace: str | None, name: str) -> Any:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise _status_error(404, "NotFound", f'{resource.plural} "{name}" not found')
        return self.objects[key]

    async def _create(self, request: rendering.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        data = copy.deepcopy(request.data)
        if not isinstance(data, dict):
            raise _status_error(400, "BadRequest", "the body is not a JSON object")
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _status_error(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            meta["namespace"] = request.namespace or meta.get("namespace") or "default"
        namespace = meta.get("namespace") if info.namespaced else None
        key = (request.resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise _status_error(
                409, "AlreadyExists", f'{request.resource.plural} "{meta["name"]}" already exists'
            )
        self._admit(Admission("create", request.resource, namespace, data, None, None, False))
        self._record_owner_checks(data)
        meta.update(
            uid=str(uuid.uuid4()), resourceVersion=str(next(self._rv)), generation=1, creationTimestamp=_now()
        )
        if key in self.objects:
            self.objects[key].create(data)
        else:
            self.objects[key] = data
            self._index.setdefault(request.resource, {})[key[1:]] = self.objects[key]
        await self._publish(request.resource, "ADDED", copy.deepcopy(data))
        return data

    def _record_owner_checks(self, obj: dict[str, Any]) -> None:
        for ref in obj.get("metadata", {}).get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion"):
                continue
            group = ref.get("apiVersion", "").rpartition("/")[0]
            owner = next((r for r, info in self.resources.items() if info.kind == ref.get("kind")), None)
            if owner is not None:
                self.api_request_agents.append(current_agent.get())
                self.api_requests.append(ApiRequest("update", group, owner.plural, "finalizers", True))

    async def _patch(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None,
        system: bool = False,
    ) -> dict[str, Any]:
        stored = self._stored(resource, namespace, name)
        old = copy.deepcopy(stored.raw)
        try:
            new = copy.deepcopy(dict(dicts.patch_dict(copy.deepcopy(old), patch)))
        except (
            jsonpatch.JsonPatchTestFailed,
            jsonpatch.JsonPatchConflict,
            jsonpatch.JsonPointerException,
        ) as exc:
            raise _status_error(422, "Invalid", f"the JSON patch failed: {exc}") from None
        info = self._info(resource)
        has_status = bool(info and "status" in info.subresources)
        if subresource == "status":
            new = {**old, "status": new.get("status")}
        elif has_status and not system:
            new["status"] = old.get("status")
        if new.get("status") is None:
            new.pop("status", None)
        self._admit(Admission("patch", resource, namespace, new, old, subresource, system))
        return await self._store(resource, stored, old, new)

    async def _replace(self, request: rendering.Request) -> dict[str, Any]:
        stored = self._stored(request.resource, request.namespace, request.name)
        old = copy.deepcopy(stored.raw)
        new = copy.deepcopy(request.data)
        wanted = new.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise _status_error(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        self._admit(
            Admission("update", request.resource, request.namespace, new, old, request.subresource, False)
        )
        return await self._store(request.resource, stored, old, new)

    async def _store(
        self, resource: kmock.resource, stored: Any, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        body_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if body_changed:
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = str(next(self._rv))
        stored.history.append(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            stored.delete()
            await self._publish(resource, "DELETED", copy.deepcopy(new))
        else:
            await self._publish(resource, "MODIFIED", copy.deepcopy(new))
        return new

    async def _delete(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        stored = self._stored(resource, namespace, name)
        obj = copy.deepcopy(stored.raw)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = str(next(self._rv))
                stored.history.append(obj)
                await self._publish(resource, "MODIFIED", copy.deepcopy(obj))
            return obj
        stored.delete()
        await self._publish(resource, "DELETED", obj)
        return obj

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        if info is None:
            raise k8s.KubernetesResourceNotFoundError()
        selector = request.params.get("labelSelector", "")
        async with self._lock:
            items = [
                obj.raw
                for (ns, _), obj in self._index.get(request.resource, {}).items()
                if not obj.deleted and (request.namespace is None or ns == request.namespace)
            ]
        items = [i for i in items if _selector_matches(selector, i["metadata"].get("labels") or {})]
        group_version = "/".join(p for p in (request.resource.group, request.resource.version) if p)
        return {
            "apiVersion": group_version,
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": str(next(self._rv))},
            "items": items,
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = self._index.get(request.resource, {}).get((request.namespace, request.name))
        if obj is None or obj.deleted:
            raise k8s.KubernetesObjectNotFoundError()
        return obj.raw

    def _get_resources(self) -> list[Any]:
        return list(self.resources)  # the declared ones: no scan of every stored object

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if request.resource.group == "":
            payload["groupVersion"] = request.resource.version
        for entry in payload["resources"]:
            if entry.get("namespaced") is None:
                entry["namespaced"] = True
        return payload


def rbac_rules(requests: Iterable[ApiRequest]) -> dict[tuple[str, str], set[str]]:
    """RBAC rules that allow exactly these requests: {(apiGroup, resource[/subresource]): {verbs}}."""
    rules: dict[tuple[str, str], set[str]] = {}
    for r in requests:
        name = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        rules.setdefault((r.api_group, name), set()).add(r.verb)
    return rules


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig that points kubectl, kopf and the kubernetes client at the emulator."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def emulator_server() -> AsyncIterator[RecordingEmulator]:
    """A started RecordingEmulator on a free 127.0.0.1 port; its base URL is `str(emulator.url)`."""

    # The tests' own client opens a connection per request: a kept-alive one could be stuck behind
    # the streams of an operator that a test has just cancelled.
    def client(url: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))

    async with RecordingEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1", client_fct=client):
        yield emulator


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[RecordingEmulator]:
    async with emulator_server() as emu:
        yield emu


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
