"""Run an untrusted code answer against its tests, and decide the verdict outside the sandbox.

Containment (containment.py; chosen once per CodeSandbox, reported in `isolation`):
  namespace  (root, namespaces permitted) new net/pid/mount namespaces (`unshare --net --pid --fork
             --kill-child --mount`), a private size-limited tmpfs over /tmp, /dev/shm and /var/tmp, its own
             unprivileged uid per concurrent run from a uid block this process holds (two scorers on one
             machine never share uids), RLIMIT_NPROC on that uid, and the seccomp filter below.
  process    (no root or capabilities: sandbox pods, non-root local runs) a launcher per answer in its
             own session that is a child subreaper: it enforces the wall clock and the per-answer process
             cap on its own descendants only (seccomp forbids new processes when the cap is 1), and kills
             every descendant afterwards; Landlock confines files to the scratch dir, refuses TCP and
             scopes signals; seccomp refuses non-unix sockets, signals to other processes, ptrace,
             setsid; the driver is non-dumpable (its environ is unreadable to the same uid).
             As root without namespaces the same, plus the run's own uid.
Both: rlimits on CPU seconds, address space, file size (which also caps captured output), open files;
a clean environment (no inherited secrets), `python -I -S` (stdlib only), a private scratch dir removed
afterwards, and a wall-clock timeout after which the whole process group is killed.

The verdict never trusts the answer's process: `execute` returns an Observation (what the harness
reported: returned values, a digest of each stdout, how the process ended) and `judge` compares it with
expected values that never enter the sandbox. So an Observation may come from another machine (a
sandbox pod, stages/verify_code.py) and be judged here. For free-form test scripts the driver checks a
per-run random nonce printed after the script ran; an answer that exits early, crashes or prints a
fake success line fails. (An answer that deliberately inspects the harness's memory could find that
nonce, which is why test code in `assert EXPR == LITERAL` form is always checked outside instead.)
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubefusion_trainer.scoring import containment, verdicts
from kubefusion_trainer.scoring.code_extract import TestPlan
from kubefusion_trainer.scoring.verdicts import CodeVerdict

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
TIMEOUT_STATUS, PROCESS_LIMIT_STATUS = 124, 125  # sandbox_child.py's launcher
KILL_GRACE_SECONDS = 5.0  # the launcher enforces the timeout; the driver's own backstop comes after
ERROR_NAMES = ("MemoryError", "RecursionError")  # what a crash's stderr may tell us (never stored raw)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_seconds: float = 10.0
    """Wall-clock limit per answer (all its tests)."""
    memory_mb: int = 512
    """Address-space limit."""
    file_size_mb: int = 16
    """Largest file the answer may write; also caps captured output."""
    max_processes: int = 1
    """Processes an answer may run at once, itself included (1: it may start none)."""
    output_bytes: int = 1 << 20
    """Most result/stdout bytes read back per run."""
    tmp_size_mb: int = 64
    """Size of the private /tmp (namespace containment)."""


@dataclass(frozen=True)
class Observation:
    """What a sandbox run reported. JSON-safe; holds no expected values and no raw stdout (digests)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0
    timed_out: bool = False
    script_completed: bool = False  # script mode: this run's nonce came back
    error_name: str = ""  # MemoryError/RecursionError when the crash's stderr says so

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        return cls(
            records=[r for r in data.get("records", []) if isinstance(r, dict)],
            status=int(data.get("status", 0)),
            timed_out=bool(data.get("timed_out", False)),
            script_completed=bool(data.get("script_completed", False)),
            error_name=str(data.get("error_name", "")),
        )


def stdout_digest(text: str) -> str:
    """sha256 of stdout as outputs_match compares it (trailing whitespace per line ignored)."""
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "replace")).hexdigest()


