"""argocd/health.lua under a real Lua runtime, on Argo CD-style cases and on statuses the operator writes."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

import kubefusion_operator
from kubefusion_operator.api import as_dict
from kubefusion_operator.planner import TaskState
from kubefusion_operator.status import Observation, build_status, previous_status
from kubefusion_operator.validation import load_fusionrun

ARGOCD = Path(kubefusion_operator.__file__).parent / "argocd"
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj) " + (ARGOCD / "health.lua").read_text() + "\nend")
    result = check(to_lua(lua, obj))
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"] for c in CASES])
def test_argocd_cases(case: dict) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def operator_status(phase: str, states: dict[str, TaskState], generation: int = 1) -> dict[str, Any]:
    run = load_fusionrun(Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml")
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    status = build_status(
        run.spec,
        run.name,
        "runs/quickstart",
        previous_status(None),
        Observation(generation, phase, states),
        now,
    )  # type: ignore[arg-type]
    return {
        "apiVersion": "kubefusion.dev/v1alpha1",
        "kind": "FusionRun",
        "metadata": {"name": "quickstart", "generation": generation},
        "status": as_dict(status),
    }


S = TaskState.SUCCEEDED
ALL_DONE = {
    t: S for t in ("prepare", "sample/adder", "sample/reverser", "score", "build", "sft", "dpo", "evaluate")
}


@pytest.mark.parametrize(
    ("phase", "states", "expected"),
    [
        ("Progressing", {"prepare": TaskState.RUNNING}, "Progressing"),
        ("Suspended", {"prepare": TaskState.SUSPENDED}, "Suspended"),
        ("Failed", {"prepare": TaskState.FAILED}, "Degraded"),
        ("Succeeded", ALL_DONE, "Healthy"),
    ],
)
def test_statuses_the_operator_writes(phase: str, states: dict, expected: str) -> None:
    assert health(operator_status(phase, states))["status"] == expected


def test_a_new_generation_is_progressing_until_observed() -> None:
    obj = operator_status("Succeeded", ALL_DONE)
    obj["metadata"]["generation"] = 2
    assert health(obj)["status"] == "Progressing"
