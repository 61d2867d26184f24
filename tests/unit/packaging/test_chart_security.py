"""The operator pod meets the Kubernetes `restricted` Pod Security Standard.

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
restricted controls, v1.31), applied to the pod template exactly as the admission plugin would.
"""

from __future__ import annotations

from typing import Any

import pytest
from packaging_chart import VALUE_SETS, only, render

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way a pod spec breaks the restricted profile (baseline included)."""
    problems: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"spec.{key} is true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} uses {sorted(kinds - ALLOWED_VOLUME_TYPES)}")
    for sysctl in pod_ctx.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile {pod_seccomp}")
    for c in containers:
        name, ctx = c["name"], c.get("securityContext") or {}
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        if (ctx.get("seLinuxOptions") or {}).get("type") not in (
            None,
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
        ):
            problems.append(f"{name}: seLinuxOptions.type")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        # Not part of the standard, but asked of this chart: nothing may write the image.
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
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
        ({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}}, "adds capabilities"),
        (
            {"podSecurityContext": {"runAsUser": 0}, "securityContext": {"runAsNonRoot": False}},
            "runAsUser is 0",
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