class CodeSandbox:
    """Thread-safe: up to `concurrency` runs at once."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        python: str | None = None,
        concurrency: int = 8,
        containment_mode: str | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.is_root = os.geteuid() == 0
        self.python = python or sandbox_python(needs_world_readable=self.is_root)
        containment_mode = containment_mode or os.environ.get("KUBEFUSION_SANDBOX_CONTAINMENT") or None
        if containment_mode is None:
            containment_mode = "namespace" if self.is_root and containment.probe_namespaces() else "process"
        if containment_mode not in ("namespace", "process"):
            raise ValueError(f"containment must be 'namespace' or 'process', not {containment_mode!r}")
        if containment_mode == "namespace" and not self.is_root:
            raise ValueError("namespace containment needs root; use 'process'")
        self.containment = containment_mode
        self.landlock = containment.landlock_abi() if containment_mode == "process" else 0
        self.seccomp = containment.seccomp_supported()
        self._block = containment.UidBlock(concurrency) if self.is_root else None
        self.uids: list[int] = self._block.uids if self._block else []
        self._slots: queue.Queue[int | None] = queue.Queue()
        for slot in range(concurrency):
            self._slots.put(self.uids[slot] if self.uids else None)
        if containment_mode == "process":
            containment.harden_driver()
        self.isolation = self._describe()
        if containment_mode == "process" and (not self.landlock or not self.seccomp):
            log.warning("code sandbox runs with reduced isolation: %s", self.isolation)

    def _describe(self) -> str:
        if self.containment == "namespace":
            seccomp = ", seccomp" if self.seccomp else ""
            return f"namespace: net/pid/mount namespaces, private /tmp, own uid per run{seccomp}"
        parts = ["process: own session + subreaper launcher, rlimits, scratch dir, non-dumpable driver"]
        parts.append(f"landlock ABI {self.landlock}" if self.landlock else "NO landlock (files not confined)")
        parts.append("seccomp" if self.seccomp else "NO seccomp (network and signals not confined)")
        parts.append("own uid per run" if self.uids else "same uid as the scorer")
        return ", ".join(parts)

    def close(self) -> None:
        if self._block is not None:
            self._block.close()

    def run(self, code: str, plan: TestPlan) -> CodeVerdict:
        return judge(plan, self.execute(code, plan))

    def execute(self, code: str, plan: TestPlan) -> Observation:
        uid = self._slots.get()
        try:
            return self._execute(code, plan, uid)
        finally:
            self._slots.put(uid)

    def _execute(self, code: str, plan: TestPlan, uid: int | None) -> Observation:
        limits = self.limits
        nonce = secrets.token_hex(16)
        home = Path(tempfile.mkdtemp(prefix="kf-sandbox-", dir=containment.scratch_root()))
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
                "timeout_seconds": limits.timeout_seconds,
                "memory_mb": limits.memory_mb,
                "file_size_bytes": limits.file_size_mb * 1024 * 1024,
                "max_processes": limits.max_processes,
                "output_bytes": limits.output_bytes,
                "tmp_size_mb": limits.tmp_size_mb,
                "uid": uid,
                "containment": self.containment,
                "landlock": self.landlock,
                "seccomp": self.seccomp,
                "private_tmp": self.containment == "namespace",
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
                err_tail = stderr.read(limits.output_bytes)[-300:].decode("utf-8", "replace")
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return observe(plan, lines, nonce, status, timed_out, err_tail)

    def _spawn(self, job: dict, result_fd: int, stderr, uid: int | None) -> tuple[bool, int]:
        command = [self.python, "-I", "-S", str(CHILD_SCRIPT), str(result_fd)]
        if self.containment == "namespace":
            command = containment.namespace_prefix() + command
        env = dict(CLEAN_ENV)
        if self.containment == "process":
            env.update(HOME=job["workdir"], TMPDIR=job["workdir"])
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=stderr,
            stderr=stderr,
            pass_fds=(result_fd,),
            start_new_session=True,
            env=env,
            cwd="/",
        )
        backstop = self.limits.timeout_seconds + (KILL_GRACE_SECONDS if self.containment == "process" else 0)
        timed_out = False
        started = time.monotonic()
        try:
            proc.communicate(json.dumps(job).encode(), timeout=backstop)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if self.containment == "process":
                containment.kill_session(proc.pid)  # a backstop: the launcher already killed its tree
            if uid is not None:
                containment.reap_uid(uid)  # processes that left our group, or a dying namespace's stragglers
        if self.containment == "process" and proc.returncode == TIMEOUT_STATUS:
            timed_out = True
        if proc.returncode != 0 and time.monotonic() - started >= self.limits.timeout_seconds:
            # Killed after its time was up, whoever killed it (on a loaded machine the CPU-time rlimit can
            # act before the launcher's clock): that is a timeout, not a crash.
            timed_out = True
        return timed_out, proc.returncode


def observe(
    plan: TestPlan, lines: list[str], nonce: str, status: int, timed_out: bool, err_tail: str
) -> Observation:
    """The harness's result lines made safe to keep: parsed, io stdout replaced by its digest."""
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                if isinstance(record.get("stdout"), str):
                    record = {**record, "stdout": stdout_digest(record["stdout"])}
                records.append(record)
    completed = plan.mode == "script" and any(r.get("nonce") == nonce for r in records)
    if plan.mode == "script":
        records = []  # only the nonce mattered, and it is checked here
    error_name = next((name for name in ERROR_NAMES if name in err_tail), "")
    return Observation(records, status, timed_out, completed, error_name)


