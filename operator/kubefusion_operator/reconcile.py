"""One reconcile of a FusionRun: observe its children, ask the planner, act, write the status.

Level-triggered and idempotent: it may run any number of times, from any handler, after a restart.
Side effects go through KubeApi (children, status) and an `emit` callback (Kubernetes Events).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from kubefusion_operator.api import RETRY_ANNOTATION, FusionRunSpec, as_dict
from kubefusion_operator.blockers import CONDITION as BLOCKED
from kubefusion_operator.blockers import (
    Blocker,
    find_blockers,
    spare_waiting_servers,
    with_blocked_condition,
)
from kubefusion_operator.discovery import OPTIONAL_KINDS, BackendChoice, Discovery
from kubefusion_operator.kube import CHILD_KINDS, ApiError, KubeApi
from kubefusion_operator.merge_patch import merge_patch
from kubefusion_operator.metrics import OperatorMetrics
from kubefusion_operator.observe import CORE_STATES, ChildFailure, observe
from kubefusion_operator.planner import (
    Action,
    ActionType,
    Task,
    TaskKind,
    TaskState,
    next_actions,
    plan_tasks,
)
from kubefusion_operator.refusals import ChildRefused, is_refusal
from kubefusion_operator.render.configmap import build_config_map
from kubefusion_operator.render.names import DEFAULT_TRAINING_RUNTIME, RUN_LABEL, RenderContext, label_value
from kubefusion_operator.render.serving import STARTUP_BUDGET_SECONDS, build_deployment
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.scrape import UNITS, scrape_progress
from kubefusion_operator.status import (
    Observation,
    build_status,
    invalid_spec_status,
    previous_status,
    reconcile_failed_status,
)
from kubefusion_operator.training_backends import BACKENDS, TRAINING_STATES, training_progress
from kubefusion_operator.transitions import Emit, record_transitions
from kubefusion_operator.validation import InvalidFusionRun, validate_document

OBSERVED_KINDS = ("Deployment", "Job")  # besides the served training kinds: the objects with a state
OPTIONAL = {k.kind for k in OPTIONAL_KINDS}
CHILD_STATES = {**CORE_STATES, **TRAINING_STATES}


@dataclass
class ReconcileConfig:
    image: str
    scrape: bool = True  # read progress from stage pods
    training_runtime: str = DEFAULT_TRAINING_RUNTIME  # TrainJobs' ClusterTrainingRuntime by default


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)


def _kueue_owns(ctx: RenderContext, task: Task) -> bool:
    """Kueue admits (and unsuspends) the run's batch workloads; servers are scaled, not suspended."""
    return bool(ctx.spec.queue_name) and task.kind != TaskKind.SERVER


