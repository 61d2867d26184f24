"""What the code sandbox's driver needs from the operating system: probes, its own hardening, uids, processes.

Two containments (docs/dataplane-score.md, "Threat model"):
  namespace  as root: net/pid/mount namespaces, a private tmpfs, a uid of its own per concurrent run.
  process    without root or capabilities (sandbox pods, non-root local runs): a launcher that is a child
             subreaper per answer, rlimits, Landlock (files, TCP, signals) where the kernel has it, a
             seccomp filter, a scratch directory, and a driver that other processes of its uid cannot read.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from kubefusion_trainer.scoring import sandbox_landlock, sandbox_seccomp

PR_SET_DUMPABLE = 4
NAMESPACE_PREFIX = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount"]
UID_BLOCK = 64  # uids per scorer process; a scorer runs at most this many answers at once
UID_BASE = 61000
UID_BLOCKS = 64  # 61000..65095: below the usual nobody (65534) and container (65532) uids
LOCK_DIR = Path(os.environ.get("KUBEFUSION_SANDBOX_LOCK_DIR", "/run/lock/kubefusion-sandbox"))


def namespace_prefix() -> list[str]:
    """unshare, under `setpriv --pdeathsig KILL` where available: if the scorer dies, unshare dies, and
    --kill-child then ends the answer's whole PID namespace (nothing outlives a killed scorer)."""
    if shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL", *NAMESPACE_PREFIX]
    return list(NAMESPACE_PREFIX)


def probe_namespaces() -> bool:
    """Whether this machine lets us create net/pid/mount namespaces and mount a tmpfs in them."""
    try:
        probe = subprocess.run(
            [*NAMESPACE_PREFIX, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def landlock_abi() -> int:
    """The Landlock ABI this process may use (0: none). A pod's seccomp profile may block it."""
    try:
        return sandbox_landlock.abi()
    except OSError:
        return 0


def seccomp_supported() -> bool:
    return sandbox_seccomp.supported()


def harden_driver() -> None:
    """Make this process non-dumpable: its /proc/<pid>/environ, mem and fds become root-owned, so an answer
    running as the same uid can neither read them nor ptrace us. (Reset by execve; children set their own.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


class UidBlock:
    """A block of sandbox uids owned by this process for its lifetime (an flock; the kernel releases it
    when the process dies), so two scorers on one machine never run answers under the same uid."""

    def __init__(self, size: int, lock_dir: Path = LOCK_DIR) -> None:
        if size > UID_BLOCK:
            raise ValueError(f"at most {UID_BLOCK} concurrent sandbox runs per scorer, not {size}")
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for block in range(UID_BLOCKS):
            handle = open(lock_dir / f"uids-{block}.lock", "w")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle = handle
            self.first = UID_BASE + block * UID_BLOCK
            self.uids = list(range(self.first, self.first + size))
            for uid in self.uids:  # a crashed scorer's leftovers under this block
                reap_uid(uid)
            return
        raise RuntimeError(f"all {UID_BLOCKS} sandbox uid blocks are in use (lock files in {lock_dir})")

    def close(self) -> None:
        self._handle.close()


def scratch_root() -> Path:
    """Where per-answer scratch directories go: $KUBEFUSION_SANDBOX_SCRATCH (a pod's emptyDir) or /tmp."""
    return Path(os.environ.get("KUBEFUSION_SANDBOX_SCRATCH") or tempfile.gettempdir())


def _stat_fields(pid: str) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) from /proc/<pid>/stat (the command name may contain spaces and parens)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def session_members(leader: int) -> list[int]:
    """Live processes in the session or process group that `leader` started."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != leader:
            fields = _stat_fields(entry)
            if fields and leader in fields[1:]:
                found.append(int(entry))
    return found


def kill_session(leader: int, deadline_seconds: float = 5.0) -> int:
    """SIGKILL whatever is left of a launcher's session; how many processes were found."""
    deadline = time.monotonic() + deadline_seconds
    seen: set[int] = set()
    while members := session_members(leader):
        seen.update(members)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return len(seen)


def uid_processes(uid: int) -> list[int]:
    """Live processes whose real uid is `uid`.

    Zombies are not live: they run nothing and no signal removes them. A fork bomb's processes killed after
    the launcher re-parent to init and stay zombies until init reaps them, which on a busy machine can take
    longer than reap_uid's deadline.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        zombie = fields.get("State", "").strip().startswith(("Z", "X"))
        if int(fields.get("Uid", "-1 0").split()[0]) == uid and not zombie:
            found.append(int(entry))
    return found


def reap_uid(uid: int, deadline_seconds: float = 10.0) -> bool:
    """Kill every process of a sandbox uid and wait until none is left; False if some outlived the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while uid_processes(uid):
        if time.monotonic() > deadline:
            return False
        _kill_uid(uid)
        time.sleep(0.01)
    return True


def _kill_uid(uid: int) -> None:
    """kill(-1) from a process running as `uid` reaches exactly that uid's processes."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
