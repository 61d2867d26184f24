"""The rendered RBAC, evaluated the way the API server's RBAC authorizer does (no cluster needed)."""

from __future__ import annotations

import pytest
from packaging_chart import NAMESPACE, VALUE_SETS, find, only, render
from packaging_rbac import Access, allowed, granted_rules


def _granted(values: dict) -> list:
    objects = render(values)
    account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    return granted_rules(objects, account, NAMESPACE)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_rule_uses_a_wildcard_or_escalation_verb(value_set: str) -> None:
    objects = render(VALUE_SETS[value_set])
    for role in find(objects, "Role") + find(objects, "ClusterRole"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role['kind']}/{role['metadata']['name']}: {key} has *"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"], "the operator references Secrets; it never reads them"


def test_cluster_mode_grants_in_any_namespace() -> None:
    granted = _granted({})
    assert allowed(granted, Access("create", "batch", "jobs", "any-namespace"))
    assert allowed(granted, Access("watch", "kubefusion.dev", "fusionruns", None))
    assert not allowed(granted, Access("delete", "kubefusion.dev", "fusionruns", "any-namespace"))


def test_namespaced_mode_grants_only_inside_the_watched_namespaces() -> None:
    granted = _granted(VALUE_SETS["namespaced"])
    assert allowed(granted, Access("create", "batch", "jobs", "team-a"))
    assert allowed(granted, Access("patch", "kubefusion.dev", "fusionruns/status", "team-b"))
    assert not allowed(granted, Access("create", "batch", "jobs", "team-c"))
    assert not allowed(granted, Access("list", "kubefusion.dev", "fusionruns", None))  # across namespaces


def test_a_binding_for_another_account_grants_nothing() -> None:
    objects = render({})
    assert granted_rules(objects, "someone-else", NAMESPACE) == []


def test_no_rbac_objects_means_no_grants() -> None:
    assert _granted({"rbac": {"create": False}}) == []
