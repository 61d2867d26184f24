"""The sampler against a real `transformers serve` on the tiny model: exactly N, and exactly once across a SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import subprocess_env
from kubefusion_trainer.config import RunConfig
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.shards import chunk_files, iter_folder, read_jsonl
from kubefusion_trainer.stages import prepare, sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_model(
    tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(base URL, model path) of a `transformers serve` subprocess on a free port."""
    port = free_port()
    model = str(tiny_world["model"])
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not become healthy (see {log.name})")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def make_run(root: Path, url: str, model: str, prompts: int, n: int) -> tuple[RunConfig, Path]:
    data = root / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(prompts)
        )
    )
    run = RunConfig.model_validate(
        {
            "name": "it",
            "storageRoot": str(root / "store"),
            "endpoints": {"tiny": url},
            "spec": {
                "target": {"model": model},
                "sources": [
                    {
                        "name": "tiny",
                        "model": model,
                        "sampling": {"temperature": 1.0, "topP": 1.0, "maxTokens": 12, "seed": 0},
                    }
                ],
                "datasets": [
                    {
                        "name": "add",
                        "location": str(data),
                        "domain": "math",
                        "fields": {"answer": "answer"},
                        "samplesPerSource": n,
                        "sftFraction": 0.5,
                    }
                ],
                "scoring": {"rewardModel": {"model": model}},
            },
        }
    )
    config = root / "run.json"
    config.write_text(run.model_dump_json(by_alias=True))
    return run, config


def test_real_server_gives_exactly_n_answers_per_prompt(
    tmp_path: Path, served_model: tuple[str, str]
) -> None:
    run, config = make_run(tmp_path, *served_model, prompts=4, n=3)
    prepare.run_prepare(run)
    assert sample.main(["--config", str(config)]) == 0
    records = list(iter_folder(RunLayout(run.storage_root).samples_dir("sources", "tiny", "add")))
    assert Counter(r["prompt_id"] for r in records) == dict.fromkeys(
        (p["prompt_id"] for p in read_jsonl(RunLayout(run.storage_root).prompts_file("add"))), 3
    )
    assert all(isinstance(r["answer"], str) and r["finish_reason"] in ("stop", "length") for r in records)
    assert all(0 < r["usage"]["completion_tokens"] <= 12 and r["usage"]["prompt_tokens"] > 0 for r in records)


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, served_model: tuple[str, str]
) -> None:
    run, config = make_run(tmp_path, *served_model, prompts=14, n=2)
    prepare.run_prepare(run)
    folder = RunLayout(run.storage_root).samples_dir("sources", "tiny", "add")
    command = [
        sys.executable,
        "-m",
        "kubefusion_operator",
        "stage",
        "sample",
        "--config",
        str(config),
        "--chunk-prompts",
        "1",
        "--max-in-flight",
        "4",
    ]
    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(chunk_files(folder)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert first.returncode == -signal.SIGKILL, "the sampler finished before it could be killed"
    before = {
        (r["prompt_id"], r["sample_index"]): r["answer"] for c in chunk_files(folder) for r in read_jsonl(c)
    }
    assert before, "nothing was committed before the kill"

    second = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    skipped = re.search(r"\((\d+) already done\)", second.stdout)
    assert skipped and int(skipped.group(1)) >= 2, second.stdout  # the committed prompts were not asked again
    records = list(iter_folder(folder))
    keys = [(r["prompt_id"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)), "a sample was committed twice"
    all_ids = {
        p["prompt_id"]
        for p in read_jsonl(RunLayout(run.storage_root).prompts_file("add"))
        if p["split"] != "eval"
    }
    assert set(keys) == {(pid, i) for pid in all_ids for i in range(2)}
    after = {(r["prompt_id"], r["sample_index"]): r["answer"] for r in records}
    assert all(after[key] == answer for key, answer in before.items()), "committed answers were resampled"
    assert chunk_files(folder) == []
