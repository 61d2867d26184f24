"""Name budget: every child name, and every name Kubernetes or a training operator derives from it,
is a valid DNS label for every run name the CRD accepts (a property test over lengths 1..63)."""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

import pytest

from kubefusion_operator.planner import plan_tasks
from kubefusion_operator.render.configmap import build_config_map
from kubefusion_operator.render.names import DERIVED_SUFFIXES, MAX_JOB_INDEX, MAX_NODES, RenderContext
from kubefusion_operator.render.task import build_task_children
from kubefusion_operator.validation import load_fusionrun
from kubefusion_trainer.config import RUN_NAME_MAX

RUN = load_fusionrun(Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml")
SPEC = RUN.spec.model_copy(deep=True)
SPEC.training.sft.resources.nodes = 4  # a Master and 3 Workers
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def run_names() -> list[str]:
    rng = random.Random(10)
    alphabet = string.ascii_lowercase + string.digits + "-"
    names = []
    for length in range(1, RUN_NAME_MAX + 1):
        for first in (string.ascii_lowercase, string.digits):
            middle = "".join(rng.choices(alphabet, k=max(length - 2, 0)))
            last = rng.choice(string.ascii_lowercase + string.digits) if length > 1 else ""
            names.append((rng.choice(first) + middle + last)[:length])
    return names


def derived(obj: dict) -> list[tuple[str, bool]]:
    """(name, must start with a letter) of what Kubernetes and training operators create from obj."""
    name, spec = obj["metadata"]["name"], obj.get("spec") or {}
    if obj["kind"] == "Job":
        last = spec.get("completions", 1) - 1 if spec.get("completionMode") == "Indexed" else 0
        return [(f"{name}-{last}", False), (f"{name}-{MAX_JOB_INDEX}", False)]
    if obj["kind"] == "PyTorchJob":
        out = [
            (f"{name}-{kind.lower()}-{rs['replicas'] - 1}", True)
            for kind, rs in spec["pytorchReplicaSpecs"].items()
        ]
        # The worst case of any training backend: as many nodes as the API allows.
        return out + [(f"{name}{suffix}", True) for suffix in DERIVED_SUFFIXES["train"]]
    return []


@pytest.mark.parametrize("name", run_names(), ids=lambda n: f"{len(n)}-{n[:1]}")
def test_every_child_and_derived_name_is_a_dns_label(name: str) -> None:
    ctx = RenderContext(name, "ns", "uid", SPEC)
    objects = [build_config_map(ctx)] + [o for t in plan_tasks(SPEC) for o in build_task_children(ctx, t)]
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(set(names)) == len(names)  # still unique after truncation
    for obj in objects:
        child = obj["metadata"]["name"]
        letter_first = obj["kind"] in ("Service", "PyTorchJob")
        assert (DNS1035_LABEL if letter_first else DNS1123_LABEL).match(child) and len(child) <= 63, child
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value
        for derived_name, letter in derived(obj):
            assert len(derived_name) <= 63, derived_name
            assert (DNS1035_LABEL if letter else DNS1123_LABEL).match(derived_name), derived_name


def test_training_budget_covers_the_largest_allowed_cluster() -> None:
    assert f"-worker-{MAX_NODES - 1}" in DERIVED_SUFFIXES["train"]
    assert f"-node-0-{MAX_NODES - 1}" in DERIVED_SUFFIXES["train"]
