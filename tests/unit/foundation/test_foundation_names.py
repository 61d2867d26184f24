"""One source of truth for names and limits: RunConfig, the FusionRun model and the CRD (checked with
a real CEL implementation) accept the same run names and the same field values."""

from __future__ import annotations

import copy
import random
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from foundation_cel import evaluate
from foundation_specs import BASE
from pydantic import TypeAdapter, ValidationError

from kubefusion_operator.api import FusionRunSpec, ObjectMeta
from kubefusion_operator.crd import _Converter
from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.configmap import build_config_map
from kubefusion_operator.render.names import RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import validate_document
from kubefusion_trainer.config import RUN_NAME_MAX, FusionConfig

REPO = Path(__file__).resolve().parents[3]
SPEC = FusionRunSpec.model_validate(BASE["spec"])


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "fusionrun.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def named(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    return doc


def crd_accepts(schema: dict[str, Any], name: str) -> bool:
    return not [f for f in evaluate(schema, named(name)) if "metadata.name" in f.message]


def run_config_accepts(name: str) -> bool:
    try:
        SPEC.to_run_config(name, "/data")  # what render/configmap.py builds for the run
    except ValidationError:
        return False
    return True


def model_accepts(name: str) -> bool:
    try:
        ObjectMeta(name=name)
    except ValidationError:
        return False
    return True


def names_to_try() -> list[str]:
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits + "-"
    out = [
        "a",
        "0",
        "a" * RUN_NAME_MAX,
        "a" * (RUN_NAME_MAX + 1),
        "-a",
        "a-",
        "A",
        "a.b",
        "a_b",
        "9" * 63,
        "",
    ]
    for length in range(1, RUN_NAME_MAX + 3):
        out.append(rng.choice(string.ascii_lowercase) + "".join(rng.choices(alphabet, k=length - 1)))
    return out


def test_crd_run_config_and_model_accept_the_same_names(schema: dict[str, Any]) -> None:
    for name in names_to_try():
        if not name:
            continue  # the API server itself requires a name
        verdicts = (crd_accepts(schema, name), run_config_accepts(name), model_accepts(name))
        assert len(set(verdicts)) == 1, (name, verdicts)


def test_longest_accepted_name_renders_every_child(schema: dict[str, Any]) -> None:
    longest = "r" * RUN_NAME_MAX
    assert evaluate(schema, named(longest)) == []
    run = validate_document(named(longest), "longest")
    ctx = RenderContext(longest, "ns", "uid", run.spec)
    objects = [build_config_map(ctx)] + [o for t in plan_tasks(run.spec) for o in build_task_children(ctx, t)]
    assert {o["kind"] for o in objects} == {"ConfigMap", "Service", "Deployment", "Job", "PyTorchJob"}
    assert all(len(o["metadata"]["name"]) <= 63 for o in objects)


def test_one_character_longer_is_refused_saying_why(schema: dict[str, Any]) -> None:
    failures = evaluate(schema, named("r" * (RUN_NAME_MAX + 1)))
    assert len(failures) == 1 and failures[0].path == ""
    assert (
        "metadata.name" in failures[0].message and f"at most {RUN_NAME_MAX} characters" in failures[0].message
    )
    assert "label value" in failures[0].message  # why: the name is reused in labels and child names


def _constraints(node: Any, path: str = "") -> dict[str, Any]:
    """path -> the value constraints of every schema node (bounds, lengths, patterns, enums)."""
    keys = (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "enum",
        "type",
    )
    out: dict[str, Any] = {}
    if not isinstance(node, dict):
        return out
    picked = {k: node[k] for k in keys if k in node}
    if picked:
        out[path] = picked
    for name, sub in (node.get("properties") or {}).items():
        out.update(_constraints(sub, f"{path}.{name}"))
    if isinstance(node.get("items"), dict):
        out.update(_constraints(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.update(_constraints(node["additionalProperties"], f"{path}{{}}"))
    return out


def test_crd_limits_are_the_run_config_limits(schema: dict[str, Any]) -> None:
    """Every field stage processes read (FusionConfig, inside RunConfig) has the same limits in the CRD."""
    root = TypeAdapter(FusionConfig).json_schema(by_alias=True)
    run_config = _constraints(_Converter(root).convert(root))
    crd = _constraints(schema["properties"]["spec"])
    assert len(run_config) > 50 and ".sources[].sampling.temperature" in run_config
    differing = {p: (v, crd.get(p)) for p, v in run_config.items() if crd.get(p) != v}
    assert differing == {}
