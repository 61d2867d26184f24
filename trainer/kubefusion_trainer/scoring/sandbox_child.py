"""The sandboxed side of a code run: runs as a plain script (`python -I -S sandbox_child.py RESULT_FD`).

Stdlib only, nothing imported from kubefusion. The job (JSON) arrives on stdin. Until the answer's code
runs, this script is trusted. Two containments (chosen by the driver, code_sandbox.py):
  namespace  (root) inside `unshare`: hides /tmp behind a private size-limited tmpfs, sets rlimits,
             drops to the run's own uid, then runs the answer.
  process    (no root, no capabilities): this process becomes a *launcher*: a child subreaper that forks
             the harness, enforces the wall-clock limit and the per-answer process cap on its own
             descendants (never on other processes of the uid), and kills every descendant before it
             exits. The harness sets rlimits, confines itself with Landlock (files, TCP, signals) where
             the kernel has it and a seccomp filter (sandbox_seccomp.py), then runs the answer.
The harness writes result lines (JSON) to RESULT_FD. The parent decides the verdict from those lines:
  expr   {"i": n, "value": repr-of-a-plain-value} per checked expression; the expected values never
         enter the sandbox, so an answer cannot forge a passing line.
  io     {"i": n, "stdout": "..."} per stdin/stdout case; expected outputs stay with the parent.
  script {"nonce": "..."} after the whole test script ran (weaker: documented in code_sandbox.py).
The launcher's exit status tells the driver how it ended: the harness's own status, or TIMEOUT_STATUS /
PROCESS_LIMIT_STATUS, or 128 + the signal that killed the harness.
"""

import contextlib
import ctypes
import importlib.util
import json
import os
import resource
import signal
import sys
import time

MS_NOSUID, MS_NODEV = 2, 4
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
TIMEOUT_STATUS, PROCESS_LIMIT_STATUS = 124, 125
THREAD_ALLOWANCE = 64  # namespace mode: threads an answer may start besides its processes
_modules = {}  # sibling modules, loaded while this process may still read them
PLAIN_TYPES = (int, float, str, bool, type(None), bytes, complex)
CONTAINERS = (list, tuple, dict, set, frozenset)
HERE = os.path.dirname(os.path.abspath(__file__))
_libc = ctypes.CDLL(None, use_errno=True)


def _load(name):
    """A sibling stdlib-only module (under -I the script's folder is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mount_private_tmp(size_mb):
    for target in ("/tmp", "/dev/shm", "/var/tmp"):
        if os.path.isdir(target):
            options = f"size={size_mb}m,mode=1777".encode()
            if _libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
                raise OSError(ctypes.get_errno(), f"mount tmpfs on {target}")


def _limit(job):
    seconds = int(job["cpu_seconds"])
    memory = int(job["memory_mb"]) * 1024 * 1024
    limits = {
        resource.RLIMIT_CPU: (seconds, seconds + 1),
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_FSIZE: (int(job["file_size_bytes"]),) * 2,
        resource.RLIMIT_NOFILE: (64, 64),
        resource.RLIMIT_CORE: (0, 0),
    }
    if job["containment"] == "namespace":
        # Only with a uid of its own: RLIMIT_NPROC counts every process and thread of the uid. The
        # harness and the answer's threads fit; seccomp enforces the process cap itself when it is 1.
        limits[resource.RLIMIT_NPROC] = (int(job["max_processes"]) + 1 + THREAD_ALLOWANCE,) * 2
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


def _drop_privileges(uid):
    if os.getuid() == 0 and uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        # A credential change clears the parent-death signal (unshare --kill-child's, or ours): set it again.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _preload(job):
    if job.get("seccomp"):
        _modules["seccomp"] = _load("sandbox_seccomp")
    if job.get("landlock"):
        _modules["landlock"] = _load("sandbox_landlock")


def _confine(job):
    """Applied by the process that will run answer code, just before it does: Landlock (process mode),
    then the seccomp filter (both modes, where the architecture has its syscall table)."""
    if job["containment"] == "process":
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if "landlock" in _modules:
            _modules["landlock"].restrict(os.getcwd(), int(job["landlock"]))
    if "seccomp" in _modules:
        _modules["seccomp"].install(no_fork=int(job["max_processes"]) <= 1)


def _plain(value, depth=0):
    """Only exact builtin values cross back; an answer's own classes (custom __eq__/__repr__) do not."""
    kind = type(value)
    if depth > 50:
        raise ValueError("value nested too deep")
    if kind in PLAIN_TYPES:
        return value
    if kind in (list, tuple, set, frozenset):
        items = [_plain(v, depth + 1) for v in value]
        return kind(items) if kind is not list else items
    if kind is dict:
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"returned a {kind.__name__}, not a plain value")


def main():
    result_fd = int(sys.argv[1])
    job = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    _preload(job)
    if job["containment"] == "process":
        sys.exit(_launch(job, result_fd))
    if job.get("private_tmp"):
        _mount_private_tmp(job["tmp_size_mb"])
        workdir = "/tmp/work"
        os.makedirs(workdir, exist_ok=True)
        if job.get("uid") is not None and os.getuid() == 0:
            os.chown(workdir, job["uid"], job["uid"])
    else:
        workdir = job["workdir"]
    os.chdir(workdir)
    _limit(job)
    _drop_privileges(job.get("uid"))
    _harness(job, result_fd)


