"""The CRD is generated from the models, up to date, structural, documented and valid apiextensions/v1."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from foundation_specs import BASE, spec_with

from kubefusion_operator.crd import build_crd, render_crd

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "fusionrun.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_crd_file_is_up_to_date() -> None:
    assert CRD_FILE.read_text() == render_crd(), "crds/fusionrun.yaml is stale: run `make crds`"


def test_crd_is_valid_apiextensions_v1(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, "1.31", strict=True)
    assert crd["spec"]["names"]["shortNames"] == ["fr"]
    assert crd["spec"]["names"]["categories"] == ["kubefusion"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, f"{path} has no type"
        # Kubernetes objects embedded whole (an Affinity) keep their fields: preserve-unknown-fields.
        embedded = node.get("x-kubernetes-preserve-unknown-fields") is True
        if node.get("type") == "object" and path not in {".metadata"} and not embedded:
            assert "properties" in node or "additionalProperties" in node, f"{path}: untyped object"
            assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert "items" in node, path
        assert "default" not in node, f"{path}: defaults live in the models (pydantic), not the CRD"


def test_every_spec_and_status_field_is_described(schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in _walk(schema)
        if path.startswith((".spec", ".status"))
        and not path.endswith(("[]", "{}"))
        and not node.get("description")
    ]
    assert undocumented == []


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Stage"] == ".status.stage"
    assert columns["Succeeded"] == '.status.conditions[?(@.type=="Succeeded")].status'
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Progress"] == ".status.progress"
    assert columns["Backend"] == ".status.trainingBackend"  # what spec.training.backend auto picked
    assert columns["Age"] == ".metadata.creationTimestamp"


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    """The schema as the API server applies it with fieldValidation=Strict: unknown fields are errors."""
    node = copy.deepcopy(node)
    for _, sub in _walk(node):
        if "properties" in sub and sub is not node:
            sub["additionalProperties"] = False
    return node


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(schema: dict[str, Any], example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    jsonschema.Draft4Validator(_strict(schema)).validate(doc)


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ([("spec.sources[0].serving.gpus", -1)], "gpus"),
        ([("spec.sources[0].bogus", 1)], "bogus"),
        ([("spec.recipe", "ppo")], "recipe"),
        ([("spec.datasets[0].sftFraction", 1.5)], "sftFraction"),
        ([("spec.sources[0].name", "Bad_Name")], "name"),
    ],
)
def test_crd_schema_rejects_field_errors(schema: dict[str, Any], edits: list, field: str) -> None:
    errors = list(jsonschema.Draft4Validator(_strict(schema)).iter_errors(spec_with(*edits)))
    assert errors
    assert any(field in "/".join(map(str, e.absolute_path)) or field in e.message for e in errors)


def test_base_spec_validates_against_the_crd_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(_strict(schema)).validate(BASE)


def test_build_is_deterministic() -> None:
    assert build_crd() == build_crd()
