"""The Argo CD health check the chart ships (the operator's argocd/health.lua), run in a real Lua
interpreter (lupa) on FusionRuns in each phase the operator's status module sets."""

from __future__ import annotations

from typing import Any

import lupa
import pytest
from packaging_chart import CHART_DIR, REPO_ROOT, VALUE_SETS, find, render

from kubefusion_operator.status import _CONDITIONS

HEALTH_LUA = (CHART_DIR / "files" / "argocd-health.lua").read_text()
OPERATOR_LUA = REPO_ROOT / "operator" / "kubefusion_operator" / "argocd" / "health.lua"
KEY = "resource.customizations.health.kubefusion.dev_FusionRun"


def health(obj: dict[str, Any], script: str = HEALTH_LUA) -> dict[str, str]:
    """Run the check as Argo CD does: `obj` is the live object as a Lua table; the script returns hs."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}


def fusionrun(phase: str | None, generation: int = 1, observed: int = 1, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubefusion.dev/v1alpha1",
        "kind": "FusionRun",
        "metadata": {"name": "r", "generation": generation},
        "spec": {},
    }
    if phase is not None:
        conditions = [
            {"type": kind, "status": status, "reason": "R", "message": f"{kind} is {status}"}
            for kind, status in _CONDITIONS[phase].items()
        ]
        obj["status"] = {"observedGeneration": observed, "conditions": conditions, **extra}
    return obj


# The operator's phases (kubefusion_operator.status) and the Argo CD health each must show.
@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Progressing", "Progressing"),
        ("Suspended", "Suspended"),
        ("Succeeded", "Healthy"),
        ("Failed", "Degraded"),
    ],
)
def test_every_operator_phase_maps_to_its_health(phase: str, expected: str) -> None:
    assert health(fusionrun(phase))["status"] == expected


def test_every_phase_the_operator_knows_is_covered() -> None:
    assert set(_CONDITIONS) == {"Progressing", "Suspended", "Succeeded", "Failed"}


def test_a_run_without_status_or_with_a_stale_one_is_progressing() -> None:
    assert health(fusionrun(None))["status"] == "Progressing"
    stale = health(fusionrun("Succeeded", generation=2, observed=1))
    assert stale["status"] == "Progressing" and "generation 2" in stale["message"]


def test_messages_explain_the_state() -> None:
    assert health(fusionrun("Failed"))["message"] == "Failed is True"
    assert health(fusionrun("Progressing", progress="3/8 stages"))["message"] == "3/8 stages"


def test_the_chart_carries_the_operators_check_unchanged() -> None:
    assert OPERATOR_LUA.read_text() == HEALTH_LUA, (
        "cp operator/kubefusion_operator/argocd/health.lua charts/kubefusion/files/argocd-health.lua"
    )


def test_the_chart_renders_the_check_under_argocds_key() -> None:
    (configmap,) = [
        c
        for c in find(render(VALUE_SETS["monitoring"]), "ConfigMap")
        if c["metadata"]["name"].endswith("-argocd-health")
    ]
    script = configmap["data"][KEY]
    assert script.strip() == HEALTH_LUA.strip()
    assert health(fusionrun("Succeeded"), script)["status"] == "Healthy"
