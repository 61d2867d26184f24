"""Thin kopf handlers: every one of them funnels into Reconciler.reconcile for the run concerned.

build_registry(config) returns a fresh kopf registry (so a test or a benchmark can run an operator with
its own timings). kopf is configured in one @kopf.on.startup handler to keep its bookkeeping in
annotations (the status schema is typed and belongs to us), never to add finalizers, and to post only
our own Kubernetes Events. There are only event handlers (no on.create/update/delete): the operator
is level-triggered and never reads diffs, so kopf stores no diff base (no
last-handled-configuration annotation holding the spec) and no per-handler progress.

Login goes through the official client's configuration loader (kube.load_configuration): kopf and
our own client get the same server, CA, client certificate and token. kopf logs in again on a 401,
which re-reads a rotated service-account token or re-runs an exec plugin.

A reconcile that raises is retried by the operator itself with capped exponential backoff
(retry_backoff doubling up to retry_backoff_max) and reported on the FusionRun: a ReconcileFailed
condition (reason, message) and a Warning Event; the next successful reconcile drops the condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from kubefusion_operator.api import GROUP, PLURAL, VERSION
from kubefusion_operator.discovery import Discovery
from kubefusion_operator.kube import KINDS, KubeApi, connection_info, load_configuration
from kubefusion_operator.metrics import OperatorMetrics
from kubefusion_operator.reconcile import ReconcileConfig, Reconciler
from kubefusion_operator.refusals import failure_report
from kubefusion_operator.render.names import DEFAULT_IMAGE, DEFAULT_TRAINING_RUNTIME, RUN_LABEL


@dataclass
class OperatorConfig:
    """Operator tuning (`kubefusion operator` flags); applied in the startup handler."""

    image: str = DEFAULT_IMAGE  # the kubefusion image for stage Jobs and trainers
    progress_interval: float = 15.0  # seconds between progress scrapes of a running run
    watch_timeout: float = 300.0  # server-side watch timeout; kopf re-lists after it
    reconnect_backoff: float = 1.0  # seconds before a broken watch is re-opened
    batch_window: float = 0.1  # kopf's per-object event batching window
    exit_timeout: float = 2.0  # seconds kopf lets running handlers finish when it stops
    scrape: bool = True  # read stage progress from stage pods' metrics endpoints
    retry_backoff: float = 2.0  # seconds before the first retry of a failed reconcile; doubles each time
    retry_backoff_max: float = 120.0  # cap of the retry delay
    training_runtime: str = DEFAULT_TRAINING_RUNTIME  # the ClusterTrainingRuntime TrainJobs reference
    discovery_interval: float = 30.0  # least seconds between discovery probes while a run waits for a CRD


CHILD_WATCHES = ("Deployment", "Job", "PyTorchJob", "TrainJob")  # children whose events trigger a reconcile


def _finished(status: Any) -> bool:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") in ("Succeeded", "Failed") and cond.get("status") == "True":
            return True
    return False


def _emitter(body: dict[str, Any]) -> Any:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    return emit


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        # Unused while there are no on.create/update/delete handlers (kopf then stores no diff base);
        # kept under our prefix so that such a handler could never write kopf.zalando.org annotations.
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"  # never added: no mandatory delete handler
        settings.posting.level = (
            logging.WARNING
        )  # kopf's own chatter stays in the log; our Events are explicit
        settings.watching.server_timeout = int(config.watch_timeout)
        settings.watching.client_timeout = int(config.watch_timeout) + 10
        settings.watching.reconnect_backoff = config.reconnect_backoff
        settings.batching.batch_window = config.batch_window
        settings.batching.idle_timeout = max(config.batch_window * 10, 1.0)
        settings.batching.exit_timeout = config.exit_timeout
        settings.peering.standalone = True
        # Watch only the run's children, selected by the API server: kopf's `labels=` handler filter
        # is applied client-side, after every Deployment and Job of the cluster was streamed to us.
        for child_kind in CHILD_WATCHES:
            kind = KINDS[child_kind]
            settings.watching.label_selectors[kind.group, kind.plural] = RUN_LABEL
        memo.setdefault("metrics", OperatorMetrics())
        memo.locks = {}
        memo.finished = {}  # namespace/name -> finished? for the runs this operator has seen
        memo.written = {}  # namespace/name -> resourceVersion of our last status write
        memo.retries = {}  # namespace/name -> (failed attempts in a row, the scheduled retry task)

    @kopf.on.login(registry=registry)
    async def login(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        try:  # in a thread: an exec plugin may take a while
            configuration = await asyncio.to_thread(load_configuration)
        except Exception as exc:  # ConfigException, a failing exec plugin, unreadable files
            raise kopf.LoginError(f"cannot load Kubernetes credentials: {exc}") from exc
        if "reconciler" in memo:  # a re-login (kopf saw a 401): same client, new credentials
            memo.reconciler.api.use_configuration(configuration)
        else:
            api = KubeApi.from_configuration(configuration, reload=load_configuration)
            memo.reconciler = Reconciler(
                api,
                ReconcileConfig(config.image, scrape=config.scrape, training_runtime=config.training_runtime),
                memo.metrics,
                Discovery(api.get_path, min_interval=config.discovery_interval),
            )
        return connection_info(configuration, trust_env=settings.networking.trust_env)

    @kopf.on.cleanup(registry=registry)
    async def close(memo: kopf.Memo, **_: Any) -> None:
        if "reconciler" in memo:
            await memo.reconciler.api.close()

    async def reconcile(
        memo: kopf.Memo, namespace: str, name: str, logger: Any, *, scrape: bool = False
    ) -> None:
        key = f"{namespace}/{name}"
        lock = memo.locks.setdefault(key, asyncio.Lock())
        async with lock:  # run events, child events and the ticker may race for one run
            memo.finished.setdefault(key, False)  # the ticker and retries know every run from now on
            body: dict[str, Any] | None = None
            try:
                # Read the run inside the lock: the status another reconcile just wrote is our base.
                body = await memo.reconciler.api.get("FusionRun", namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    memo.finished.pop(key, None)
                    return
                memo.metrics.reconciles.inc()
                status = await memo.reconciler.reconcile(body, _emitter(body), scrape=scrape)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await failed(memo, key, body, exc, logger)
                return
            _attempts, pending = memo.retries.pop(key, (0, None))
            if pending is not None and pending is not asyncio.current_task():
                pending.cancel()
            memo.finished[key] = _finished(status)
            if memo.reconciler.written_versions.get(key):
                memo.written[key] = memo.reconciler.written_versions.pop(key)

    async def failed(
        memo: kopf.Memo, key: str, body: dict[str, Any] | None, exc: Exception, logger: Any
    ) -> None:
        """Report a failed reconcile on the run and schedule its retry (capped exponential backoff)."""
        memo.metrics.errors.labels(type(exc).__name__).inc()
        attempts, pending = memo.retries.get(key, (0, None))
        attempts += 1
        delay = min(config.retry_backoff * 2 ** (attempts - 1), config.retry_backoff_max)
        reason, message = failure_report(exc)
        logger.error(f"reconcile of {key} failed (attempt {attempts}, retry in {delay:g}s): {message}")
        if pending is None or pending.done() or pending is asyncio.current_task():
            pending = asyncio.get_running_loop().create_task(retry_later(memo, key, delay, logger))
        memo.retries[key] = (attempts, pending)
        if body is None:
            return  # the run could not even be read: nothing to report on yet
        with contextlib.suppress(Exception):  # the API may be what is failing: the retry reports again
            await memo.reconciler.report_failure(
                body, reason, f"{message} (attempt {attempts}, retry in {delay:g}s)"
            )
            _emitter(body)("Warning", reason, message[:1000])
        if memo.reconciler.written_versions.get(key):
            memo.written[key] = memo.reconciler.written_versions.pop(key)

    async def retry_later(memo: kopf.Memo, key: str, delay: float, logger: Any) -> None:
        await asyncio.sleep(delay)
        namespace, name = key.split("/", 1)
        await reconcile(memo, namespace, name, logger, scrape=True)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def run_event(
        event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
    ) -> None:
        meta = body["metadata"]
        if event["type"] == "DELETED":
            await cleanup(meta["namespace"], meta["name"], memo, logger)
            return
        if meta.get("deletionTimestamp"):
            return
        if meta.get("resourceVersion") and memo.written.get(
            f"{meta['namespace']}/{meta['name']}"
        ) == meta.get("resourceVersion"):
            return  # the echo of our own status write: nothing new to act on
        if "ticker" not in memo:
            # Started from a handler, not at startup: it needs the context kopf.event() posts from.
            memo.ticker = asyncio.create_task(tick(memo, logger))
        await reconcile(memo, meta["namespace"], meta["name"], logger)

    async def cleanup(namespace: str, name: str, memo: kopf.Memo, logger: Any) -> None:
        key = f"{namespace}/{name}"
        memo.metrics.forget_run(key)
        memo.locks.pop(key, None)
        memo.finished.pop(key, None)
        memo.written.pop(key, None)
        _attempts, pending = memo.retries.pop(key, (0, None))
        if pending is not None:
            pending.cancel()
        deleted = await memo.reconciler.cleanup(namespace, name)
        if deleted:
            logger.info(f"deleted {deleted} children of FusionRun {key}")

    async def tick(memo: kopf.Memo, logger: Any) -> None:
        # Not a kopf.timer: kopf puts a finalizer on objects with timers, which would block deleting
        # a FusionRun while the operator is down.
        while True:
            await asyncio.sleep(config.progress_interval)
            for key, finished in list(memo.finished.items()):
                if not finished and key not in memo.retries:  # a failing run waits for its backoff
                    namespace, name = key.split("/", 1)
                    with contextlib.suppress(Exception):  # counted and logged; the next tick retries
                        await reconcile(memo, namespace, name, logger, scrape=True)

    @kopf.on.cleanup(registry=registry, id="stop-ticker")
    async def stop_ticker(memo: kopf.Memo, **_: Any) -> None:
        if "ticker" in memo:
            memo.ticker.cancel()
        for _attempts, pending in memo.retries.values():
            pending.cancel()

    # kopf watches only kinds the cluster serves (it notices CRDs installed later where it may list
    # CRDs); the ticker's reconciles cover the rest.
    for kind_name in CHILD_WATCHES:
        kind = KINDS[kind_name]

        @kopf.on.event(
            kind.group,
            kind.version,
            kind.plural,
            labels={RUN_LABEL: kopf.PRESENT},
            registry=registry,
            id=f"child-{kind.plural}",
        )
        async def child_event(
            event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
        ) -> None:
            if event["type"] in ("ADDED", None):
                return  # we created it (or kopf is listing at startup, when every run reconciles anyway)
            meta = body["metadata"]
            await reconcile(memo, meta["namespace"], meta["labels"][RUN_LABEL], logger)

    return registry
