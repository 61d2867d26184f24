"""values.schema.json rejects wrong values (through Helm), and values.yaml documents every knob."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml
from packaging_chart import CHART_DIR, render_manifests

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()

# (values, what Helm's error must name)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-top-level-key": ({"replicaCount": 2}, "replicaCount"),
    "typo-in-nested-key": ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
    "unknown-watch-mode": ({"watch": {"mode": "everywhere"}}, "/watch/mode"),
    "namespace-not-a-dns-label": (
        {"watch": {"mode": "namespaced", "namespaces": ["Team_A"]}},
        "/watch/namespaces/0",
    ),
    "privileged-metrics-port": ({"metrics": {"port": 80}}, "/metrics/port"),
    "port-as-string": ({"metrics": {"port": "8080"}}, "/metrics/port"),
    "boolean-as-string": ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
    "tag-with-spaces": ({"image": {"tag": "latest please"}}, "/image/tag"),
    "digest-not-sha256": ({"stageImages": {"trainer": {"digest": "md5:abc"}}}, "/stageImages/trainer/digest"),
    "bad-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad-scrape-interval": (
        {"metrics": {"podMonitor": {"interval": "30 seconds"}}},
        "/metrics/podMonitor/interval",
    ),
    "bad-quantity": ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    "pull-secret-without-name": ({"imagePullSecrets": [{"secret": "regcred"}]}, "/imagePullSecrets/0"),
    "verbose-as-string": ({"operator": {"verbose": "yes"}}, "/operator/verbose"),
    "health-port-out-of-range": ({"operator": {"healthPort": 70000}}, "/operator/healthPort"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_helm_rejects_bad_values_naming_the_key(case: str) -> None:
    values, named = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as excinfo:
        render_manifests(values)
    assert named in str(excinfo.value)


def test_the_defaults_and_a_full_override_pass_the_schema() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.values)
        chart.validate_schema(yaml.safe_load(VALUES_TEXT))


def _schema_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "<root>", node)] if node.get("type") == "object" else []
    for key, child in node.get("properties", {}).items():
        found += _schema_objects(child, f"{path}.{key}")
    return found


# Objects whose keys are Kubernetes' own (label maps, security contexts, affinity): free-form on purpose.
FREE_FORM = {
    ".global",
    ".commonLabels",
    ".podSecurityContext",
    ".securityContext",
    ".podAnnotations",
    ".podLabels",
    ".nodeSelector",
    ".affinity",
    ".serviceAccount.annotations",
    ".metrics.serviceMonitor.labels",
    ".metrics.podMonitor.labels",
    ".dashboard.labels",
    ".dashboard.annotations",
    ".resources.requests",
    ".resources.limits",
}


def test_the_schema_is_strict_everywhere_but_kubernetes_own_objects() -> None:
    loose = [p for p, node in _schema_objects(SCHEMA) if node.get("additionalProperties") is not False]
    assert sorted(loose) == sorted(FREE_FORM)


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        paths += _leaf_paths(value, path) if isinstance(value, dict) and value else [path]
    return paths


def _documented_keys() -> set[str]:
    """Dotted paths of values.yaml keys that sit right under a `# --` comment (KubeRay/helm-docs style)."""
    documented, stack, pending = set(), [], False
    for line in VALUES_TEXT.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        if stripped.startswith("#") or not stripped:
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
        if not match:
            pending = False
            continue
        depth = len(match[1]) // 2
        stack = [*stack[:depth], match[2]]
        if pending:
            documented.add(".".join(stack))
        pending = False
    return documented


def test_every_value_is_documented() -> None:
    documented = _documented_keys()
    values = yaml.safe_load(VALUES_TEXT)
    # A key is documented by its own comment or by a documented parent (e.g. `resources`).
    undocumented = [
        path
        for path in _leaf_paths(values)
        if not any(".".join(path.split(".")[:i]) in documented for i in range(1, path.count(".") + 2))
    ]
    assert not undocumented, f"values.yaml keys without a `# --` comment: {undocumented}"


def test_every_value_is_in_the_schema_with_a_description() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    for path in _leaf_paths(values):
        node = SCHEMA
        for key in path.split("."):
            if "properties" not in node and node.get("additionalProperties") is not False:
                break  # a free-form map (resource quantities, labels): its keys are the user's
            assert key in node.get("properties", {}), f"{path} missing from values.schema.json"
            node = node["properties"][key]
        assert node.get("description"), f"{path} has no description in values.schema.json"
