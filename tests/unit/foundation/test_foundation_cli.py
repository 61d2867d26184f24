"""`kubefusion plan` and `kubefusion crd` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from foundation_specs import spec_with

from conftest import subprocess_env
from kubefusion_operator.api import FusionRunSpec
from kubefusion_operator.estimate import parameters_billions, plan_work
from kubefusion_operator.stages import recipe_stages

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefusion_operator", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        cwd=REPO,
    )


def test_plan_prints_stages_and_work_for_the_paper_recipe() -> None:
    result = _cli("plan", "-f", "examples/fusechat3-llama31-8b.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    stage_lines = [line.split()[1] for line in out.splitlines() if line.strip()[:3].strip(". ").isdigit()]
    assert stage_lines == [
        "prepare",
        "serve-sources",
        "sample",
        "verify-code",
        "score",
        "build",
        "sft",
        "dpo",
    ]
    # 51,098 UltraFeedback prompts x 4 sources x 5 samples.
    assert "1,021,960" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total") and "," in line)
    assert "158,667" in total
    assert "estimate on H100" in out and "assumptions:" in out
    assert "PyTorchJob" in out and "Indexed Job" in out


def test_plan_for_wrpo_has_the_target_sampling_stages() -> None:
    result = _cli("plan", "-f", "examples/wrpo-llama3-8b.yaml")
    assert result.returncode == 0, result.stderr
    for stage in ("serve-target", "sample-target", "score-target", "build-wrpo", "wrpo"):
        assert f" {stage} " in result.stdout
    assert " dpo " not in result.stdout
    assert "rowLimit" in result.stdout  # unknown dataset size is said, not guessed


def test_plan_of_an_invalid_file_fails_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(("spec.recipe", "ppo"))))
    result = _cli("plan", "-f", str(bad))
    assert result.returncode == 1
    assert "spec.recipe" in result.stderr


def test_crd_command_matches_the_committed_file(tmp_path: Path) -> None:
    result = _cli("crd")
    assert result.returncode == 0
    assert result.stdout == (REPO / "crds" / "fusionrun.yaml").read_text()
    out = tmp_path / "crd.yaml"
    assert _cli("crd", "-o", str(out)).returncode == 0
    assert out.read_text() == result.stdout


def test_delegated_command_without_its_module_fails_clearly() -> None:
    result = _cli("stage", "no-such-stage")
    assert result.returncode == 2
    assert "usage: kubefusion stage" in result.stderr


def test_stage_counts_follow_the_spec() -> None:
    spec = FusionRunSpec.model_validate(spec_with()["spec"])
    plan = plan_work(spec)
    chat, maths = plan.datasets
    assert chat.responses == 100 * 2 * 5
    assert chat.sft_prompts == 40 and chat.pref_prompts == 60
    assert maths.prompts is None and maths.responses is None  # no rowLimit: unknown
    assert [s.name for s in recipe_stages(spec)][-1] == "dpo"


def test_parameter_count_from_model_names() -> None:
    assert parameters_billions("meta-llama/Llama-3.1-70B-Instruct") == 70
    assert parameters_billions("google/gemma-2-27b-it") == 27
    assert parameters_billions("Qwen/Qwen2.5-0.5B") == 0.5
    assert parameters_billions("mistralai/Mistral-Large-Instruct-2407") is None


def test_field_reference_is_up_to_date() -> None:
    result = _cli("crd", "--reference")
    assert result.returncode == 0
    assert result.stdout == (REPO / "docs" / "fusionrun-reference.md").read_text(), "run `make crds`"
    assert "| `spec.training.wrpo.alpha` | number | yes |" in result.stdout
