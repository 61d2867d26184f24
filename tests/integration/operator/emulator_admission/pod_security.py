"""Pod Security admission, `restricted` level, for namespaces labelled `pod-security.kubernetes.io/enforce`.

kube-apiserver's PodSecurity plugin reads the namespace's `pod-security.kubernetes.io/enforce` label and
refuses a Pod that breaks that level with 403 Forbidden:

    pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
    (container "stage" must set securityContext.allowPrivilegeEscalation=false), ...

The controls are those of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.31):
`restricted` includes `baseline`. Differences from the real server, on purpose:
- Workloads (Deployment, Job, PyTorchJob and other objects holding a pod template) are refused at create
  or update when their template breaks the level. The real server only warns about a template and
  refuses the pods the controllers create later (the Job controller then records FailedCreate events);
  the emulator has no controllers making pods, so refusing the template is how a test sees the defect.
- TrainJob pod overrides (runtimePatches / podTemplateOverrides) are partial: the runtime supplies the
  rest of the pod. Only values they set explicitly are checked (e.g. allowPrivilegeEscalation: true).
- Namespaces: kmock cannot serve Namespace objects, so a test labels one with `label_namespace()`;
  the check reads those labels as the real plugin reads the Namespace's.

Use:  pod_security.label_namespace(emulator, "secure", enforce="restricted")
      emulator.admission_checks.append(pod_security.check)
Tested by tests/integration/operator/test_op_admission.py::test_pod_security_*.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from op_emulator import Admission, refuse

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
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
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
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
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def label_namespace(emulator: Any, namespace: str, **levels: str) -> None:
    """Give a namespace Pod Security labels, e.g. enforce="restricted"."""
    labels = emulator.__dict__.setdefault("namespace_labels", {}).setdefault(namespace, {})
    labels.update({f"pod-security.kubernetes.io/{mode}": level for mode, level in levels.items()})


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    """The `baseline` controls a pod spec breaks, in the plugin's wording."""
    problems: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    hosts = [k for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    if hosts:
        problems.append(f"host namespaces ({', '.join(f'{k}=true' for k in hosts)})")
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        name = c.get("name", "?")
        if ctx.get("privileged"):
            problems.append(f'privileged (container "{name}" must not set securityContext.privileged=true)')
        added = set((ctx.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            problems.append(f'non-default capabilities (container "{name}" must not include {sorted(added)})')
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f'hostPort (container "{name}" uses hostPort)')
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f'procMount (container "{name}" must not set securityContext.procMount)')
        if (ctx.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            problems.append(f'seLinuxOptions (container "{name}" sets a forbidden type)')
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            problems.append(f'seccompProfile (container "{name}" must not set type to "Unconfined")')
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f'appArmorProfile (container "{name}" must not set type to "Unconfined")')
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f'hostPath volumes (volume "{volume.get("name")}")')
    for sysctl in pod_ctx.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"forbidden sysctls ({sysctl.get('name')})")
    if (pod_ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(
            'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'
        )
    return problems


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every `restricted` control (baseline included) a pod spec breaks, in the plugin's wording."""
    problems = baseline_violations(pod)
    pod_ctx = pod.get("securityContext") or {}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f'restricted volume types (volume "{volume.get("name")}" uses {sorted(kinds)})')
    pod_non_root = pod_ctx.get("runAsNonRoot")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("runAsUser=0 (pod must not set runAsUser=0)")
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        name = c.get("name", "?")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(
                f'allowPrivilegeEscalation != false (container "{name}" must set '
                "securityContext.allowPrivilegeEscalation=false)"
            )
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(
                f'unrestricted capabilities (container "{name}" must set securityContext.capabilities.drop=["ALL"])'
            )
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f'unrestricted capabilities (container "{name}" must not add {caps["add"]})')
        non_root = ctx.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            problems.append(
                f'runAsNonRoot != true (pod or container "{name}" must set securityContext.runAsNonRoot=true)'
            )
        if ctx.get("runAsUser") == 0:
            problems.append(f'runAsUser=0 (container "{name}" must not set runAsUser=0)')
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(
                f'seccompProfile (pod or container "{name}" must set securityContext.seccompProfile.type to '
                '"RuntimeDefault" or "Localhost")'
            )
    return problems


