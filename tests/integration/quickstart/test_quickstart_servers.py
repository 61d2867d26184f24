"""Local model servers: a real `transformers serve` comes up, answers, and is stopped; a broken one fails fast."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from conftest import subprocess_env
from kubefusion_operator.local.servers import ServerError, choose_backend, server_command, start_server

pytestmark = pytest.mark.integration


def test_backend_is_vllm_only_with_vllm_a_gpu_and_gpus_requested() -> None:
    assert choose_backend(1, vllm_installed=True, has_gpu=True) == "vllm"
    assert choose_backend(0, vllm_installed=True, has_gpu=True) == "transformers"
    assert choose_backend(1, vllm_installed=False, has_gpu=True) == "transformers"
    assert choose_backend(1, vllm_installed=True, has_gpu=False) == "transformers"
    vllm = server_command("vllm", "/m", 8000, gpus=2)
    assert vllm[vllm.index("--served-model-name") + 1] == "/m" and "--tensor-parallel-size" in vllm
    cpu = server_command("transformers", "/m", 8000)
    assert cpu[cpu.index("serve") + 1] == "/m" and cpu[cpu.index("--device") + 1] == "cpu"


@pytest.mark.slow
def test_transformers_server_serves_the_model_by_its_path_then_stops(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_world["model"])
    server = start_server("tiny", model, tmp_path / "logs", deadline_s=180, env=subprocess_env())
    try:
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions",
            data=json.dumps(
                {
                    "model": model,
                    "messages": [{"role": "user", "content": "What is 1 + 2?"}],
                    "max_tokens": 4,
                    "temperature": 1.0,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 4
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(server.health_url, timeout=2)


def test_a_server_that_cannot_load_its_model_fails_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerError) as failure:
        server = start_server(
            "broken", str(tmp_path / "no-such-model"), tmp_path / "logs", deadline_s=120, env=subprocess_env()
        )
        server.stop()
    assert "server for broken" in str(failure.value)
    assert (tmp_path / "logs" / "server-broken.log").exists()
