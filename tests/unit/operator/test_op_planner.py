"""Table-driven tests of the pure planner: every transition, both recipes, suspend, failure, restart."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.planner import Action, ActionType, TaskState, next_actions, plan_tasks, stage_states

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
S, R, RD, F, SU = (
    TaskState.SUCCEEDED,
    TaskState.RUNNING,
    TaskState.READY,
    TaskState.FAILED,
    TaskState.SUSPENDED,
)


def load_spec(example: str, **overrides) -> FusionRunSpec:
    doc = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    spec = copy.deepcopy(doc["spec"])
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return FusionRunSpec.model_validate(spec)


FUSE = load_spec("quickstart")  # fusechat3, sources adder + reverser (CPU), evaluation on
WRPO = load_spec("wrpo-llama3-8b")  # wrpo, 4 GPU sources, maxConcurrentSources 2


def acts(actions: list[Action]) -> list[tuple[str, str | None]]:
    return [(a.type.value, a.task) for a in actions]


def test_tasks_per_recipe() -> None:
    assert [t.name for t in plan_tasks(FUSE)] == [
        "prepare",
        "serve-sources/adder",
        "sample/adder",
        "serve-sources/reverser",
        "sample/reverser",
        "score",
        "build",
        "sft",
        "dpo",
        "serve-candidates/original",
        "serve-candidates/sft",
        "serve-candidates/dpo",
        "evaluate",
    ]
    candidates = {t.name: t for t in plan_tasks(FUSE) if t.name.startswith("serve-candidates/")}
    assert {n: (t.model, t.endpoint, t.stage) for n, t in candidates.items()} == {
        "serve-candidates/original": ("demo/models/target", "eval-original", "evaluate"),
        "serve-candidates/sft": ("train/sft/final", "eval-sft", "evaluate"),
        "serve-candidates/dpo": ("train/dpo/final", "eval-dpo", "evaluate"),
    }
    wrpo = [t.name for t in plan_tasks(WRPO)]
    assert wrpo[-6:] == ["sft", "serve-target", "sample-target", "score-target", "build-wrpo", "wrpo"]
    assert "dpo" not in wrpo and "evaluate" not in wrpo
    sample = next(t for t in plan_tasks(FUSE) if t.name == "sample/adder")
    assert sample.command == ("stage", "sample", "--phase", "sources", "--source", "adder")
    assert sample.record == "sample-sources-adder"


DONE_SAMPLING = {"prepare": S, "sample/adder": S, "sample/reverser": S}
CANDIDATES_READY = {f"serve-candidates/{c}": RD for c in ("original", "sft", "dpo")}

FUSE_CASES = [
    ("fresh run starts prepare", {}, [("start", "prepare")]),
    ("prepare running: wait", {"prepare": R}, []),
    (
        "prepared: serve every source",
        {"prepare": S},
        [("start", "serve-sources/adder"), ("start", "serve-sources/reverser")],
    ),
    (
        "server starting: sampling waits",
        {"prepare": S, "serve-sources/adder": R, "serve-sources/reverser": R},
        [],
    ),
    (
        "a ready server gets its sampler",
        {"prepare": S, "serve-sources/adder": RD, "serve-sources/reverser": R},
        [("start", "sample/adder")],
    ),
    (
        "sampling done: its server is deleted",
        {
            "prepare": S,
            "serve-sources/adder": RD,
            "sample/adder": S,
            "serve-sources/reverser": RD,
            "sample/reverser": R,
        },
        [("stop", "serve-sources/adder")],
    ),
    (
        "a finished source is never served again",
        {"prepare": S, "sample/adder": S, "serve-sources/reverser": RD, "sample/reverser": R},
        [],
    ),
    ("all sampled, servers gone: score", DONE_SAMPLING, [("start", "score")]),
    ("score done: build", {**DONE_SAMPLING, "score": S}, [("start", "build")]),
    ("build done: sft", {**DONE_SAMPLING, "score": S, "build": S}, [("start", "sft")]),
    ("sft done: dpo", {**DONE_SAMPLING, "score": S, "build": S, "sft": S}, [("start", "dpo")]),
    (
        "dpo done: serve every candidate",
        {**DONE_SAMPLING, "score": S, "build": S, "sft": S, "dpo": S},
        [("start", f"serve-candidates/{c}") for c in ("original", "sft", "dpo")],
    ),
    (
        "candidates starting: evaluate waits for all of them",
        {
            **DONE_SAMPLING,
            "score": S,
            "build": S,
            "sft": S,
            "dpo": S,
            **CANDIDATES_READY,
            "serve-candidates/dpo": R,
        },
        [],
    ),
    (
        "every candidate ready: evaluate",
        {**DONE_SAMPLING, "score": S, "build": S, "sft": S, "dpo": S, **CANDIDATES_READY},
        [("start", "evaluate")],
    ),
    (
        "evaluated: the candidates' servers go",
        {**DONE_SAMPLING, "score": S, "build": S, "sft": S, "dpo": S, **CANDIDATES_READY, "evaluate": S},
        [("stop", f"serve-candidates/{c}") for c in ("original", "sft", "dpo")],
    ),
    (
        "all done: complete",
        {**DONE_SAMPLING, "score": S, "build": S, "sft": S, "dpo": S, "evaluate": S},
        [("complete", None)],
    ),
    (
        "a failed task fails the run and stops servers",
        {"prepare": S, "serve-sources/adder": RD, "sample/adder": F, "serve-sources/reverser": RD},
        [("fail", "sample/adder"), ("stop", "serve-sources/adder"), ("stop", "serve-sources/reverser")],
    ),
]


@pytest.mark.parametrize(
    ("observed", "expected"), [c[1:] for c in FUSE_CASES], ids=[c[0] for c in FUSE_CASES]
)
def test_fusechat3_transitions(observed: dict, expected: list) -> None:
    assert acts(next_actions(FUSE, observed)) == expected


WRPO_SAMPLED = {"prepare": S, **{f"sample/{s.name}": S for s in WRPO.sources}}
WRPO_CASES = [
    (
        "at most maxConcurrentSources servers",
        {"prepare": S},
        [("start", "serve-sources/mistral-large"), ("start", "serve-sources/gemma-2-27b")],
    ),
    (
        "a freed slot goes to the next source",
        {"prepare": S, "sample/mistral-large": S, "serve-sources/gemma-2-27b": RD, "sample/gemma-2-27b": R},
        [("start", "serve-sources/qwen-2-72b")],
    ),
    (
        "a stopping server still holds its slot",
        {
            "prepare": S,
            "sample/mistral-large": S,
            "serve-sources/mistral-large": RD,
            "serve-sources/gemma-2-27b": RD,
            "sample/gemma-2-27b": R,
        },
        [("stop", "serve-sources/mistral-large")],
    ),
    (
        "gpu stages never overlap: score waits for the last server to go",
        {**WRPO_SAMPLED, "serve-sources/llama-3-70b": RD},
        [("stop", "serve-sources/llama-3-70b")],
    ),
    (
        "sft done: serve the target",
        {**WRPO_SAMPLED, "score": S, "build": S, "sft": S},
        [("start", "serve-target")],
    ),
    (
        "target ready: sample it",
        {**WRPO_SAMPLED, "score": S, "build": S, "sft": S, "serve-target": RD},
        [("start", "sample-target")],
    ),
    (
        "target sampled: stop its server, scoring waits",
        {**WRPO_SAMPLED, "score": S, "build": S, "sft": S, "serve-target": RD, "sample-target": S},
        [("stop", "serve-target")],
    ),
    (
        "then score the target",
        {**WRPO_SAMPLED, "score": S, "build": S, "sft": S, "sample-target": S},
        [("start", "score-target")],
    ),
    (
        "then build wrpo",
        {**WRPO_SAMPLED, "score": S, "build": S, "sft": S, "sample-target": S, "score-target": S},
        [("start", "build-wrpo")],
    ),
    (
        "then train wrpo",
        {
            **WRPO_SAMPLED,
            "score": S,
            "build": S,
            "sft": S,
            "sample-target": S,
            "score-target": S,
            "build-wrpo": S,
        },
        [("start", "wrpo")],
    ),
]


@pytest.mark.parametrize(
    ("observed", "expected"), [c[1:] for c in WRPO_CASES], ids=[c[0] for c in WRPO_CASES]
)
def test_wrpo_transitions(observed: dict, expected: list) -> None:
    assert acts(next_actions(WRPO, observed)) == expected


def test_gpu_overlap_allowed_when_the_spec_says_so() -> None:
    spec = load_spec("wrpo-llama3-8b", **{"serving.allowGpuOverlap": True})
    observed = {**WRPO_SAMPLED, "serve-sources/llama-3-70b": RD}
    assert acts(next_actions(spec, observed)) == [("stop", "serve-sources/llama-3-70b"), ("start", "score")]


def test_all_sources_served_by_default() -> None:
    spec = load_spec("wrpo-llama3-8b", **{"serving.maxConcurrentSources": None})
    assert len(next_actions(spec, {"prepare": S})) == 4


SUSPEND_CASES = [
    (
        "suspend live tasks",
        True,
        {"prepare": S, "serve-sources/adder": RD, "sample/adder": R},
        [("suspend", "serve-sources/adder"), ("suspend", "sample/adder")],
    ),
    ("suspended run starts nothing", True, {"prepare": S}, []),
    (
        "resume suspended tasks first",
        False,
        {"prepare": S, "serve-sources/adder": SU, "sample/adder": SU},
        [("resume", "serve-sources/adder"), ("resume", "sample/adder")],
    ),
]


@pytest.mark.parametrize(
    ("suspended", "observed", "expected"), [c[1:] for c in SUSPEND_CASES], ids=[c[0] for c in SUSPEND_CASES]
)
def test_suspend(suspended: bool, observed: dict, expected: list) -> None:
    assert acts(next_actions(FUSE, observed, suspended=suspended)) == expected


def test_retry_only_the_named_stage() -> None:
    observed = {**DONE_SAMPLING, "score": F}
    assert acts(next_actions(FUSE, observed, retry="build")) == [("fail", "score")]
    assert acts(next_actions(FUSE, observed, retry="score")) == [("retry", "score")]
    # Once cleared, it starts again.
    assert acts(next_actions(FUSE, {**DONE_SAMPLING}, retry="score")) == [("start", "score")]


def test_unknown_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="sample/nobody"):
        next_actions(FUSE, {"sample/nobody": S})


def simulate(spec: FusionRunSpec) -> list[tuple[str, str | None]]:
    """Execute the plan like an executor would: servers become ready, jobs succeed, one step at a time."""
    observed: dict[str, TaskState] = {}
    history: list[tuple[str, str | None]] = []
    for _ in range(200):
        actions = next_actions(spec, observed)
        history += acts(actions)
        if any(a.type == ActionType.COMPLETE for a in actions):
            return history
        for action in actions:
            if action.type == ActionType.START:
                observed[action.task] = TaskState.RUNNING
            elif action.type == ActionType.STOP:
                observed.pop(action.task)
        # The world moves: the first live task advances one state.
        for name, state in list(observed.items()):
            if state == TaskState.RUNNING:
                server = name.startswith("serve")
                observed[name] = TaskState.READY if server else TaskState.SUCCEEDED
                break
    raise AssertionError(f"no completion: {history}")


@pytest.mark.parametrize("spec", [FUSE, WRPO], ids=["fusechat3", "wrpo"])
def test_full_run_starts_each_task_once_and_deletes_every_server(spec: FusionRunSpec) -> None:
    history = simulate(spec)
    starts = [t for a, t in history if a == "start"]
    assert sorted(starts) == sorted(t.name for t in plan_tasks(spec))
    servers = [t.name for t in plan_tasks(spec) if t.kind == "server"]
    assert sorted(t for a, t in history if a == "stop") == sorted(servers)
    # Order: every task starts after what it needs.
    for task in plan_tasks(spec):
        for need in task.needs:
            assert starts.index(need) < starts.index(task.name)


def test_every_intermediate_state_is_a_valid_restart_point() -> None:
    """Replaying the planner from each observed state (as after an operator restart) gives the same run."""
    observed: dict[str, TaskState] = {}
    for _ in range(200):
        first = next_actions(WRPO, observed)
        assert next_actions(WRPO, dict(observed)) == first  # no hidden state
        if any(a.type == ActionType.COMPLETE for a in first):
            break
        for action in first:
            if action.type == ActionType.START:
                observed[action.task] = TaskState.RUNNING
            elif action.type == ActionType.STOP:
                observed.pop(action.task)
        for name, state in list(observed.items()):
            if state == TaskState.RUNNING:
                observed[name] = TaskState.READY if name.startswith("serve") else TaskState.SUCCEEDED
                break
    else:
        raise AssertionError("no completion")
    assert next_actions(WRPO, observed) == [
        Action(ActionType.COMPLETE, None, "Succeeded", "every stage has succeeded")
    ]


def test_stage_states() -> None:
    observed = {"prepare": S, "sample/adder": S, "serve-sources/reverser": RD, "sample/reverser": R}
    states = stage_states(FUSE, observed)
    assert states["prepare"] == "Succeeded"
    assert states["serve-sources"] == "Running"
    assert states["sample"] == "Running"
    assert states["score"] == "Pending"
    done = stage_states(FUSE, {**observed, "sample/reverser": S})
    assert done["serve-sources"] == "Succeeded" and done["sample"] == "Succeeded"
    assert stage_states(FUSE, {"prepare": F})["prepare"] == "Failed"


def test_the_local_plan_serves_the_evaluation_candidates_like_the_cluster() -> None:
    from kubefusion_operator.local.plan import local_steps

    evaluate = next(s for s in local_steps(FUSE) if s.stage == "evaluate")
    assert evaluate.serve is None
    assert evaluate.also_serve == ("eval-original", "eval-sft", "eval-dpo")
    servers = [t for t in plan_tasks(FUSE) if t.kind == "server" and t.stage == "evaluate"]
    assert tuple(t.endpoint for t in servers) == evaluate.also_serve