def explicit_violations(pod: dict[str, Any]) -> list[str]:
    """For partial pod specs (overrides merged into a template elsewhere): only values set to break it."""
    problems = baseline_violations(pod)
    pod_ctx = pod.get("securityContext") or {}
    if pod_ctx.get("runAsNonRoot") is False or pod_ctx.get("runAsUser") == 0:
        problems.append("runAsNonRoot != true (the override sets runAsNonRoot=false or runAsUser=0)")
    for c in _containers(pod):
        ctx = c.get("securityContext") or {}
        if ctx.get("allowPrivilegeEscalation") is True:
            problems.append(f'allowPrivilegeEscalation != false (container "{c.get("name")}")')
        if ctx.get("runAsNonRoot") is False or ctx.get("runAsUser") == 0:
            problems.append(f'runAsNonRoot != true (container "{c.get("name")}")')
    return problems


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, pod spec, complete?) of every pod or pod template an object holds."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        yield "spec", spec, True
    elif kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
        yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}, True
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield "spec.jobTemplate.spec.template.spec", (job.get("template") or {}).get("spec") or {}, True
    elif kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            path = f"spec.pytorchReplicaSpecs.{role}.template.spec"
            yield path, (replica.get("template") or {}).get("spec") or {}, True
    elif kind == "JobSet":
        for i, rj in enumerate(spec.get("replicatedJobs") or []):
            job = (rj.get("template") or {}).get("spec") or {}
            path = f"spec.replicatedJobs[{i}].template.spec.template.spec"
            yield path, (job.get("template") or {}).get("spec") or {}, True
    elif kind == "TrainJob":
        for key in ("runtimePatches", "podTemplateOverrides", "podSpecOverrides"):
            yield from _partial_pod_specs(spec.get(key), f"spec.{key}")


def _partial_pod_specs(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _partial_pod_specs(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        if "containers" in node or "securityContext" in node or "initContainers" in node:
            yield path, node, False
        for key, value in node.items():
            if key not in ("containers", "initContainers", "securityContext"):
                yield from _partial_pod_specs(value, f"{path}.{key}")


def violations(obj: dict[str, Any]) -> list[str]:
    """Every restricted-profile problem of every pod template an object holds (path-prefixed)."""
    out: list[str] = []
    for path, pod, complete in pod_specs(obj):
        problems = restricted_violations(pod) if complete else explicit_violations(pod)
        out += [f"{path}: {p}" if obj.get("kind") != "Pod" else p for p in problems]
    return out


def check(emulator: Any, admission: Admission) -> None:
    """Refuse pods (and, see the module docstring, pod templates) that break the namespace's level."""
    if admission.system or admission.subresource or admission.namespace is None:
        return
    labels = (getattr(emulator, "namespace_labels", {}) or {}).get(admission.namespace, {})
    level = labels.get(ENFORCE_LABEL)
    if level not in ("restricted", "baseline"):
        return
    if admission.old is not None and (admission.old.get("spec") == admission.obj.get("spec")):
        return  # metadata or status only: the plugin ignores those updates
    problems: list[str] = []
    for path, pod, complete in pod_specs(admission.obj):
        if level == "baseline":
            found = baseline_violations(pod)
        else:
            found = restricted_violations(pod) if complete else explicit_violations(pod)
        problems += [p if admission.obj.get("kind") == "Pod" else f"{path}: {p}" for p in found]
    if problems:
        plural = admission.resource.plural
        group = f".{admission.resource.group}" if admission.resource.group else ""
        name = admission.obj.get("metadata", {}).get("name", "")
        raise refuse(
            403,
            "Forbidden",
            f'{plural}{group} "{name}" is forbidden: violates PodSecurity "{level}:latest": '
            + ", ".join(problems),
        )