def _launch(job, result_fd):
    """The launcher: fork the harness, watch its descendants, kill them all, report how it ended."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the answer re-parent to us, not to init
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the driver gone: nothing outlives it
    os.chdir(job["workdir"])
    harness = os.fork()
    if harness == 0:
        status = 1
        try:
            os.setpgid(0, 0)  # a group of its own that one killpg ends at once (seccomp forbids leaving it)
            _limit(job)
            _drop_privileges(job.get("uid"))
            _harness(job, result_fd)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except MemoryError:
            os.write(2, b"MemoryError\n")
        except BaseException:
            import traceback

            traceback.print_exc(limit=2)
        finally:
            os._exit(status)
    os.close(result_fd)
    with contextlib.suppress(OSError):
        os.setpgid(harness, harness)  # also from this side, so there is no window before it runs
    deadline = time.monotonic() + float(job["timeout_seconds"])
    cap = int(job["max_processes"])
    status, outcome = None, None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == harness:
            status = wait_status
            break
        if pid:
            continue  # an orphan of the answer's, reaped; look again
        # The cap first: a fork bomb can starve this loop past the deadline, and it broke the cap first.
        if cap > 1 and len(descendants(os.getpid())) > cap + 1:  # + the harness (io mode)
            outcome = PROCESS_LIMIT_STATUS
            break
        if time.monotonic() > deadline:
            outcome = TIMEOUT_STATUS
            break
        time.sleep(0.002)
    with contextlib.suppress(OSError):
        os.killpg(harness, signal.SIGKILL)  # the kernel kills the whole group in one pass: no fork race
    kill_descendants(os.getpid())  # anything that left the group (possible only without seccomp)
    if outcome is not None:
        return outcome
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def descendants(root):
    """Every live descendant of `root`, from /proc/<pid>/task/<tid>/children (no full /proc scan)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def kill_descendants(root):
    """SIGKILL the whole tree until nothing is left: the subreaper inherits any orphan, so none escapes."""
    while True:
        alive = descendants(root)
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.001)
    try:
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass


def _harness(job, result_fd):
    # Held before the answer runs, so rebinding os.write or json.dumps cannot change what is reported.
    write, as_bool, dumps = os.write, bool, json.dumps

    def emit(record):
        write(result_fd, (dumps(record) + "\n").encode())

    mode = job["mode"]
    code = compile(job["code"], "solution.py", "exec")
    if mode == "io":
        _run_io(job, code, emit, result_fd)
        return
    _confine(job)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    exec(code, namespace)
    if mode == "expr":
        for i, (source, truthy) in enumerate(zip(job["expressions"], job["truthy"], strict=True)):
            try:
                value = eval(compile(source, f"test-{i}", "eval"), namespace)
                value = as_bool(value) if truthy else value
                emit({"i": i, "value": repr(_plain(value))})
            except BaseException as exc:  # a failing test is a result, not a crash
                emit({"i": i, "error": type(exc).__name__[:60]})
    else:
        exec(compile(job["script"], "tests.py", "exec"), namespace)
        emit({"nonce": job["nonce"]})


def _run_io(job, code, emit, result_fd):
    """Each stdin/stdout case in a fresh forked process (a fresh module state per case)."""
    for i, case_input in enumerate(job["inputs"]):
        # Both files opened here and read back through our own descriptor: the answer may rename or
        # replace the paths, but not what we read.
        fd_in = os.open(f".case-{i}.in", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.write(fd_in, case_input.encode())
        os.lseek(fd_in, 0, os.SEEK_SET)
        fd_out = os.open(f".case-{i}.out", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        pid = os.fork()
        if pid == 0:
            os.dup2(fd_in, 0)
            os.dup2(fd_out, 1)
            for fd in (fd_in, fd_out, result_fd):
                os.close(fd)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            try:
                _confine(job)
                exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
                sys.stdout.flush()
            except SystemExit as exc:
                sys.stdout.flush()
                os._exit(exc.code if isinstance(exc.code, int) else 1)
            except MemoryError:
                os._exit(3)
            except BaseException:
                import traceback

                traceback.print_exc(limit=2)
                os._exit(1)
            os._exit(0)
        os.close(fd_in)
        _, status = os.waitpid(pid, 0)
        code_or_signal = os.waitstatus_to_exitcode(status)
        if code_or_signal != 0:
            os.close(fd_out)
            emit({"i": i, "error": "MemoryError" if code_or_signal == 3 else f"exit status {code_or_signal}"})
            continue
        os.lseek(fd_out, 0, os.SEEK_SET)
        data = os.read(fd_out, int(job["output_bytes"]))
        os.close(fd_out)
        emit({"i": i, "stdout": data.decode("utf-8", "replace")})


if __name__ == "__main__":
    main()
