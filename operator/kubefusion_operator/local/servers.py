"""OpenAI-compatible model servers on this machine: one process per model, health-polled, stopped on demand.

vLLM when it is installed and a GPU is present (and the source asks for GPUs), otherwise kubefusion's
seeded CPU server (kubefusion_trainer.seeded_server: per-request seeds honoured, so a local run samples
the same answers every time; `transformers serve` shares one generator between concurrent requests).
`transformers serve` stays available as backend "transformers". Servers bind 127.0.0.1 on a free port.
The model name in requests equals the served path, so the runner serves the exact string it puts in the
run config.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

Backend = Literal["vllm", "seeded", "transformers"]

_TRANSFORMERS_CLI = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


class ServerError(RuntimeError):
    """A server did not come up (it exited, or missed its deadline)."""


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: be killed when the runner dies, even by SIGKILL (Linux). SIGKILL, not SIGTERM:
    a server may linger in a graceful shutdown, and every stage is safe to kill (atomic writes, resume)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_backend(gpus: int, vllm_installed: bool | None = None, has_gpu: bool | None = None) -> Backend:
    """vLLM only where it can run: installed, a GPU present, and the source asked for GPUs; else the seeded
    CPU server."""
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    if gpus > 0 and vllm_installed and (gpu_available() if has_gpu is None else has_gpu):
        return "vllm"
    return "seeded"


def server_command(
    backend: Backend,
    model: str,
    port: int,
    host: str = "127.0.0.1",
    gpus: int = 0,
    extra_args: list[str] | None = None,
) -> list[str]:
    if backend == "vllm":
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            model,
            "--host",
            host,
            "--port",
            str(port),
        ]
        if gpus > 1:
            command += ["--tensor-parallel-size", str(gpus)]
        return command + list(extra_args or [])
    if backend == "seeded":
        command = [sys.executable, "-m", "kubefusion_trainer.seeded_server", model, "--host", host]
        return [*command, "--port", str(port), *(extra_args or [])]
    # Continuous batching: ~10x the throughput of one-request-at-a-time generation for many small requests.
    # A fixed KV cache (32k tokens): left to itself it sizes the cache from the machine's whole memory.
    return [
        sys.executable,
        "-c",
        _TRANSFORMERS_CLI,
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--continuous-batching",
        "--cb-block-size",
        "32",
        "--cb-num-blocks",
        "1024",
    ]


def wait_healthy(
    url: str, deadline_s: float, alive: Callable[[], bool] = lambda: True, interval_s: float = 0.5
) -> None:
    """Poll GET url until it answers 200; raise ServerError when `alive()` turns false or time runs out."""
    end = time.monotonic() + deadline_s
    last_error = "no answer yet"
    while time.monotonic() < end:
        if not alive():
            raise ServerError(f"{url}: the server exited before it became healthy")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last_error = str(exc)
        time.sleep(interval_s)
    raise ServerError(f"{url}: not healthy after {deadline_s:.0f}s ({last_error})")


@dataclass
class ModelServer:
    """One running server. `base_url` is what goes into RunConfig.endpoints."""

    name: str
    model: str
    port: int
    backend: Backend
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL after `grace_s`."""
        if self.alive():
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None


def _signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def start_server(
    name: str,
    model: str,
    log_dir: Path,
    gpus: int = 0,
    extra_args: list[str] | None = None,
    deadline_s: float = 300.0,
    env: dict[str, str] | None = None,
    backend: Backend | None = None,
    pass_fds: tuple[int, ...] = (),
) -> ModelServer:
    """Start a server for `model` and return once /health answers; the log goes to log_dir/<name>.log."""
    backend = backend or choose_backend(gpus)
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by ModelServer.stop
    process = subprocess.Popen(
        server_command(backend, model, port, gpus=gpus, extra_args=extra_args),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own group: stop() reaches its children too
        preexec_fn=die_with_parent,
        pass_fds=pass_fds,
    )
    server = ModelServer(name, model, port, backend, process, log_path, log)
    try:
        wait_healthy(server.health_url, deadline_s, server.alive)
    except BaseException as exc:
        server.stop()
        if isinstance(exc, ServerError):
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise ServerError(
                f"server for {name} ({model}): {exc}\n--- {log_path} (tail) ---\n{tail}"
            ) from None
        raise
    return server
