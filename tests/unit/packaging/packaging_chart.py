"""Render and lint charts/kubefusion with real Helm (helm-python-sdk: Helm v4's SDK, offline).

Shared by the chart tests (unit and integration); renders are cached per value set.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "kubefusion"
RELEASE = "kf"
NAMESPACE = "kubefusion-system"

# Value sets the chart must render, lint and validate with. Names are test ids.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watch": {"mode": "namespaced", "namespaces": ["team-a", "team-b"]}},
    "namespaced-release-ns": {"watch": {"mode": "namespaced"}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "dashboard": {"enabled": True, "namespace": "monitoring"},
        "argocd": {"healthCheck": {"enabled": True, "namespace": "argocd"}},
    },
    "custom-images": {
        "image": {
            "repository": "registry.example.com/ml/kubefusion-operator",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "stageImages": {
            "trainer": {
                "repository": "registry.example.com/ml/kubefusion-trainer",
                "digest": "sha256:" + "ab" * 32,
            }
        },
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "resources": {
        "resources": {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "operator": {"verbose": True, "healthPort": 9091, "extraEnv": [{"name": "EXTRA", "value": "1"}]},
    },
    "trainer-v2": {
        "trainingRuntime": {"create": True, "name": "team-torch", "maxRestarts": 5, "shmSizeLimit": "16Gi"}
    },
    "external-crd-and-sa": {
        "crds": {"enabled": False},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "metrics": {"service": {"enabled": False}},
        "fullnameOverride": "fusion",
    },
}


@lru_cache(maxsize=1)
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def _freeze(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True)


@lru_cache(maxsize=32)
def _render_frozen(frozen: str, namespace: str) -> tuple[tuple[str, str], ...]:
    manifests = _chart().render(json.loads(frozen), name=RELEASE, namespace=namespace, is_install=True)
    return tuple(sorted(manifests.items()))


def render_manifests(values: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text. Raises helm.HelmError (e.g. HelmValuesError) on bad values."""
    return dict(_render_frozen(_freeze(values), namespace))


def render(values: dict[str, Any], namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (deep copies: tests may change them)."""
    objects = []
    for path, text in render_manifests(values, namespace).items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return copy.deepcopy(objects)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objects, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def lint(values: dict[str, Any]) -> dict[str, Any]:
    """`helm lint` (strict: warnings count) for these values: {'messages': [...], 'errors': [...]}."""
    return helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
