"""RBAC evaluation as the API server's RBAC authorizer does it, for the rules the chart renders.

A request is (verb, apiGroup, resource[/subresource], namespace or None for a cluster-scoped or
all-namespaces request). A ClusterRole bound by a ClusterRoleBinding grants it anywhere; a Role (or a
ClusterRole bound by a RoleBinding) grants it only inside that RoleBinding's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Access:
    verb: str
    api_group: str
    resource: str  # plural, or plural/subresource
    namespace: str | None  # None: cluster-scoped or across all namespaces


def rule_allows(rule: dict[str, Any], access: Access) -> bool:
    if rule.get("nonResourceURLs") or rule.get("resourceNames"):
        return False  # neither appears in this chart; treat them as granting nothing here
    return (
        access.api_group in rule.get("apiGroups", [])
        and access.resource in rule.get("resources", [])
        and access.verb in rule.get("verbs", [])
    )


def granted_rules(
    objects: list[dict[str, Any]], service_account: str, sa_namespace: str
) -> list[tuple[str | None, dict]]:
    """(namespace the rule applies in, or None for everywhere; rule) for a ServiceAccount."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("rules", [])
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}
    granted: list[tuple[str | None, dict]] = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or subject not in binding.get(
            "subjects", []
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = scope if ref["kind"] == "Role" else None
        for rule in roles.get((ref["kind"], role_ns, ref["name"]), []):
            granted.append((scope, rule))
    return granted


def allowed(granted: list[tuple[str | None, dict]], access: Access) -> bool:
    return any(
        (scope is None or scope == access.namespace) and rule_allows(rule, access) for scope, rule in granted
    )
