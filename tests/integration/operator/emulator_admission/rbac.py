"""RBAC: writes the chart's rules do not grant are refused with 403 Forbidden, when a test asks for it.

kube-apiserver authorizes every request against the bindings of its user; for the operator that is the
ServiceAccount the Helm chart binds to its ClusterRole. This check evaluates the operator's writes
(create, patch, update; told apart from the test's own requests by their User-Agent, as
op_emulator.operator_requests does) against a list of RBAC rules, by default the rules of the chart's
ClusterRole rendered with real Helm, and refuses what they do not allow:

    jobs.batch "x" is forbidden: User "system:serviceaccount:kubefusion-system:kubefusion" cannot create
    resource "jobs" in API group "batch" in the namespace "ns1"

It also enforces what the OwnerReferencesPermissionEnforcement admission plugin checks: an object whose
ownerReference sets blockOwnerDeletion may be created only by a user allowed to `update` the owner's
`finalizers` subresource (OpenShift enables the plugin; without the grant every child is refused).
Reads (get, list, watch) do not pass through admission and are not checked here; the chart's RBAC tests
cover them from the recorded requests.

Use:  emulator.admission_checks.append(rbac.RbacCheck(rbac.chart_rules()))
Tested by tests/integration/operator/test_op_admission.py::test_rbac_*.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from op_emulator import Admission, current_agent, refuse

USER = "system:serviceaccount:kubefusion-system:kubefusion"
TEST_AGENTS = ("kmock/", "kubectl")  # the tests' own client and kubectl: the user, not the operator


@functools.cache
def _chart_rules() -> tuple[dict[str, Any], ...]:
    packaging = Path(__file__).resolve().parents[3] / "unit" / "packaging"
    if str(packaging) not in sys.path:
        sys.path.insert(0, str(packaging))
    from packaging_chart import only, render

    return tuple(only(render({}), "ClusterRole")["rules"])


def chart_rules() -> list[dict[str, Any]]:
    """The rules of the chart's ClusterRole (cluster mode, default values), rendered with Helm."""
    return [dict(rule) for rule in _chart_rules()]


def allows(rules: list[dict[str, Any]], verb: str, group: str, resource: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


def is_operator(agent: str) -> bool:
    return not agent.startswith(TEST_AGENTS)


class RbacCheck:
    """applies_to(User-Agent): whose requests are the ServiceAccount's (default: all but the tests')."""

    def __init__(
        self, rules: list[dict[str, Any]], user: str = USER, applies_to: Callable[[str], bool] = is_operator
    ) -> None:
        self.rules = rules
        self.user = user
        self.applies_to = applies_to

    def _forbidden(self, admission: Admission, verb: str, group: str, resource: str, prefix: str = "") -> Any:
        plural = admission.resource.plural + (
            f".{admission.resource.group}" if admission.resource.group else ""
        )
        name = admission.obj.get("metadata", {}).get("name", "")
        where = f' in the namespace "{admission.namespace}"' if admission.namespace else ""
        return refuse(
            403,
            "Forbidden",
            f'{plural} "{name}" is forbidden: {prefix}User "{self.user}" cannot {verb} resource '
            f'"{resource}" in API group "{group}"{where}',
        )

    def __call__(self, emulator: Any, admission: Admission) -> None:
        if admission.system or not self.applies_to(current_agent.get()):
            return
        group = admission.resource.group or ""
        resource = admission.resource.plural + (f"/{admission.subresource}" if admission.subresource else "")
        if not allows(self.rules, admission.verb, group, resource):
            raise self._forbidden(admission, admission.verb, group, resource)
        if admission.verb != "create":
            return
        for ref in admission.obj.get("metadata", {}).get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion"):
                continue
            owner_group = ref.get("apiVersion", "").rpartition("/")[0]
            owner = next((r for r, i in emulator.resources.items() if i.kind == ref.get("kind")), None)
            plural = owner.plural if owner is not None else ref.get("kind", "").lower() + "s"
            if not allows(self.rules, "update", owner_group, f"{plural}/finalizers"):
                raise self._forbidden(
                    admission,
                    "update",
                    owner_group,
                    f"{plural}/finalizers",
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set "
                    "finalizers on: ",
                )
