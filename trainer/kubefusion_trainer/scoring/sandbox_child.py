"""The sandboxed side of a code run: runs as a plain script (`python -I sandbox_child.py RESULT_FD`).

Stdlib only, nothing imported from kubefusion. The job (JSON) arrives on stdin. Until the answer's code
runs, this script is trusted: it hides /tmp behind a private size-limited tmpfs (when it has its own
mount namespace), sets rlimits, drops to an unprivileged uid, then runs the answer and the tests and
writes result lines (JSON) to RESULT_FD. The parent decides the verdict from those lines:
  expr   {"i": n, "value": repr-of-a-plain-value} per checked expression; the expected values never
         enter the sandbox, so an answer cannot forge a passing line.
  io     {"i": n, "stdout": "..."} per stdin/stdout case; expected outputs stay with the parent.
  script {"nonce": "..."} after the whole test script ran (weaker: documented in code_sandbox.py).
"""

import ctypes
import json
import os
import resource
import sys

MS_NOSUID, MS_NODEV = 2, 4
PLAIN_TYPES = (int, float, str, bool, type(None), bytes, complex)
CONTAINERS = (list, tuple, dict, set, frozenset)


def _mount_private_tmp(size_mb):
    libc = ctypes.CDLL(None, use_errno=True)
    for target in ("/tmp", "/dev/shm", "/var/tmp"):
        if os.path.isdir(target):
            options = f"size={size_mb}m,mode=1777".encode()
            if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
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
        resource.RLIMIT_NPROC: (int(job["max_processes"]),) * 2,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


def _drop_privileges(uid):
    if os.getuid() == 0 and uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


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
    # Held before the answer runs, so rebinding os.write or json.dumps cannot change what is reported.
    write, as_bool, dumps = os.write, bool, json.dumps

    def emit(record):
        write(result_fd, (dumps(record) + "\n").encode())

    mode = job["mode"]
    code = compile(job["code"], "solution.py", "exec")
    if mode == "io":
        _run_io(job, code, emit, result_fd)
        return
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    exec(code, namespace)
    if mode == "expr":
        for i, (source, truthy) in enumerate(zip(job["expressions"], job["truthy"], strict=True)):
            try:
                value = eval(compile(source, f"test-{i}", "eval"), namespace)
                value = as_bool(value) if truthy else value
                emit({"i": i, "value": repr(_plain(value))})
            except BaseException as exc:  # a failing test is a result, not a crash
                emit({"i": i, "error": f"{type(exc).__name__}: {exc}"[:500]})
    else:
        exec(compile(job["script"], "tests.py", "exec"), namespace)
        emit({"nonce": job["nonce"]})


def _run_io(job, code, emit, result_fd):
    """Each stdin/stdout case in a fresh forked process (a fresh module state per case)."""
    for i, case_input in enumerate(job["inputs"]):
        out_path = os.path.join(os.getcwd(), f".case-{i}.out")
        in_path = os.path.join(os.getcwd(), f".case-{i}.in")
        with open(in_path, "w") as handle:
            handle.write(case_input)
        pid = os.fork()
        if pid == 0:
            fd_in = os.open(in_path, os.O_RDONLY)
            fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd_in, 0)
            os.dup2(fd_out, 1)
            os.close(result_fd)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            try:
                exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
                sys.stdout.flush()
            except SystemExit as exc:
                sys.stdout.flush()
                os._exit(exc.code if isinstance(exc.code, int) else 1)
            except BaseException:
                import traceback

                traceback.print_exc(limit=2)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            emit({"i": i, "error": f"exit status {os.waitstatus_to_exitcode(status)}"})
            continue
        with open(out_path, errors="replace") as handle:
            emit({"i": i, "stdout": handle.read(int(job["output_bytes"]))})


if __name__ == "__main__":
    main()
