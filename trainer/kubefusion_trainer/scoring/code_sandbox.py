"""Run an untrusted code answer against its tests, and decide the verdict outside the sandbox.

Each run gets, where the platform allows (probed once; we run as root in the stage pods):
  - new network, PID and mount namespaces (`unshare --net --pid --fork --kill-child --mount`): no network
    (loopback down), no view of or signals to other processes, and killing the namespace's first process
    kills every process the answer started, even ones that left our process group;
  - a private size-limited tmpfs over /tmp, /dev/shm and /var/tmp as its working directory;
  - its own unprivileged uid (one per concurrent run), so it cannot write or delete files outside, read
    other processes' environment, or signal the scorer; RLIMIT_NPROC bounds fork bombs;
  - rlimits on CPU seconds, address space, file size (which also caps captured output), open files;
  - a clean environment (no inherited secrets), `python -I -S` (stdlib only), its own session, and a
    wall-clock timeout after which the whole process group is killed.
Where namespaces are not permitted the run falls back to rlimits + uid + session + temp dir and says so
(`CodeSandbox.isolation`): there is then no network isolation.

The verdict never trusts the answer's process: the parent compares returned values (expr tests) or stdout
(io tests) with expected values that never enter the sandbox. For free-form test scripts the child
prints a per-run random nonce after the script ran; an answer that exits early, crashes or prints a
fake success line fails. (An answer that deliberately inspects the harness's memory could find that
nonce, which is why test code in `assert EXPR == LITERAL` form is always checked outside instead.)
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubefusion_trainer.scoring.code_extract import TestPlan, outputs_match

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
NAMESPACE_PREFIX = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount"]
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


@dataclass(frozen=True)
class SandboxLimits:
    timeout_seconds: float = 10.0
    """Wall-clock limit per answer (all its tests)."""
    memory_mb: int = 512
    """Address-space limit."""
    file_size_mb: int = 16
    """Largest file the answer may write; also caps captured output."""
    max_processes: int = 32
    """Processes the answer's uid may run at once (only enforced with a uid of its own)."""
    output_bytes: int = 1 << 20
    """Most result/stdout bytes read back per run."""
    tmp_size_mb: int = 64
    """Size of the private /tmp."""


@dataclass(frozen=True)
class CodeVerdict:
    passed: bool
    reason: str


