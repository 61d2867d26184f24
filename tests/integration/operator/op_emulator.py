"""A Kubernetes API emulator for the operator's tests, recording every request it serves.

kmock.KubernetesEmulator is an in-memory API server over real HTTP. This subclass behaves like
kube-apiserver where kopf, kubectl and our client rely on it; each behaviour and the test proving it
(test_op_emulator.py unless named otherwise):
- lists say their kind (JobList) but their items carry no kind/apiVersion; gets and watch events do
  (create fills them from the path; a body naming another kind is 400)
  -> test_list_items_carry_no_kind_but_gets_and_watches_do, test_requests_a_real_server_refuses;
- a group/version/resource the server does not serve (no CRD; `withdraw(key)` un-serves one,
  `declare(...)` serves one) answers 404 with the text/plain body `404 page not found`, discovery
  included -> test_unserved_paths_answer_plain_text_404;
- a served kind's missing object answers 404 with a Status (reason NotFound, `jobs.batch "x" not
  found`); a create of an existing name answers 409 AlreadyExists
  -> test_missing_object_is_a_status_404_and_duplicates_409;
- a PUT, or a PATCH carrying metadata.resourceVersion, with a stale resourceVersion answers 409
  Conflict -> test_stale_resource_versionconflicts;
- create fills uid, resourceVersion, generation, creationTimestamp (and a name from generateName) and
  answers 201; every write bumps resourceVersion (a deletion too); generation grows when anything
  outside metadata/status changes -> test_create_fills_metadata_and_patch_bumps_versions;
- PATCH takes merge and JSON patches by Content-Type (strategic merge only for built-in kinds, handled
  as a merge patch; anything else, server-side apply included, is 415) and a failed `test` op is
  422 -> test_patch_needs_a_patch_media_type; /status writes change only .status
  and main-resource writes leave .status alone when there is a status subresource
  -> test_status_subresource_and_recording;
- a create must name the path's namespace (another one in the body is 400), go to a namespaced path
  (POST to /api/v1/configmaps is 405) and to a namespace that exists (`namespaces`, or a stored
  Namespace; else 404 `namespaces "x" not found`) -> test_requests_a_real_server_refuses;
- label selectors are honoured on lists and watches: =, ==, !=, exists, !exists, `in (...)`,
  `notin (...)`; an unparsable one is 400 -> test_label_selectors, test_requests_a_real_server_refuses;
- watches: without resourceVersion (or "0") every existing object comes as ADDED, then changes; with
  one, only the changes after it (from the history); a resourceVersion older than the history
  (`compact()`, or more than history_limit events ago) gets an ERROR event with a 410 Expired Status;
  allowWatchBookmarks=true brings BOOKMARK events every bookmark_interval seconds; timeoutSeconds
  ends the stream -> test_watch_resumes_from_a_resource_version, test_watch_from_a_compacted_version_is_410gone,
  test_watchbookmarks_and_timeout;
- admission: checks in `admission_checks` see every create/patch/update before it is stored and
  refuse it with `refuse(code, reason, message)`; `emulator_server()` turns on emulator_admission.names
  (DNS names per kind, Indexed Job hostnames, PyTorchJob Services, TrainJob pod hostnames)
  -> test_op_emulator_names.py, test_op_training_failures.py;
- other projects' CRDs (TrainJob, ClusterTrainingRuntime, TrainingRuntime, PyTorchJob) are served only
  where a test installs them (op_training.trainer_cluster/install/withhold), and their writes are
  checked against the real CRD schemas from the shared folder (OpenAPI schema, CEL rules, undeclared
  fields) before other admission: emulator_admission.crd_schemas, 422 Invalid with a Status
  -> test_the_emulator_refuses_a_training_object_its_crd_schema_refuses (test_op_training_failures.py);
- DELETE honours finalizers (deletionTimestamp, then gone when they are removed);
- /api/v1 discovery says groupVersion v1; /openapi/v2 and /openapi/v3 answer empty documents (kubectl);
- a create whose ownerReferences set blockOwnerDeletion records the authorization check kube-apiserver's
  OwnerReferencesPermissionEnforcement plugin makes: `update` on the owner's `finalizers` subresource
  (so RBAC derived from the recorded requests grants it; emulator_admission/rbac.py enforces it)
  -> test_op_rbac.py, test_op_admission.py::test_rbac_refuses_what_the_chart_does_not_grant.
Not emulated: garbage collection by ownerReference, watch events for objects that stop matching a
selector, server-side apply. Schema validation of built-in kinds (emulator_admission/schema.py), Pod Security
(emulator_admission/pod_security.py) and RBAC (emulator_admission/rbac.py) are admission modules a test
turns on.

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
from emulator_labels import parse_selector
from emulator_status import PAGE_NOT_FOUND, conflict, group_version, not_found, qualified
from emulator_watch import stream_watch
from kmock._internal import dicts, k8s, rendering

# (group/version/plural, kind, namespaced, subresources)
OPERATOR_RESOURCES: list[tuple[str, str, bool, tuple[str, ...]]] = [
    ("kubefusion.dev/v1alpha1/fusionruns", "FusionRun", True, ("status",)),
    ("apps/v1/deployments", "Deployment", True, ("status", "scale")),
    ("batch/v1/jobs", "Job", True, ("status",)),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, ()),
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


def _selector(request: rendering.Request) -> Callable[[dict[str, str]], bool]:
    try:
        return parse_selector(request.params.get("labelSelector", ""))
    except ValueError as exc:
        raise _status_error(400, "BadRequest", str(exc)) from None


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


def _patch_media_type_error(request: rendering.Request) -> k8s.KubernetesError | None:
    """415 for a PATCH whose Content-Type is no patch format the server takes for this resource.

    Strategic merge patches exist only for built-in kinds (not custom resources); server-side apply is
    not emulated, so it is refused rather than applied with the wrong semantics.
    """
    group = request.resource.group or ""
    builtin = "." not in group or group.endswith(".k8s.io")
    accepted = ["application/json-patch+json", "application/merge-patch+json"]
    if builtin:
        accepted.append("application/strategic-merge-patch+json")
    media_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if media_type in accepted:
        return None
    return _status_error(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


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
        # Namespaces that exist besides stored Namespace objects: creates elsewhere are 404.
        self.namespaces: set[str] = {"default", "ns1", "ns2"}
        # resource -> (namespace, name) -> object: lists and fetches without scanning every object.
        self._index: dict[Any, dict[tuple[str | None, str], Any]] = {}
        # Every write as the watchers see it, in order: (ADDED|MODIFIED|DELETED, plural, name).
        self.timeline: list[tuple[str, str, str]] = []
        self.timeline_times: list[float] = []  # time.monotonic() of each timeline entry
        self._rv = itertools.count(1000)
        self._last_rv = 999  # the latest resourceVersion handed out (a list's resourceVersion)
        # Watch history, as etcd keeps it: (resourceVersion, resource, event), oldest first. Watches
        # resume from any resourceVersion still in it; older ones get 410 Gone (see compact()).
        self._events: list[tuple[int, Any, dict[str, Any]]] = []
        self._compacted_rv = 0  # events up to this resourceVersion are gone from the history
        self.history_limit = 20000  # events kept before the oldest half is compacted away
        self.bookmark_interval = 1.0  # seconds between BOOKMARK events on watches that allow them
        self._changed = asyncio.Event()  # set (and replaced) on every event, to wake watchers
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
        """Serve a resource ("group/version/plural"), as installing its CRD would."""
        self.resources[key] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            subresources=set(subresources),
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        )

    def withdraw(self, key: str) -> None:
        """Stop serving a resource, as deleting its CRD would: its paths and discovery answer 404
        `404 page not found` (text/plain) and its objects are gone."""
        resource = kmock.resource(key)
        for known in list(self.resources):
            if known == resource:
                del self.resources[known]
        for stored in self._index.pop(resource, {}).values():
            if not stored.deleted:
                stored.delete()

    @staticmethod
    def selector(request: rendering.Request) -> Callable[[dict[str, str]], bool]:
        return _selector(request)

    def compact(self) -> int:
        """Drop the watch history (as etcd compaction does); the resourceVersion watches now need."""
        self._events.clear()
        self._compacted_rv = self._last_rv
        return self._compacted_rv

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def namespace_exists(self, name: str) -> bool:
        """A namespace of `namespaces` (the test's) or a stored Namespace object."""
        return name in self.namespaces or self.find("v1/namespaces", None, name) is not None

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
        self._events.append(
            (int(obj["metadata"]["resourceVersion"]), resource, {"type": type_, "object": obj})
        )
        if len(self._events) > self.history_limit:
            dropped = self._events[: self.history_limit // 2]
            del self._events[: self.history_limit // 2]
            self._compacted_rv = dropped[-1][0]
        self._changed.set()
        self._changed = asyncio.Event()

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, k8s.KubernetesResourceNotFoundError | k8s.KubernetesEndpointNotFoundError):
            return aiohttp.web.Response(status=404, text=PAGE_NOT_FOUND, content_type="text/plain")
        return await super()._render_error(exc)

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
                    "metadata": {"resourceVersion": str(self._last_rv)},
                    "items": [{"metadata": {"name": n}} for n in names],
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
        if info is None:  # not served (no CRD): the plain-text 404 of an unknown path
            return await self._render_error(k8s.KubernetesResourceNotFoundError())
        method = _method(request)
        if method == "POST" and request.name is None and info.namespaced and request.namespace is None:
            return await self._render_error(
                _status_error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            )
        if method == "PATCH" and (refusal := _patch_media_type_error(request)):
            return await self._render_error(refusal)
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
                return await stream_watch(self, request)
            if method == "GET" and request.name and not request.subresource:
                return aiohttp.web.json_response(await self._serve_fetch(request))
            if method == "GET" and not request.name:
                return aiohttp.web.json_response(await self._serve_list(request))
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)
        return await kmock.RawHandler._handle(self, request)

    def _stored(self, resource: kmock.resource, namespace: str | None, name: str) -> Any:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise not_found(resource, name)
        return self.objects[key]

    async def _create(self, request: rendering.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        data = copy.deepcopy(request.data)
        if not isinstance(data, dict):
            raise _status_error(400, "BadRequest", "the body is not a JSON object")
        api_version = group_version(request.resource)
        if data.get("kind", info.kind) != info.kind or data.get("apiVersion", api_version) != api_version:
            raise _status_error(
                400,
                "BadRequest",
                f"the API version in the data ({data.get('apiVersion')}) and kind ({data.get('kind')}) "
                f"do not match {api_version} {info.kind}",
            )
        data["apiVersion"], data["kind"] = api_version, info.kind
        meta = data.setdefault("metadata", {})
        if info.namespaced and meta.get("namespace") and meta["namespace"] != request.namespace:
            raise _status_error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _status_error(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            meta["namespace"] = request.namespace
            if not self.namespace_exists(request.namespace):
                raise not_found(kmock.resource("v1/namespaces"), request.namespace)
        namespace = meta.get("namespace") if info.namespaced else None
        key = (request.resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise k8s.KubernetesError(
                status=409,
                reason="AlreadyExists",
                message=f'{qualified(request.resource)} "{meta["name"]}" already exists',
                details={
                    "name": meta["name"],
                    "group": request.resource.group or "",
                    "kind": request.resource.plural,
                },
            )
        self._admit(Admission("create", request.resource, namespace, data, None, None, False))
        self._record_owner_checks(data)
        meta.update(
            uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), generation=1, creationTimestamp=_now()
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
        wanted = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise conflict(resource, name)
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
            raise conflict(request.resource, request.name)
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
        meta["resourceVersion"] = self._next_rv()
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
                obj["metadata"]["resourceVersion"] = self._next_rv()
                stored.history.append(obj)
                await self._publish(resource, "MODIFIED", copy.deepcopy(obj))
            return obj
        stored.delete()
        obj["metadata"]["resourceVersion"] = self._next_rv()  # a deletion is a change of its own
        await self._publish(resource, "DELETED", obj)
        return obj

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        if info is None:
            raise k8s.KubernetesResourceNotFoundError()
        matches = _selector(request)
        async with self._lock:
            items = [
                obj.raw
                for (ns, _), obj in self._index.get(request.resource, {}).items()
                if not obj.deleted and (request.namespace is None or ns == request.namespace)
            ]
            version = str(self._last_rv)
        # Like kube-apiserver: the list says its kind; its items do not carry kind/apiVersion.
        return {
            "apiVersion": group_version(request.resource),
            "kind": f"{info.kind or 'Object'}List",
            "metadata": {"resourceVersion": version},
            "items": [
                {k: v for k, v in i.items() if k not in ("kind", "apiVersion")}
                for i in items
                if matches(i["metadata"].get("labels") or {})
            ],
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = self._index.get(request.resource, {}).get((request.namespace, request.name))
        if obj is None or obj.deleted:
            raise not_found(request.resource, request.name)
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
async def emulator_server(*, admission: bool = True) -> AsyncIterator[RecordingEmulator]:
    """A started RecordingEmulator on a free 127.0.0.1 port; its base URL is `str(emulator.url)`.

    admission: turn on the checks every test relies on (emulator_admission.names).
    """

    # The tests' own client opens a connection per request: a kept-alive one could be stuck behind
    # the streams of an operator that a test has just cancelled.
    def client(url: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))

    from emulator_admission import names  # imports this module: not at the top

    async with RecordingEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1", client_fct=client):
        if admission:
            emulator.admission_checks.append(names.check)
        yield emulator


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[RecordingEmulator]:
    async with emulator_server() as emu:
        yield emu


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
