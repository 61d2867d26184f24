"""Local model servers: the seeded CPU server (and `transformers serve`) come up, answer, and stop; the seeded
one gives the same answers to the same request whatever else is in flight; a broken one fails fast."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import subprocess_env
from kubefusion_operator.local.servers import ServerError, choose_backend, server_command, start_server

pytestmark = pytest.mark.integration


def test_backend_is_vllm_only_with_vllm_a_gpu_and_gpus_requested() -> None:
    assert choose_backend(1, vllm_installed=True, has_gpu=True) == "vllm"
    assert choose_backend(0, vllm_installed=True, has_gpu=True) == "seeded"
    assert choose_backend(1, vllm_installed=False, has_gpu=True) == "seeded"
    assert choose_backend(1, vllm_installed=True, has_gpu=False) == "seeded"
    vllm = server_command("vllm", "/m", 8000, gpus=2)
    assert vllm[vllm.index("--served-model-name") + 1] == "/m" and "--tensor-parallel-size" in vllm
    cpu = server_command("transformers", "/m", 8000)
    assert cpu[cpu.index("serve") + 1] == "/m" and cpu[cpu.index("--device") + 1] == "cpu"
    seeded = server_command("seeded", "/m", 8000)
    assert seeded[seeded.index("kubefusion_trainer.seeded_server") + 1] == "/m"


def _post(base_url: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_seeded_server_same_request_same_answers_whatever_runs_beside_it(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_world["model"])
    server = start_server("tiny", model, tmp_path / "logs", deadline_s=180, env=subprocess_env())
    assert server.backend == "seeded"

    def ask(prompt: str, seed: int | None, n: int = 4) -> list[str]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 6,
            "temperature": 1.0,
            "n": n,
        }
        if seed is not None:
            body["seed"] = seed
        reply = _post(server.base_url, body)
        assert [c["index"] for c in reply["choices"]] == list(range(n))
        assert reply["usage"]["completion_tokens"] <= 6 * n
        return [c["message"]["content"] for c in reply["choices"]]

    try:
        alone = ask("What is 1 + 2?", seed=5)
        # The same request among 16 concurrent others (other prompts, other seeds): the same answers.
        with ThreadPoolExecutor(8) as pool:
            crowd = [pool.submit(ask, f"What is {i} + 7?", i) for i in range(16)]
            again = pool.submit(ask, "What is 1 + 2?", 5)
            assert all(len(f.result()) == 4 for f in crowd)
        assert again.result() == alone
        # Choice j of seed s is choice 0 of seed s + j: how the sampler re-asks for single answers.
        assert [ask("What is 1 + 2?", seed=5 + j, n=1)[0] for j in range(4)] == alone
        # A random-init model at temperature 1: another seed, other answers; no seed, random answers.
        assert ask("What is 1 + 2?", seed=6) != alone
        assert ask("What is 1 + 2?", seed=None) != ask("What is 1 + 2?", seed=None)
        # Bad requests name the field; another model name is not served here.
        for bad, field in (({"n": 0}, "n"), ({"seed": "x"}, "seed"), ({"model": "other"}, "other")):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **bad}
            with pytest.raises(urllib.error.HTTPError) as failure:
                _post(server.base_url, body)
            assert failure.value.code in (400, 404)
            assert field in json.loads(failure.value.read())["error"]["message"]
    finally:
        server.stop()
    assert server.process.poll() is not None


@pytest.mark.slow
def test_transformers_server_serves_the_model_by_its_path_then_stops(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_world["model"])
    server = start_server(
        "tiny", model, tmp_path / "logs", deadline_s=180, env=subprocess_env(), backend="transformers"
    )
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


def test_seeded_server_queues_every_connection_its_clients_open_at_once(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    """With the server frozen (accepting nothing), 64 connections must still complete their handshake in
    the listen backlog; with socketserver's default backlog of 5 most would wait on SYN retransmits."""
    import os
    import signal
    import socket

    server = start_server(
        "tiny", str(tiny_world["model"]), tmp_path / "logs", deadline_s=180, env=subprocess_env()
    )
    sockets: list[socket.socket] = []
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        refused = 0
        for _ in range(64):
            sock = socket.socket()
            sock.settimeout(2.0)
            try:
                sock.connect(("127.0.0.1", server.port))
            except OSError:
                refused += 1
            sockets.append(sock)
        assert refused == 0, f"{refused} of 64 connections did not complete while the server was busy"
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        for sock in sockets:
            sock.close()
        server.stop()
