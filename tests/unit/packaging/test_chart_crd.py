"""The chart installs and upgrades the FusionRun CRD, identical to the generated crds/fusionrun.yaml."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import yaml
from packaging_chart import CHART_DIR, REPO_ROOT, VALUE_SETS, find, only, render

from kubefusion_operator.crd import render_crd

CRD_FILE = REPO_ROOT / "crds" / "fusionrun.yaml"
CHART_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kubefusion_chart_sync_crd", CHART_DIR / "hack" / "sync_crd.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_chart_template_is_in_sync_with_crds_folder() -> None:
    template = (CHART_DIR / "templates" / "crds" / "fusionrun.yaml").read_text(encoding="utf-8")
    assert template == _sync_module().render_template(CRD_FILE.read_text(encoding="utf-8")), (
        "charts/kubefusion/templates/crds/fusionrun.yaml is stale: run python charts/kubefusion/hack/sync_crd.py"
    )


def test_the_crds_folder_is_what_the_api_models_generate() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd(), "run `kubefusion crd -o crds/fusionrun.yaml`"


def test_the_rendered_crd_equals_the_generated_one_plus_release_metadata() -> None:
    generated = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    rendered = only(render({}), "CustomResourceDefinition")
    metadata = rendered.pop("metadata")
    expected_metadata = generated.pop("metadata")
    assert rendered == generated
    assert metadata["name"] == expected_metadata["name"]
    assert expected_metadata["labels"].items() <= metadata["labels"].items()
    assert set(metadata["labels"]) - set(expected_metadata["labels"]) == CHART_LABELS


def test_the_crd_is_kept_on_uninstall_unless_told_otherwise() -> None:
    kept = only(render({}), "CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep",
        "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
    }
    dropped = only(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in dropped["metadata"]


def test_crds_can_be_managed_outside_the_chart() -> None:
    assert not find(render(VALUE_SETS["external-crd-and-sa"]), "CustomResourceDefinition")
    # The crds/ folder Helm installs once (and never upgrades) stays empty: the template is the only copy.
    assert not (CHART_DIR / "crds").exists()


def test_sync_refuses_text_helm_would_treat_as_a_template() -> None:
    import pytest

    with pytest.raises(SystemExit, match="template action"):
        _sync_module().render_template("metadata:\n  name: x\nspec:\n  description: '{{ oops }}'\n")


def test_helm_upgrades_the_crd_because_it_is_a_template() -> None:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.crds == []  # nothing in crds/, which Helm installs once and never upgrades
        upgrade = chart.render({}, name="kf", namespace="kubefusion-system", is_upgrade=True, revision=2)
    assert "kind: CustomResourceDefinition" in upgrade["kubefusion/templates/crds/fusionrun.yaml"]
