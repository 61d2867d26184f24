"""Ctrl-C / SIGTERM on `kubefusion run`: it stops its stage and server, exits 130, and says how to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env
from kubefusion_operator.local.status import runner_active
from kubefusion_trainer.layout import RunLayout

pytestmark = pytest.mark.integration


def test_sigterm_while_sampling_stops_stage_and_server_and_exits_130(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "add.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(40))
    )
    model = str(tiny_world["model"])
    run = {
        "apiVersion": "kubefusion.dev/v1alpha1",
        "kind": "FusionRun",
        "metadata": {"name": "stop"},
        "spec": {
            "target": {"model": model},
            "sources": [
                {"name": "src", "model": model, "serving": {"gpus": 0}, "sampling": {"maxTokens": 4}}
            ],
            "datasets": [
                {
                    "name": "add",
                    "location": str(data),
                    "domain": "math",
                    "fields": {"prompt": "prompt", "answer": "answer"},
                    "samplesPerSource": 2,
                }
            ],
            "scoring": {"rewardModel": {"model": str(tiny_world["reward"]), "gpus": 0}},
            "training": {"sft": {"globalBatchSize": 1, "resources": {"gpusPerNode": 0, "zeroStage": 0}}},
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    layout = RunLayout(tmp_path / "runs" / "stop")
    process = subprocess.Popen(
        [sys.executable, "-m", "kubefusion_operator", "run", "-f", "run.yaml"],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The sample stage's log starts when its process starts: the runner is then waiting on it (the signal
    # interrupts Popen.wait, where clean-up once deadlocked).
    stage_log = layout.logs_dir / "sample-src.log"
    deadline = time.monotonic() + 180
    while not stage_log.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sample stage never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted; run the same command to resume" in err
    assert "[1/5] prepare: done" in out and "[2/5] sample src: running" in out
    # No stage or server process is left holding the run (members of the server's process group may
    # take a moment to finish exiting after its leader).
    deadline = time.monotonic() + 30
    while runner_active(layout):
        assert time.monotonic() < deadline, "a child of the interrupted run still holds the run's lock"
        time.sleep(0.1)
    assert layout.stage_record("prepare").exists()
    assert not layout.stage_record("sample-sources-src").exists()
