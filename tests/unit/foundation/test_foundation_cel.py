"""The CRD's CEL rules, run with a real CEL implementation: examples pass, cross-field errors fail by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from foundation_cel import evaluate
from foundation_specs import BASE, spec_with

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "fusionrun.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_every_rule(schema: dict[str, Any], example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    assert evaluate(schema, doc) == []
    assert evaluate(schema, doc, old=copy.deepcopy(doc)) == []


CROSS_FIELD = [
    ("duplicate-source", [("spec.sources[1].name", "alpha")], ".spec", ".sources"),
    ("duplicate-dataset", [("spec.datasets[1].name", "chat")], ".spec", ".datasets"),
    ("dangling-source-ref", [("spec.datasets[1].sources", ["alpha", "gamma"])], ".spec", ".datasets"),
    ("split-out-of-range", [("spec.datasets[0].sftFraction", 1.2)], ".spec.datasets[0]", ".sftFraction"),
    ("margin-inverted", [("spec.scoring.margin", {"min": 0.3, "max": 0.1})], ".spec.scoring.margin", ".min"),
    ("margin-min-above-default-max", [("spec.scoring.margin", {"min": 0.5})], ".spec.scoring.margin", ".min"),
    ("wrpo-without-settings", [("spec.recipe", "wrpo")], ".spec", ".training"),
    (
        "wrpo-without-alpha",
        [("spec.recipe", "wrpo"), ("spec.training.wrpo", {"beta": 0.01})],
        ".spec",
        ".training",
    ),
    ("storage-two-backends", [("spec.storage", {"pvc": "runs", "uri": "s3://b/k"})], ".spec.storage", ".uri"),
]


@pytest.mark.parametrize(
    ("edits", "path", "field_path"), [c[1:] for c in CROSS_FIELD], ids=[c[0] for c in CROSS_FIELD]
)
def test_cross_field_rule_fails_naming_its_field(
    schema: dict[str, Any], edits: list, path: str, field_path: str
) -> None:
    failures = evaluate(schema, spec_with(*edits))
    assert [(f.path, f.field_path) for f in failures] == [(path, field_path)], failures


def test_base_spec_passes(schema: dict[str, Any]) -> None:
    assert evaluate(schema, BASE) == []


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ([("spec.recipe", "wrpo")], "recipe"),
        ([("spec.sources[0].model", "org/other-70B")], "sources"),
        ([("spec.datasets[0].rowLimit", 5)], "datasets"),
        ([("spec.queueName", "team-a")], "queueName"),
        ([("spec.training.sft.epochs", 2)], "training"),
        ([("spec.storage", {"pvc": "other"})], "storage"),
    ],
)
def test_spec_is_immutable(schema: dict[str, Any], edits: list, field: str) -> None:
    old, new = copy.deepcopy(BASE), spec_with(*edits)
    failures = evaluate(schema, new, old=old)
    assert [f.field_path for f in failures if "oldSelf" in f.rule] == [f".{field}"]
    assert all(f"spec.{field} is immutable" in f.message for f in failures if "oldSelf" in f.rule)


def test_suspend_may_change(schema: dict[str, Any]) -> None:
    old = copy.deepcopy(BASE)
    assert evaluate(schema, spec_with(("spec.suspend", True)), old=old) == []
    suspended = spec_with(("spec.suspend", True))
    assert evaluate(schema, spec_with(("spec.suspend", False)), old=suspended) == []


def test_removing_an_optional_field_is_a_change(schema: dict[str, Any]) -> None:
    old = spec_with(("spec.queueName", "team-a"))
    failures = evaluate(schema, copy.deepcopy(BASE), old=old)
    assert [f.field_path for f in failures] == [".queueName"]
