"""The run planner: from a spec and the observed state of each task, the next actions. Pure.

Both executors share it: the operator maps tasks to Kubernetes children (render/, children.py), the
single-machine runner maps them to local processes. The planner speaks only of tasks, their
stages, commands and states, never of Kubernetes objects.

A *task* is one unit of work; a *stage* (stages.recipe_stages) groups tasks for the status:

    stage           tasks                                  kind
    prepare         prepare                                job
    serve-sources   serve-sources/<source> (one each)      server
    sample          sample/<source> (one each)             job (sharded: an Indexed Job on a cluster)
    verify-code     verify-code          (code datasets)   job, sandboxed (untrusted code: sandbox pods)
    score           score                                  job
    build           build                                  job
    sft             sft                                    train
    dpo             dpo                       (fusechat3)  train
    serve-target    serve-target                  (wrpo)   server (serves train/sft/final)
    sample-target   sample-target                 (wrpo)   job
    verify-code-target verify-code-target (wrpo, code)     job, sandboxed
    score-target    score-target                  (wrpo)   job
    build-wrpo      build-wrpo                    (wrpo)   job
    wrpo            wrpo                          (wrpo)   train
    evaluate        serve-candidates/<c> (original, sft,   server (spec.evaluation)
                    dpo or wrpo), evaluate                 job (needs every candidate's server READY)

Usage (any executor)::

    tasks = plan_tasks(spec)
    observed = {"prepare": TaskState.SUCCEEDED, "serve-sources/a": TaskState.READY, ...}  # absent: PENDING
    for action in next_actions(spec, observed, suspended=spec.suspend, retry=None):
        ...  # START / STOP / SUSPEND / RESUME / RETRY a task, or COMPLETE / FAIL the run

Rules (level-triggered: call it again after anything changes; it never returns an action twice
for a state it already caused, once the executor reports the new state):
- a task starts when the tasks it needs have Succeeded (a sampling task needs its server READY);
- a server starts once prepare has Succeeded, while its sampling task is unfinished, at most
  spec.serving.maxConcurrentSources at once (spec order); it is STOPPED (deleted) as soon as its
  sampling task Succeeded; a server whose sampling is done is never started again;
- GPU tasks of different stages never overlap unless spec.serving.allowGpuOverlap;
- a FAILED task fails the run (FAIL, and every live server or GPU task is stopped); retry=<stage> turns the
  stage's failed tasks into RETRY actions (the executor clears the task, then it starts again);
- suspended=True: SUSPEND every RUNNING/READY task, start nothing; False: RESUME SUSPENDED tasks;
- COMPLETE once every non-server task has Succeeded and no server is live.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.stages import has_code, recipe_stages
from kubefusion_trainer.layout import candidate_endpoint


class TaskKind(StrEnum):
    JOB = "job"  # a batch process that ends (Job on a cluster)
    SERVER = "server"  # an OpenAI-compatible model server (vLLM Deployment + Service on a cluster)
    TRAIN = "train"  # a (possibly multi-node) training process (PyTorchJob on a cluster)


class TaskState(StrEnum):
    PENDING = "Pending"  # not started (or cleared for a retry)
    RUNNING = "Running"  # started; a server that is not ready yet
    READY = "Ready"  # servers only: answering requests
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # failed past its retries
    SUSPENDED = "Suspended"


LIVE_STATES = frozenset({TaskState.RUNNING, TaskState.READY})


class ActionType(StrEnum):
    START = "start"  # create the task's process / children
    STOP = "stop"  # delete a task's children (a server whose work is done; GPU work of a failed run)
    SUSPEND = "suspend"  # pause a live task (scale to zero, suspend the Job)
    RESUME = "resume"  # undo SUSPEND
    RETRY = "retry"  # clear a failed task so that it starts again
    COMPLETE = "complete"  # the run has succeeded
    FAIL = "fail"  # the run has failed (task names the failed task)


@dataclass(frozen=True)
class Task:
    """One unit of work of a run."""

    name: str  # unique in the run: the stage name, or "<stage>/<source>" for per-source tasks
    stage: str  # the recipe stage it belongs to (stages.recipe_stages)
    kind: TaskKind
    needs: tuple[str, ...]  # tasks that must have Succeeded first (a sampler needs its server READY)
    uses_gpu: bool
    # `kubefusion` arguments; the executor adds --config FILE (and --shard/--metrics-port as it likes).
    # Servers have none: they serve `model` under the name `served_name`.
    command: tuple[str, ...] = ()
    model: str | None = None  # servers: the model to serve (hub id, or a path on the run's storage)
    served_name: str | None = None  # servers: the name requests use as `model`
    endpoint: str | None = None  # servers: the RunConfig.endpoints key (source name, or "target")
    record: str | None = None  # the stage completion record the task writes (RunLayout.stage_record)
    server: str | None = None  # sampling tasks: the server task they call
    # Runs untrusted code (LLM-written answers): an executor isolates it from the run's secrets, storage
    # and network (sandbox pods on a cluster, sandboxed processes locally).
    sandboxed: bool = False


@dataclass(frozen=True)
class Action:
    type: ActionType
    task: str | None = None  # None for COMPLETE
    reason: str = ""  # short CamelCase reason for events and conditions
    message: str = ""


@dataclass
class _Plan:
    tasks: list[Task] = field(default_factory=list)

    def add(self, task: Task) -> Task:
        self.tasks.append(task)
        return task


def plan_tasks(spec: FusionRunSpec) -> list[Task]:
    """Every task of the run, in execution order."""
    plan = _Plan()
    plan.add(Task("prepare", "prepare", TaskKind.JOB, (), False, ("stage", "prepare"), record="prepare"))
    sample_names = []
    for source in spec.sources:
        server = plan.add(
            Task(
                f"serve-sources/{source.name}",
                "serve-sources",
                TaskKind.SERVER,
                ("prepare",),
                source.serving.gpus > 0,
                model=source.model,
                served_name=source.model,
                endpoint=source.name,
            )
        )
        sample = plan.add(
            Task(
                f"sample/{source.name}",
                "sample",
                TaskKind.JOB,
                ("prepare", server.name),
                False,
                ("stage", "sample", "--phase", "sources", "--source", source.name),
                record=f"sample-sources-{source.name}",
                server=server.name,
            )
        )
        sample_names.append(sample.name)
    scoring_gpu = spec.scoring.reward_model.gpus > 0
    score_needs, score_options = _verify_code(plan, spec, "sources", tuple(sample_names))
    plan.add(
        Task(
            "score",
            "score",
            TaskKind.JOB,
            score_needs,
            scoring_gpu,
            ("stage", "score", "--phase", "sources", *score_options),
            record="score-sources",
        )
    )
    plan.add(
        Task(
            "build",
            "build",
            TaskKind.JOB,
            ("score",),
            False,
            ("stage", "build", "--phase", "sources"),
            record="build-sources",
        )
    )
    sft = spec.training.sft
    plan.add(
        Task(
            "sft",
            "sft",
            TaskKind.TRAIN,
            ("build",),
            sft.resources.gpus_per_node > 0,
            ("stage", "train", "--stage", "sft"),
            record="train-sft",
        )
    )
    last = "sft"
    if spec.recipe == "wrpo":
        target_gpus = spec.target.serving.gpus
        plan.add(
            Task(
                "serve-target",
                "serve-target",
                TaskKind.SERVER,
                ("sft",),
                target_gpus > 0,
                model="train/sft/final",
                served_name="target",
                endpoint="target",
            )
        )
        plan.add(
            Task(
                "sample-target",
                "sample-target",
                TaskKind.JOB,
                ("sft", "serve-target"),
                False,
                ("stage", "sample", "--phase", "target"),
                record="sample-target",
                server="serve-target",
            )
        )
        target_needs, target_options = _verify_code(plan, spec, "target", ("sample-target",))
        plan.add(
            Task(
                "score-target",
                "score-target",
                TaskKind.JOB,
                target_needs,
                scoring_gpu,
                ("stage", "score", "--phase", "target", *target_options),
                record="score-target",
            )
        )
        plan.add(
            Task(
                "build-wrpo",
                "build-wrpo",
                TaskKind.JOB,
                ("score-target",),
                False,
                ("stage", "build", "--phase", "target"),
                record="build-target",
            )
        )
        wrpo = spec.training.wrpo
        assert wrpo is not None  # the spec validator guarantees it
        plan.add(
            Task(
                "wrpo",
                "wrpo",
                TaskKind.TRAIN,
                ("build-wrpo",),
                wrpo.resources.gpus_per_node > 0,
                ("stage", "train", "--stage", "wrpo"),
                record="train-wrpo",
            )
        )
        last = "wrpo"
    elif spec.training.dpo is not None:
        dpo = spec.training.dpo
        plan.add(
            Task(
                "dpo",
                "dpo",
                TaskKind.TRAIN,
                ("sft",),
                dpo.resources.gpus_per_node > 0,
                ("stage", "train", "--stage", "dpo"),
                record="train-dpo",
            )
        )
        last = "dpo"
    if spec.evaluation is not None:
        # Every candidate answers through its own server, as the sources did (greedy requests), so no
        # model generates on the evaluate pod's CPU; the servers go once the scorecard is written.
        servers = [
            plan.add(
                Task(
                    f"serve-candidates/{candidate}",
                    "evaluate",
                    TaskKind.SERVER,
                    (last,),
                    spec.target.serving.gpus > 0,
                    model=model,
                    served_name=candidate_endpoint(candidate),
                    endpoint=candidate_endpoint(candidate),
                )
            )
            for candidate, model in evaluation_candidates(spec).items()
        ]
        plan.add(
            Task(
                "evaluate",
                "evaluate",
                TaskKind.JOB,
                (last, *(s.name for s in servers)),
                scoring_gpu,
                ("stage", "evaluate"),
                record="evaluate",
            )
        )
    known_stages = {s.name for s in recipe_stages(spec)}
    assert all(t.stage in known_stages for t in plan.tasks), "planner and stages.py disagree"
    return plan.tasks


def evaluation_candidates(spec: FusionRunSpec) -> dict[str, str]:
    """The models the evaluate stage compares: name -> model (hub id, or a path on the run's storage)."""
    second = "wrpo" if spec.recipe == "wrpo" else ("dpo" if spec.training.dpo is not None else None)
    candidates = {"original": spec.target.model, "sft": "train/sft/final"}
    if second is not None:
        candidates[second] = f"train/{second}/final"
    return candidates


def _verify_code(
    plan: _Plan, spec: FusionRunSpec, phase: str, samplers: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Add the phase's verify-code task when it has code answers; what its score task then needs and adds."""
    if not has_code(spec, phase):
        return samplers, ()
    name = "verify-code" if phase == "sources" else "verify-code-target"
    plan.add(
        Task(
            name,
            name,
            TaskKind.JOB,
            samplers,
            False,
            ("stage", "verify-code", "--phase", phase),
            record=f"verify-code-{phase}",
            sandboxed=True,
        )
    )
    return (name,), ("--sandbox-verdicts",)


def _server_wanted(task: Task, tasks: list[Task], state: Mapping[str, TaskState]) -> bool:
    """A server is wanted while some task that calls it (or needs it) is unfinished."""
    consumers = [t for t in tasks if t.server == task.name or task.name in t.needs]
    return any(state[c.name] != TaskState.SUCCEEDED for c in consumers)


def next_actions(
    spec: FusionRunSpec,
    observed: Mapping[str, TaskState | str],
    *,
    suspended: bool = False,
    retry: str | None = None,
    tasks: list[Task] | None = None,
) -> list[Action]:
    """What to do now. `observed` maps task names to states (absent: Pending); `retry` names a stage."""
    tasks = tasks if tasks is not None else plan_tasks(spec)
    by_name = {t.name: t for t in tasks}
    unknown = set(observed) - set(by_name)
    if unknown:
        raise ValueError(f"observed names unknown tasks: {', '.join(sorted(unknown))}")
    state = {t.name: TaskState(observed.get(t.name, TaskState.PENDING)) for t in tasks}
    live_servers = [t for t in tasks if t.kind == TaskKind.SERVER and state[t.name] in LIVE_STATES]

    failed = [t for t in tasks if state[t.name] == TaskState.FAILED]
    if failed:
        retried = [t for t in failed if retry is not None and t.stage == retry]
        if retried:
            return [
                Action(ActionType.RETRY, t.name, "RetryRequested", f"retrying stage {retry}") for t in retried
            ]
        first = failed[0]
        actions = [Action(ActionType.FAIL, first.name, "StageFailed", f"task {first.name} failed")]
        # Nothing keeps a GPU once the run has failed: live servers and GPU work of other stages stop.
        holding = [
            t for t in tasks if state[t.name] in LIVE_STATES and (t.kind == TaskKind.SERVER or t.uses_gpu)
        ]
        actions += [Action(ActionType.STOP, t.name, "RunFailed", "the run failed") for t in holding]
        return actions

    if suspended:
        return [
            Action(ActionType.SUSPEND, t.name, "Suspended", "spec.suspend is true")
            for t in tasks
            if state[t.name] in LIVE_STATES
        ]
    actions = [
        Action(ActionType.RESUME, t.name, "Resumed", "spec.suspend is false")
        for t in tasks
        if state[t.name] == TaskState.SUSPENDED
    ]
    if actions:
        return actions  # resume first; start new work once resumed tasks report their state

    # Servers whose sampling is done go away at once (GPU cost).
    for server in live_servers:
        if not _server_wanted(server, tasks, state):
            # It still holds its GPUs until it is observed gone, so it keeps counting as live below.
            actions.append(Action(ActionType.STOP, server.name, "SamplingDone", "its sampling has finished"))

    if all(state[t.name] == TaskState.SUCCEEDED for t in tasks if t.kind != TaskKind.SERVER):
        if not any(state[t.name] in LIVE_STATES for t in tasks):
            actions.append(Action(ActionType.COMPLETE, None, "Succeeded", "every stage has succeeded"))
        return actions

    def gpu_stages_live() -> set[str]:
        return {t.stage for t in tasks if t.uses_gpu and state[t.name] in LIVE_STATES}

    limit = spec.serving.max_concurrent_sources or len(spec.sources)
    for task in tasks:
        if state[task.name] != TaskState.PENDING:
            continue
        needs_met = all(
            state[n] == (TaskState.READY if by_name[n].kind == TaskKind.SERVER else TaskState.SUCCEEDED)
            for n in task.needs
        )
        if not needs_met:
            continue
        if task.kind == TaskKind.SERVER:
            if not _server_wanted(task, tasks, state):
                continue
            serving = [t for t in tasks if t.kind == TaskKind.SERVER and state[t.name] in LIVE_STATES]
            if task.stage == "serve-sources" and len(serving) >= limit:
                continue
        if task.uses_gpu and not spec.serving.allow_gpu_overlap and gpu_stages_live() - {task.stage}:
            continue
        actions.append(Action(ActionType.START, task.name, "Started", f"starting {task.name}"))
        state[task.name] = TaskState.RUNNING
    return actions


def stage_states(spec: FusionRunSpec, observed: Mapping[str, TaskState | str]) -> dict[str, str]:
    """Each recipe stage's state for the status (api.StageState), from its tasks' states."""
    tasks = plan_tasks(spec)
    out: dict[str, str] = {}
    for stage in recipe_stages(spec):
        stage_tasks = [t for t in tasks if t.stage == stage.name]
        work = [t for t in stage_tasks if t.kind != TaskKind.SERVER] or stage_tasks
        # A stage with work besides its servers (evaluate) is as far as its work; a live server runs it.
        states = [TaskState(observed.get(t.name, TaskState.PENDING)) for t in work]
        if work is not stage_tasks and TaskState(observed.get(work[0].name, "Pending")) == TaskState.PENDING:
            states += [
                TaskState(observed.get(t.name, "Pending")) for t in stage_tasks if t.kind == TaskKind.SERVER
            ]
        if stage.name in ("serve-sources", "serve-target"):
            # A server's work is done when its samplers are; it is then deleted, not "Succeeded".
            consumers = [t for t in tasks if t.server and t.server.startswith(stage.name)]
            if consumers and all(
                TaskState(observed.get(c.name, "Pending")) == TaskState.SUCCEEDED for c in consumers
            ):
                out[stage.name] = "Succeeded"
                continue
        if any(s == TaskState.FAILED for s in states):
            out[stage.name] = "Failed"
        elif states and all(s == TaskState.SUCCEEDED for s in states):
            out[stage.name] = "Succeeded"
        elif any(s in LIVE_STATES for s in states):
            out[stage.name] = "Running"
        elif any(s == TaskState.SUSPENDED for s in states):
            out[stage.name] = "Suspended"
        elif any(s == TaskState.SUCCEEDED for s in states):
            out[stage.name] = "Running"  # partly done (e.g. some sources sampled)
        else:
            out[stage.name] = "Pending"
    return out
