"""`kubefusion run` with bad input: a clear error naming the cause, nothing recorded as done."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env

pytestmark = pytest.mark.integration


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefusion_operator", "run", *args],
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def fusionrun(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "examples" / "quickstart.yaml").read_text())


def test_a_failing_stage_stops_the_run_and_names_its_log(tmp_path: Path, fusionrun: dict) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(fusionrun))  # demo/ was never built here
    result = _run(tmp_path, "-f", "run.yaml")
    assert result.returncode == 1
    assert "[1/8] prepare: running" in result.stdout
    log = tmp_path / "runs" / "quickstart" / "logs" / "prepare.log"
    assert f"prepare: `prepare` exited 1; log: {log}" in result.stderr
    assert "demo/data/addition.jsonl" in result.stderr  # the log's tail names the missing dataset
    assert "run the same command to resume" in result.stderr
    assert not (tmp_path / "runs" / "quickstart" / "state" / "prepare.json").exists()


def test_an_invalid_fusionrun_is_refused_before_anything_runs(tmp_path: Path, fusionrun: dict) -> None:
    fusionrun["spec"]["datasets"][0]["samplesPerSource"] = 0
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(fusionrun))
    result = _run(tmp_path, "-f", "run.yaml")
    assert result.returncode == 1
    assert "spec.datasets[0].samplesPerSource" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    result = _run(tmp_path, "-f", "nope.yaml")
    assert result.returncode == 1 and "nope.yaml" in result.stderr
