"""The local commands ask PyTorch for the AVX2 kernels, so a seed builds the same world on any x86 CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kubefusion_operator import cli
from kubefusion_operator.local import cpu_kernels
from kubefusion_operator.local.cpu_kernels import VARIABLE, cpu_flags, pin_cpu_kernels


def test_a_cpu_with_avx2_gets_the_avx2_kernels() -> None:
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, {"sse2", "avx2", "avx512f"}) == "avx2"
    assert env == {VARIABLE: "avx2"}


def test_the_users_choice_is_kept() -> None:
    env = {VARIABLE: "avx512"}
    assert pin_cpu_kernels(env, {"avx2", "avx512f"}) == "avx512"
    assert env == {VARIABLE: "avx512"}


def test_a_cpu_without_avx2_keeps_pytorchs_choice() -> None:
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, {"sse2", "neon"}) is None
    assert env == {}


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2"}
    assert cpu_flags(tmp_path / "missing") == set()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(tmp_path / "arm") == set()


@pytest.mark.parametrize(("command", "kernels"), [("demo", "avx2"), ("run", "avx2"), ("status", None)])
def test_demo_and_run_pin_the_kernels_before_their_module_loads(
    monkeypatch: pytest.MonkeyPatch, command: str, kernels: str | None
) -> None:
    seen: list[str | None] = []

    def main(argv: list[str]) -> int:
        seen.append(os.environ.get(VARIABLE))
        return 0

    monkeypatch.setitem(sys.modules, "fake_local_command", types.SimpleNamespace(main=main))
    monkeypatch.setitem(cli.DELEGATED, command, ("fake_local_command", "test"))
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: {"avx2"})
    assert cli.main([command]) == 0
    assert seen == [kernels]


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="this CPU has no AVX2")
def test_pytorch_uses_the_pinned_kernels() -> None:
    code = (
        "import os\n"
        "from kubefusion_operator.local.cpu_kernels import cpu_flags, pin_cpu_kernels\n"
        "pin_cpu_kernels(os.environ, cpu_flags())\n"
        "import torch\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "AVX2"
