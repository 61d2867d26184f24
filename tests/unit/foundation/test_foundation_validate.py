"""`kubefusion validate`: the examples pass, and each invalid spec is rejected naming its field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from foundation_specs import BASE, DELETE, spec_with

from kubefusion_operator.validation import InvalidFusionRun, validate_document

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))

INVALID = [
    # (case id, edits, the field path the error must name, a fragment of its message)
    ("missing-source-model", [("spec.sources[0].model", DELETE)], "spec.sources[0].model", "required"),
    ("missing-target", [("spec.target", DELETE)], "spec.target", "required"),
    ("unknown-recipe", [("spec.recipe", "ppo")], "spec.recipe", "fusechat3"),
    (
        "temperature-type",
        [("spec.sources[0].sampling", {"temperature": "hot"})],
        "spec.sources[0].sampling.temperature",
        "number",
    ),
    ("unknown-source-field", [("spec.sources[0].replicas", 3)], "spec.sources[0].replicas", "unknown field"),
    ("unknown-spec-field", [("spec.bogus", True)], "spec.bogus", "unknown field"),
    ("duplicate-source", [("spec.sources[1].name", "alpha")], "spec.sources", "used twice"),
    ("duplicate-dataset", [("spec.datasets[1].name", "chat")], "spec.datasets", "used twice"),
    (
        "dangling-source-ref",
        [("spec.datasets[1].sources", ["gamma"])],
        "spec.datasets[1].sources",
        "not a source",
    ),
    (
        "split-above-one",
        [("spec.datasets[0].sftFraction", 1.5)],
        "spec.datasets[0].sftFraction",
        "less than or equal",
    ),
    (
        "split-negative",
        [("spec.datasets[0].sftFraction", -0.1)],
        "spec.datasets[0].sftFraction",
        "greater than or equal",
    ),
    (
        "margin-inverted",
        [("spec.scoring.margin", {"min": 0.2, "max": 0.1})],
        "spec.scoring.margin",
        "less than max",
    ),
    (
        "margin-equal",
        [("spec.scoring.margin", {"min": 0.1, "max": 0.1})],
        "spec.scoring.margin",
        "less than max",
    ),
    ("wrpo-without-settings", [("spec.recipe", "wrpo")], "spec.training.wrpo", "alpha"),
    (
        "wrpo-without-alpha",
        [("spec.recipe", "wrpo"), ("spec.training.wrpo", {"beta": 0.01})],
        "spec.training.wrpo.alpha",
        "required",
    ),
    (
        "negative-gpus",
        [("spec.sources[0].serving.gpus", -1)],
        "spec.sources[0].serving.gpus",
        "greater than or equal",
    ),
    (
        "negative-gpus-per-node",
        [("spec.training.sft.resources.gpusPerNode", -2)],
        "spec.training.sft.resources.gpusPerNode",
        "greater than or equal",
    ),
    (
        "zero-samples",
        [("spec.datasets[0].samplesPerSource", 0)],
        "spec.datasets[0].samplesPerSource",
        "greater than or equal",
    ),
    ("bad-source-name", [("spec.sources[0].name", "Bad_Name")], "spec.sources[0].name", "pattern"),
    ("bad-run-name", [("metadata.name", "Demo Run")], "metadata.name", "pattern"),
    ("wrong-api-version", [("apiVersion", "kubefusion.dev/v1")], "apiVersion", "v1alpha1"),
    ("wrong-kind", [("kind", "FuseRun")], "kind", "FusionRun"),
    ("no-sources", [("spec.sources", [])], "spec.sources", "at least 1"),
    ("missing-datasets", [("spec.datasets", DELETE)], "spec.datasets", "required"),
    (
        "bad-filter-regex",
        [("spec.datasets[0].filters", [{"field": "prompt", "pattern": "(unclosed"}])],
        "spec.datasets[0].filters[0]",
        "regular expression",
    ),
    (
        "batch-not-divisible",
        [("spec.training.sft.globalBatchSize", 24)],
        "spec.training.sft.globalBatchSize",
        "not divisible",
    ),
    (
        "storage-two-backends",
        [("spec.storage", {"pvc": "runs", "uri": "s3://b/k"})],
        "spec.storage",
        "not both",
    ),
    (
        "math-without-gold",
        [("spec.datasets[1].fields", {"prompt": "problem"})],
        "spec.datasets[1].fields.answer",
        "gold answer",
    ),
    (
        "top-p-zero",
        [("spec.sources[0].sampling", {"topP": 0})],
        "spec.sources[0].sampling.topP",
        "greater than 0",
    ),
    (
        "context-below-answer",
        [("spec.sources[0].serving.maxModelLen", 1024)],
        "spec.sources[0].serving.maxModelLen",
        "maxTokens",
    ),
    (
        "existing-answers-shadow-source",
        [("spec.datasets[1].existingAnswers", [{"source": "alpha", "field": "solution"}])],
        "spec.datasets[1].existingAnswers[0].source",
        "sampled source",
    ),
    ("missing-reward-model", [("spec.scoring", {})], "spec.scoring.rewardModel", "required"),
    ("empty-location", [("spec.datasets[0].location", "")], "spec.datasets[0].location", "at least 1"),
    (
        "alpha-schedule",
        [("spec.recipe", "wrpo"), ("spec.training.wrpo", {"alpha": 0.1, "alphaSchedule": "cubic"})],
        "spec.training.wrpo.alphaSchedule",
        "linear",
    ),
    ("loss-type", [("spec.training.dpo.lossType", "ipo")], "spec.training.dpo.lossType", "sigmoid"),
    (
        "zero-stage",
        [("spec.training.sft.resources.zeroStage", 4)],
        "spec.training.sft.resources.zeroStage",
        "0, 1, 2 or 3",
    ),
    (
        "alpha-above-one",
        [("spec.recipe", "wrpo"), ("spec.training.wrpo", {"alpha": 1.5})],
        "spec.training.wrpo.alpha",
        "less than or equal",
    ),
    ("spec-not-mapping", [("spec", ["a"])], "spec", "valid dictionary"),
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    run = validate_document(yaml.safe_load(example.read_text()), str(example))
    assert run.metadata.name == yaml.safe_load(example.read_text())["metadata"]["name"]


def test_base_spec_is_valid() -> None:
    validate_document(BASE)


@pytest.mark.parametrize(("edits", "path", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_names_its_field(edits: list, path: str, fragment: str) -> None:
    with pytest.raises(InvalidFusionRun) as info:
        validate_document(spec_with(*edits))
    matching = [e for e in info.value.errors if e.path == path]
    assert matching, f"no error at {path}; got: {[str(e) for e in info.value.errors]}"
    assert any(fragment in e.message for e in matching), [str(e) for e in matching]


def test_enough_invalid_cases() -> None:
    assert len(INVALID) >= 25


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    from conftest import subprocess_env

    return subprocess.run(
        [sys.executable, "-m", "kubefusion_operator", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )


def test_cli_validate_reports_field_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(spec_with(("spec.sources[0].serving.gpus", -1), ("spec.datasets[0].rowLimit", 0)))
    )
    result = _cli("validate", "-f", str(bad))
    assert result.returncode == 1
    # Every field error is listed, not only the first.
    assert "spec.sources[0].serving.gpus: Input should be greater than or equal to 0" in result.stderr
    assert "spec.datasets[0].rowLimit" in result.stderr
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text(yaml.safe_dump(spec_with(("spec.datasets[1].sources", ["gamma"]))))
    result = _cli("validate", "-f", str(dangling))
    assert result.returncode == 1
    assert "spec.datasets[1].sources: 'gamma' is not a source" in result.stderr


def test_cli_validate_accepts_every_example() -> None:
    result = _cli("validate", *[arg for e in EXAMPLES for arg in ("-f", str(e))])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid FusionRun") == len(EXAMPLES)


def test_cli_validate_rejects_non_fusionrun_files(tmp_path: Path) -> None:
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    result = _cli("validate", "-f", str(other), "-f", str(broken), "-f", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "expected exactly one FusionRun, found no FusionRun" in result.stderr
    assert "<yaml>" in result.stderr
    assert "missing.yaml" in result.stderr
