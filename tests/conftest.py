"""Shared fixtures: tiny local models (nothing is downloaded) and the repository root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# DeepSpeed builds its CPU ops on first use: keep them inside the venv.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m kubefusion_operator ...` subprocesses: this checkout's code first."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny tokenizer, causal LM and reward model on disk: {'tokenizer', 'model', 'reward'} paths."""
    from kubefusion_trainer.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"))


UNPRIVILEGED_TEST_USER = "kf-sandbox-test"


def unprivileged_prefix() -> tuple[list[str], int | None]:
    """A command prefix that runs a program as an unprivileged uid with no capabilities, and that uid.

    As root: a system user made for the tests (useradd) and setpriv; otherwise we already are one.
    """
    import pwd
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return [], None
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_TEST_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                UNPRIVILEGED_TEST_USER,
            ],
            check=True,
        )
        entry = pwd.getpwnam(UNPRIVILEGED_TEST_USER)
    drop = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return [*drop, "--inh-caps=-all", "--bounding-set=-all"], entry.pw_uid
