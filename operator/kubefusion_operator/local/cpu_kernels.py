"""One set of CPU float kernels for the local commands, so a seed gives the same world on any x86 machine.

PyTorch picks its vectorised kernels by instruction set (AVX2, AVX-512). They round differently, and over
the thousands of steps `demo init` trains, the difference grows into other models: seed 0 built a target
at 41.5% / 21% on an AVX-512 machine and 34.5% / 13.5% with the AVX2 kernels, the same as an AVX2-only
machine. `kubefusion demo init` and `kubefusion run` therefore ask for the AVX2 kernels on every CPU that
has them (the stage and server processes inherit the setting). A value the user set is kept.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

VARIABLE = "ATEN_CPU_CAPABILITY"  # read by PyTorch once, at its first kernel call
KERNELS = "avx2"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags (x86 Linux); empty where there is no such file or line."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def pin_cpu_kernels(env: MutableMapping[str, str], flags: set[str]) -> str | None:
    """Ask for the AVX2 kernels in `env` where the CPU has them; the value now in effect (None: PyTorch's)."""
    if VARIABLE not in env and KERNELS in flags:
        env[VARIABLE] = KERNELS
    return env.get(VARIABLE)
