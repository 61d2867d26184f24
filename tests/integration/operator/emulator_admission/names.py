"""Object names as kube-apiserver validates them, plus the names Kubernetes and the training operator
derive from them (which the server does not check at create time, but which then fail).

kube-apiserver, on create:
- metadata.name of most kinds (ConfigMap, Deployment, Pod, Event, custom resources...): a DNS-1123
  subdomain (<= 253, lower-case alphanumerics, '-', '.', alphanumeric at both ends);
- Namespace: a DNS-1123 label (<= 63, no dots); Service: a DNS-1035 label (<= 63, starts with a letter);
- Job: also a label value (the job controller labels its pods job-name=<name>), so <= 63; an Indexed
  Job's largest pod hostname `<name>-<completions-1>` must be a DNS-1123 label (the server refuses it:
  pods could not get such a hostname).
The training operator (a PyTorchJob's derived objects, checked here at create time so that a test sees
the failure instead of a job stuck without pods): the name is a DNS-1035 label (its webhook), and its
per-replica Services `<name>-<replicatype>-<index>` must be DNS-1035 labels too. A TrainJob's name is
checked by its CRD (crd_schemas.py); its JobSet's pod hostnames `<name>-node-0-<index>` here.

Tests/fixtures turn it on with `emulator.admission_checks.append(check)`; `emulator_server()` does by
default. test_op_emulator_names.py proves each refusal.
"""

from __future__ import annotations

import re
from typing import Any

from op_emulator import Admission, refuse

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_error(value: str, *, letter_first: bool = False) -> str | None:
    """Why `value` is not a DNS label (1123, or 1035 with letter_first), or None when it is one."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    pattern = DNS1035_LABEL if letter_first else DNS1123_LABEL
    if not pattern.match(value):
        first = (
            "start with an alphabetic character" if letter_first else "start with an alphanumeric character"
        )
        return f"a lowercase RFC {1035 if letter_first else 1123} label must consist of lower case alphanumeric characters or '-', {first}, and end with an alphanumeric character"
    return None


def subdomain_error(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not DNS1123_SUBDOMAIN.match(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def _invalid(admission: Admission, field: str, value: str, why: str) -> Exception:
    kind = admission.obj.get("kind", admission.resource.plural)
    qualified = f"{kind}.{admission.resource.group}" if admission.resource.group else kind
    name = admission.obj["metadata"]["name"]
    return refuse(
        422, "Invalid", f'{qualified} "{name}" is invalid: {field}: Invalid value: "{value}": {why}'
    )


def _name_error(kind: str, name: str) -> str | None:
    if kind == "Service":
        return label_error(name, letter_first=True)
    if kind == "Namespace":
        return label_error(name)
    if kind == "PyTorchJob":
        return label_error(name, letter_first=True)
    if kind == "Job":  # a subdomain that is also a label value (job-name=<name> on its pods)
        return subdomain_error(name) or ("must be no more than 63 characters" if len(name) > 63 else None)
    return subdomain_error(name)


def derived_names(kind: str, obj: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(field, derived name, letter_first) that Kubernetes or the training operator will create."""
    name, spec = obj["metadata"]["name"], obj.get("spec") or {}
    if kind == "Job" and spec.get("completionMode") == "Indexed":
        return [("metadata.name", f"{name}-{max(int(spec.get('completions') or 1) - 1, 0)}", False)]
    if kind == "PyTorchJob":
        return [
            (
                f"spec.pytorchReplicaSpecs.{rtype}",
                f"{name}-{rtype.lower()}-{max(int(rs.get('replicas') or 1) - 1, 0)}",
                True,
            )
            for rtype, rs in (spec.get("pytorchReplicaSpecs") or {}).items()
        ]
    if kind == "TrainJob":  # its JobSet's pods: <name>-node-<job index>-<pod index>, one Job per node
        nodes = int((spec.get("trainer") or {}).get("numNodes") or 1)
        return [("spec.trainer.numNodes", f"{name}-node-0-{max(nodes - 1, 0)}", False)]
    return []


def check(_emulator: Any, admission: Admission) -> None:
    if admission.verb != "create" or admission.subresource:
        return  # names cannot change after creation
    kind = admission.obj.get("kind") or ""
    name = admission.obj["metadata"]["name"]
    if why := _name_error(kind, name):
        raise _invalid(admission, "metadata.name", name, why)
    for field, derived, letter_first in derived_names(kind, admission.obj):
        if why := label_error(derived, letter_first=letter_first):
            raise _invalid(admission, field, derived, f"derived name {derived!r} {why}")