def judge(plan: TestPlan, obs: Observation) -> CodeVerdict:
    """The verdict from an observation and the expected values only we know; pure."""
    if plan.mode == "script":
        if obs.script_completed and not obs.timed_out:
            return verdicts.passed(1)
        return _ended(obs, "test script did not complete")
    if obs.timed_out:
        return verdicts.failed(verdicts.TIMEOUT)
    if obs.status == PROCESS_LIMIT_STATUS:
        return verdicts.failed(verdicts.PROCESS_LIMIT)
    by_case: dict[int, list[dict]] = {}
    for record in obs.records:
        if isinstance(record.get("i"), int):
            by_case.setdefault(record["i"], []).append(record)
    for i, expected in enumerate(plan.expected):
        case = f"test {i + 1}/{plan.count}"
        if i not in by_case:
            return _ended(obs, f"{case} did not run")
        for record in by_case[i]:  # a forged extra line must not outvote the real one
            if "error" in record:
                return verdicts.from_error(case, str(record["error"]))
            problem = _case_problem(plan.mode, record, expected)
            if problem:
                return verdicts.failed(verdicts.WRONG_ANSWER, f"{case}: {problem}")
    return verdicts.passed(plan.count)


def _ended(obs: Observation, what: str) -> CodeVerdict:
    """Why a run produced no (complete) result: limits first, then a plain crash."""
    if obs.timed_out:
        return verdicts.failed(verdicts.TIMEOUT)
    if obs.status == PROCESS_LIMIT_STATUS:
        return verdicts.failed(verdicts.PROCESS_LIMIT)
    if obs.error_name == "MemoryError":
        return verdicts.failed(verdicts.MEMORY, what)
    if abs(obs.status) in (signal.SIGXCPU, 128 + signal.SIGXCPU):
        return verdicts.failed(verdicts.TIMEOUT, "CPU time limit")
    why = obs.error_name or f"exit status {obs.status}"
    return verdicts.failed(verdicts.CRASH, f"{what} ({why})")


def _case_problem(mode: str, record: dict, expected: object) -> str | None:
    if mode == "io":
        return None if record.get("stdout") == stdout_digest(str(expected)) else "stdout differs"
    try:
        value = ast.literal_eval(record.get("value", ""))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return "returned value is not a plain value"
    return None if value == expected else "returned value differs"


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