class CodeSandbox:
    """Thread-safe: up to `concurrency` runs at once, each with its own uid."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        python: str | None = None,
        concurrency: int = 8,
        base_uid: int = 61000,
        use_namespaces: bool | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.is_root = os.geteuid() == 0
        self.python = python or sandbox_python(needs_world_readable=self.is_root)
        self.use_namespaces = probe_namespaces() if use_namespaces is None else use_namespaces
        self._uids: queue.Queue[int | None] = queue.Queue()
        for slot in range(concurrency):
            self._uids.put(base_uid + slot if self.is_root else None)
        notes = [
            "namespaces (net, pid, mount) + private /tmp"
            if self.use_namespaces
            else "NO network isolation (namespaces not permitted)"
        ]
        notes.append("own uid" if self.is_root else "same uid as the scorer (not root)")
        self.isolation = ", ".join(notes)
        if not self.use_namespaces or not self.is_root:
            log.warning("code sandbox runs with reduced isolation: %s", self.isolation)

    def run(self, code: str, plan: TestPlan) -> CodeVerdict:
        uid = self._uids.get()
        try:
            return self._run(code, plan, uid)
        finally:
            self._uids.put(uid)

    def _run(self, code: str, plan: TestPlan, uid: int | None) -> CodeVerdict:
        limits = self.limits
        nonce = secrets.token_hex(16)
        home = Path(tempfile.mkdtemp(prefix="kf-sandbox-"))
        try:
            home.chmod(0o711)  # the answer may enter its workdir but not list or read our files here
            workdir = home / "work"
            workdir.mkdir()
            if uid is not None:
                os.chown(workdir, uid, uid)
            workdir.chmod(0o700)
            job = {
                "code": code,
                "mode": plan.mode,
                "expressions": plan.expressions,
                "truthy": plan.truthy,
                "inputs": plan.inputs,
                "script": plan.script if plan.mode == "script" else "",
                "nonce": nonce if plan.mode == "script" else "",
                "cpu_seconds": math.ceil(limits.timeout_seconds) + 1,
                "memory_mb": limits.memory_mb,
                "file_size_bytes": limits.file_size_mb * 1024 * 1024,
                "max_processes": limits.max_processes,
                "output_bytes": limits.output_bytes,
                "tmp_size_mb": limits.tmp_size_mb,
                "uid": uid,
                "private_tmp": self.use_namespaces,
                "workdir": str(workdir),
            }
            with (
                open(home / "result", "w+b") as result,
                open(home / "stderr", "w+b") as stderr,
            ):
                timed_out, status = self._spawn(job, result.fileno(), stderr, uid)
                result.seek(0)
                lines = result.read(limits.output_bytes).decode("utf-8", "replace").splitlines()
                stderr.seek(0)
                err_tail = stderr.read(limits.output_bytes)[-300:].decode("utf-8", "replace").strip()
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if timed_out:
            return CodeVerdict(False, f"timeout after {limits.timeout_seconds:g}s")
        return judge(plan, lines, nonce, status, err_tail)

    def _spawn(self, job: dict, result_fd: int, stderr, uid: int | None) -> tuple[bool, int]:
        command = [self.python, "-I", "-S", str(CHILD_SCRIPT), str(result_fd)]
        if self.use_namespaces:
            command = NAMESPACE_PREFIX + command
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=stderr,
            stderr=stderr,
            pass_fds=(result_fd,),
            start_new_session=True,
            env=dict(CLEAN_ENV),
            cwd="/",
        )
        timed_out = False
        try:
            proc.communicate(json.dumps(job).encode(), timeout=self.limits.timeout_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if uid is not None:
                _reap_uid(uid)  # processes that left our group, or a dying namespace's stragglers
        return timed_out, proc.returncode


def judge(plan: TestPlan, lines: list[str], nonce: str, status: int, err_tail: str) -> CodeVerdict:
    """The verdict from the child's result lines; pure, so forged or garbled lines are testable."""
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    crash = f" (exit status {status}{': ' + err_tail if err_tail else ''})"
    if plan.mode == "script":
        if any(r.get("nonce") == nonce for r in records):
            return CodeVerdict(True, "passed the test script")
        return CodeVerdict(False, "test script did not complete" + crash)
    by_case: dict[int, list[dict]] = {}
    for record in records:
        if isinstance(record.get("i"), int):
            by_case.setdefault(record["i"], []).append(record)
    for i, expected in enumerate(plan.expected):
        found = by_case.get(i)
        if not found:
            return CodeVerdict(False, f"test {i + 1}/{plan.count} did not run" + crash)
        for record in found:  # a forged extra line must not outvote the real one
            problem = _case_problem(plan.mode, record, expected)
            if problem:
                return CodeVerdict(False, f"test {i + 1}/{plan.count} failed: {problem}"[:400])
    return CodeVerdict(True, f"passed {plan.count}/{plan.count} tests")


def _case_problem(mode: str, record: dict, expected: object) -> str | None:
    if "error" in record:
        return str(record["error"])
    if mode == "io":
        actual = record.get("stdout")
        if not isinstance(actual, str) or not outputs_match(actual, str(expected)):
            return f"stdout {str(actual)[:80]!r} != expected"
        return None
    try:
        value = ast.literal_eval(record.get("value", ""))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return "returned value is not a plain value"
    if value != expected:
        return f"got {str(record.get('value'))[:80]}"
    return None


def probe_namespaces() -> bool:
    """Whether this machine lets us create net/pid/mount namespaces and mount a tmpfs in them."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            [*NAMESPACE_PREFIX, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def sandbox_python(needs_world_readable: bool) -> str:
    """An interpreter whose standard library the sandbox's unprivileged uid can read.

    Ours may live under a private home (e.g. pyenv in /root); then a system python3 is used instead.
    """
    candidates = [sys.executable, *(shutil.which(name, path=CLEAN_ENV["PATH"]) for name in ("python3",))]
    for candidate in filter(None, candidates):
        if not needs_world_readable:
            return candidate
        try:
            found = subprocess.run(
                [candidate, "-I", "-S", "-c", "import os; print(os.__file__)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if _world_readable(Path(found)) and _world_readable(Path(os.path.realpath(candidate))):
            return candidate
    log.warning("no interpreter with a world-readable stdlib; sandboxed answers may fail to import")
    return sys.executable


def _world_readable(path: Path) -> bool:
    for parent in path.parents:
        if not parent.stat().st_mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o004)


def uid_processes(uid: int) -> list[int]:
    """Live processes whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            found.append(int(entry))
    return found


def _reap_uid(uid: int, deadline_seconds: float = 10.0) -> None:
    """Kill every process of the run's uid and wait until none is left, so the uid is clean for reuse."""
    deadline = time.monotonic() + deadline_seconds
    while uid_processes(uid):
        if time.monotonic() > deadline:
            log.warning("sandbox uid %d still has processes after %.0fs", uid, deadline_seconds)
            return
        _kill_uid(uid)
        time.sleep(0.01)


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
