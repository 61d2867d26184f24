"""The install and GitOps docs' examples are valid: YAML parses, and the chart values they pass pass the chart."""

from __future__ import annotations

import re
from typing import Any

import yaml
from packaging_chart import REPO_ROOT, render

DOCS = REPO_ROOT / "docs"


def yaml_blocks(name: str) -> list[dict[str, Any]]:
    text = (DOCS / name).read_text()
    docs = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        docs += [d for d in yaml.safe_load_all(block) if d]
    return docs


def test_gitops_examples_pass_values_the_chart_accepts() -> None:
    docs = yaml_blocks("gitops.md")
    kinds = {d["kind"] for d in docs}
    assert {"Application", "HelmRelease", "OCIRepository", "Kustomization", "ConfigMap"} <= kinds
    values_sets = [
        d["spec"]["source"]["helm"]["valuesObject"]
        for d in docs
        if d["kind"] == "Application" and "helm" in d["spec"]["source"]
    ]
    values_sets += [d["spec"]["values"] for d in docs if d["kind"] == "HelmRelease"]
    assert len(values_sets) == 2
    for values in values_sets:
        assert render(values), values  # raises HelmValuesError on anything the schema rejects


def test_the_argocd_health_key_matches_the_charts() -> None:
    (argocd_cm,) = [d for d in yaml_blocks("gitops.md") if d["kind"] == "ConfigMap"]
    assert list(argocd_cm["data"]) == ["resource.customizations.health.kubefusion.dev_FusionRun"]


def test_install_examples_parse() -> None:
    pvc, scheduling = yaml_blocks("install.md")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # The scheduling fragment is valid in a FusionRun and gives every GPU workload the toleration.
    from kubefusion_operator.validation import validate_document

    run = yaml.safe_load((DOCS.parent / "examples" / "fusechat3-llama31-8b.yaml").read_text())
    run["spec"].update(scheduling["spec"])
    spec = validate_document(run).spec
    for workload in ("serving", "scoring", "training", "evaluation"):
        assert spec.scheduling.for_workload(workload).tolerations[0].key == "nvidia.com/gpu"
