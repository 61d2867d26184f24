"""The operator pod meets the Kubernetes `restricted` Pod Security Standard.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
restricted controls, v1.31), applied to the pod template exactly as the admission plugin would.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from packaging_chart import REPO_ROOT, VALUE_SETS, only, render

# The checker the API emulator's Pod Security admission uses (one implementation of the standard).
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration" / "operator"))
from emulator_admission import pod_security


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way a pod spec breaks the restricted profile (baseline included), and this chart's extra rule."""
    problems = pod_security.restricted_violations(pod)
    containers = [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]
    for c in containers:
        # Not part of the standard, but asked of this chart: nothing may write the image.
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem must be true")
    return problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_operator_pod_meets_the_restricted_standard(value_set: str) -> None:
    pod = only(render(VALUE_SETS[value_set]), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def test_the_operator_pod_runs_as_the_images_non_root_user() -> None:
    pod = only(render({}), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532  # USER 65532 in images/operator.Dockerfile
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # the only writable path on a read-only root filesystem


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"securityContext": {"privileged": True}}, "privileged"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}}, "capabilities"),
        (
            {"podSecurityContext": {"runAsUser": 0}, "securityContext": {"runAsNonRoot": False}},
            "runAsUser=0",
        ),
        (
            {"podSecurityContext": {"seccompProfile": None}, "securityContext": {"seccompProfile": None}},
            "seccompProfile",
        ),
    ],
)
def test_the_checker_catches_overrides_that_break_the_standard(
    override: dict[str, Any], problem: str
) -> None:
    pod = only(render(override), "Deployment")["spec"]["template"]["spec"]
    assert any(problem in p for p in restricted_violations(pod))