def _unit(task: Task) -> str:
    return UNITS["train" if task.kind == TaskKind.TRAIN else task.stage.split("-")[0]]


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        config: ReconcileConfig,
        metrics: OperatorMetrics,
        discovery: Discovery | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.metrics = metrics
        self.discovery = discovery or Discovery(api.get_path)
        # namespace/name -> resourceVersion our last status patch produced (its watch event is an echo).
        self.written_versions: dict[str, str | None] = {}

    async def reconcile(self, body: dict[str, Any], emit: Emit, *, scrape: bool = False) -> dict[str, Any]:
        """Reconcile one run; the status it now has (camelCase)."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        key = f"{namespace}/{name}"
        previous = previous_status(body.get("status"))
        generation = int(meta.get("generation") or 1)
        try:
            run = validate_document(
                {k: v for k, v in body.items() if k != "status"} | {"status": None},
                f"FusionRun {key}",
                cluster=True,
            )
        except InvalidFusionRun as exc:
            message = "; ".join(str(e) for e in exc.errors)[:4000]
            new_status = await self._write_status(
                body,
                previous,
                None,
                Observation(
                    generation, "Failed", {}, reason="InvalidSpec", message=f"invalid spec: {message}"
                ),
                emit,
            )
            self.metrics.observe_run(key, "Failed", {})
            return as_dict(new_status)
        spec = run.spec
        tasks = plan_tasks(spec)
        started = any(  # once a training stage has started, the run keeps its backend
            previous.tasks.get(t.name, "Pending") != "Pending" for t in tasks if t.kind == TaskKind.TRAIN
        )
        choice = await self.discovery.backend_for(
            spec.training.backend, previous.training_backend if started else None
        )
        ctx = RenderContext(
            name,
            namespace,
            meta["uid"],
            spec,
            image=self.config.image,
            training_backend=choice.backend or previous.training_backend or "pytorchjob",
            training_runtime=self.config.training_runtime,
        )
        children = await self._list_children(namespace, name, await self.discovery.current())
        states, refs, failures = observe(
            tasks,
            children,
            previous.tasks,
            queued_by_kueue=bool(spec.queue_name),
            child_states=CHILD_STATES,
        )
        pods, blockers = await self._blockers(namespace, name, tasks, states, refs, children)
        failures = [f for f in failures if states[f.task] == TaskState.FAILED]
        retry = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
        actions = next_actions(spec, states, suspended=spec.suspend, retry=retry, tasks=tasks)
        phase, failure, waiting = await self._act(
            ctx, tasks, states, refs, actions, failures, dict(previous.tasks), emit, choice
        )
        if retry and not any(a.type == ActionType.RETRY for a in actions):
            # Consumed (or nothing to retry): clear it so that a later failure is not retried silently.
            await self.api.patch(
                "FusionRun", namespace, name, {"metadata": {"annotations": {RETRY_ANNOTATION: None}}}
            )
        progress = {}
        if (
            scrape
            and self.config.scrape
            and any(s in (TaskState.RUNNING, TaskState.READY) for s in states.values())
        ):
            pods = pods if pods is not None else await self.api.list("Pod", namespace, {RUN_LABEL: name})
            progress = await scrape_progress(
                pods,
                {label_value(t.name): t.name for t in tasks},
                self.api.scrape,
                lambda t: _unit(next(x for x in tasks if x.name == t)),
            )
        progress = {**training_progress(children), **progress}  # scraped steps win over percentages
        obs = Observation(generation, phase, states, refs, failure, progress)
        obs.training_backend = choice.backend or previous.training_backend
        if waiting and phase == "Progressing":
            obs.reason, obs.message = choice.reason, choice.message
            if previous.conditions and not any(c.reason == choice.reason for c in previous.conditions):
                emit("Warning", choice.reason, choice.message)
        new = await self._write_status(body, previous, spec, obs, emit, blockers)
        counts = new.counts
        self.metrics.observe_run(
            key,
            phase,
            {
                "prompts": (counts.prompts or 0) if counts else 0,
                "samples": (counts.samples or 0) if counts else 0,
                "scored": (counts.scored or 0) if counts else 0,
                "pairs": (counts.pairs or 0) if counts else 0,
            },
        )
        return as_dict(new)

    async def _act(
        self,
        ctx: RenderContext,
        tasks: list[Task],
        states: dict[str, TaskState],
        refs: dict[str, list[str]],
        actions: list[Action],
        failures: list[ChildFailure],
        persisted: dict[str, str],
        emit: Emit,
        choice: BackendChoice,
    ) -> tuple[Any, ChildFailure | None, bool]:
        by_name = {t.name: t for t in tasks}
        phase = "Suspended" if ctx.spec.suspend else "Progressing"
        failure: ChildFailure | None = None
        config_ready = False
        waiting = False  # a training task is due but no training backend is installed
        for action in actions:
            task = by_name.get(action.task or "")
            if action.type == ActionType.START and task is not None:
                if task.kind == TaskKind.TRAIN and choice.backend is None:
                    waiting = True  # it stays Pending; the run says which CRD it waits for
                    continue
                if not config_ready:
                    await self._create(build_config_map(ctx))
                    config_ready = True
                for obj in build_task_children(ctx, task, suspended=ctx.spec.suspend):
                    if await self._create(obj):
                        refs.setdefault(task.name, []).append(f"{obj['kind']}/{obj['metadata']['name']}")
                states[task.name] = TaskState.RUNNING
            elif action.type == ActionType.STOP and task is not None:
                await self._delete_task(ctx, task, refs)
                states[task.name] = TaskState.PENDING
                stopped = "ServerStopped" if task.kind == TaskKind.SERVER else "StageStopped"
                emit("Normal", stopped, f"{task.name}: {action.message}")
            elif action.type == ActionType.SUSPEND and task is not None and _kueue_owns(ctx, task):
                # Kueue unsuspends a workload it admitted, so a suspended Job would just restart: stop it
                # instead; it is created again on resume and carries on from its completion records.
                await self._delete_task(ctx, task, refs)
                states[task.name] = TaskState.PENDING
                emit("Normal", "StageStopped", f"{task.name}: stopped for spec.suspend (queued by Kueue)")
            elif action.type in (ActionType.SUSPEND, ActionType.RESUME) and task is not None:
                await self._set_suspended(ctx, task, action.type == ActionType.SUSPEND)
                states[task.name] = (
                    TaskState.SUSPENDED if action.type == ActionType.SUSPEND else TaskState.RUNNING
                )
            elif action.type == ActionType.RETRY and task is not None:
                await self._delete_task(ctx, task, refs)
                states[task.name] = TaskState.PENDING
                persisted.pop(task.name, None)
                emit("Normal", "StageRetried", f"retrying {task.name} ({RETRY_ANNOTATION})")
            elif action.type == ActionType.FAIL:
                phase = "Failed"
                failure = next((f for f in failures if f.task == action.task), None)
            elif action.type == ActionType.COMPLETE:
                phase = "Succeeded"
        work = [t for t in tasks if t.kind != TaskKind.SERVER]
        if phase != "Failed" and all(states[t.name] == TaskState.SUCCEEDED for t in work):
            phase = "Succeeded"  # a finished run stays finished, suspended or not
        return phase, failure, waiting

    async def _list_children(
        self, namespace: str, name: str, served: frozenset[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """The run's children with a state, by kind (list items carry no kind on a real API server);
        optional kinds only where served."""
        kinds = (*OBSERVED_KINDS, *(k.kind for k in OPTIONAL_KINDS if k.kind in served))
        return {kind: await self.api.list(kind, namespace, {RUN_LABEL: name}) for kind in kinds}

    async def _create(self, obj: dict[str, Any]) -> bool:
        try:
            created = await self.api.create(obj)
        except ApiError as exc:
            if (
                is_refusal(exc) or exc.status == 404
            ):  # 404: the kind is not served (CRD missing) or no namespace
                raise ChildRefused("create", f"{obj['kind']}/{obj['metadata']['name']}", exc) from exc
            raise
        if created:
            self.metrics.children_created.labels(obj["kind"]).inc()
        return created

    async def _delete_task(self, ctx: RenderContext, task: Task, refs: dict[str, list[str]]) -> None:
        for obj in reversed(build_task_children(ctx, task)):  # names are deterministic: no lookup needed
            await self.api.delete(obj["kind"], ctx.namespace, obj["metadata"]["name"])
        refs[task.name] = []

    async def _set_suspended(self, ctx: RenderContext, task: Task, suspended: bool) -> None:
        if task.kind == TaskKind.SERVER:
            deploy = build_deployment(ctx, task, suspended=suspended)
            await self._patch_child(
                "Deployment",
                ctx.namespace,
                deploy["metadata"]["name"],
                {"spec": {"replicas": deploy["spec"]["replicas"]}},
            )
        elif task.kind == TaskKind.TRAIN:
            backend = BACKENDS[ctx.training_backend]
            (job,) = build_task_children(ctx, task)
            await self._patch_child(
                backend.api.kind, ctx.namespace, job["metadata"]["name"], backend.suspend_patch(suspended)
            )
        else:
            for obj in build_task_children(ctx, task):
                if obj["kind"] != "Job":
                    continue  # e.g. a sandbox task's NetworkPolicy: nothing to suspend
                await self._patch_child(
                    "Job", ctx.namespace, obj["metadata"]["name"], {"spec": {"suspend": suspended}}
                )

    async def _blockers(
        self,
        namespace: str,
        name: str,
        tasks: list[Task],
        states: dict[str, TaskState],
        refs: dict[str, list[str]],
        children: dict[str, list[dict[str, Any]]],
    ) -> tuple[list[dict[str, Any]] | None, list[Blocker]]:
        """Pods that cannot be created or scheduled (blockers.py); the run's pods when they were listed."""
        waiting = any(s == TaskState.RUNNING for s in states.values())
        failed_servers = any(t.kind == TaskKind.SERVER and states[t.name] == TaskState.FAILED for t in tasks)
        if not (waiting or failed_servers):
            return None, []
        pods = await self.api.list("Pod", namespace, {RUN_LABEL: name})
        spare_waiting_servers(tasks, states, pods, STARTUP_BUDGET_SECONDS, _now())
        events = await self.api.list("Event", namespace, {}, fields={"reason": "FailedCreate"})
        kinds = {ref: task for task, task_refs in refs.items() for ref in task_refs}
        return pods, find_blockers(tasks, states, children, pods, events, kinds)

    async def _patch_child(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            await self.api.patch(kind, namespace, name, patch)
        except ApiError as exc:
            if is_refusal(exc):
                raise ChildRefused("patch", f"{kind}/{name}", exc) from exc
            raise

    async def report_failure(self, body: dict[str, Any], reason: str, message: str) -> bool:
        """Write a ReconcileFailed condition on the run; whether the status changed."""
        meta = body["metadata"]
        previous = previous_status(body.get("status"))
        generation = int(meta.get("generation") or 1)
        new = reconcile_failed_status(previous, reason, message, generation, _now())
        return await self._patch_status(meta, as_dict(previous), as_dict(new))

    async def _patch_status(self, meta: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> bool:
        if old == new:
            return False
        written = await self.api.patch(
            "FusionRun",
            meta["namespace"],
            meta["name"],
            {"status": merge_patch(old, new)},
            subresource="status",
        )
        if written:
            self.written_versions[f"{meta['namespace']}/{meta['name']}"] = written["metadata"].get(
                "resourceVersion"
            )
        return True

    async def _write_status(
        self,
        body: dict[str, Any],
        previous: Any,
        spec: FusionRunSpec | None,
        obs: Observation,
        emit: Emit,
        blockers: list[Blocker] | None = None,
    ) -> Any:
        meta = body["metadata"]
        now = _now()
        if spec is None:
            new = invalid_spec_status(previous, obs, now)
        else:
            root = RenderContext(meta["name"], meta["namespace"], meta.get("uid", ""), spec).storage_root
            new = build_status(spec, meta["name"], root, previous, obs, now)
            new = with_blocked_condition(new, previous, blockers or [], obs.generation, now)
            old_blocked = next((c for c in previous.conditions if c.type == BLOCKED), None)
            new_blocked = next(c for c in new.conditions if c.type == BLOCKED)
            if new_blocked.status == "True" and (
                old_blocked is None
                or (old_blocked.status, old_blocked.message) != ("True", new_blocked.message)
            ):
                emit("Warning", new_blocked.reason, new_blocked.message[:1000])
        record_transitions(previous, new, emit, self.metrics)
        await self._patch_status(meta, as_dict(previous), as_dict(new))
        return new

    async def cleanup(self, namespace: str, name: str) -> int:
        """Delete every child of a run by label (there is no garbage collector to rely on everywhere)."""
        deleted = 0
        served = await self.discovery.refresh(force=True)
        for kind in CHILD_KINDS:
            if kind in OPTIONAL and kind not in served:
                continue  # not installed: nothing of that kind to delete, and listing it would 404
            for obj in await self.api.list(kind, namespace, {RUN_LABEL: name}):
                deleted += await self.api.delete(kind, namespace, obj["metadata"]["name"])
        return deleted
