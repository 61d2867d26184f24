"""uid_processes: what reap_uid waits for and the hostile-sandbox tests call leftovers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kubefusion_trainer.scoring.containment import uid_processes


def state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    raise AssertionError(f"no State line for {pid}")


def wait_for_state(pid: int, wanted: str, deadline_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while state(pid) != wanted:
        assert time.monotonic() < deadline, f"process {pid} never reached state {wanted}"
        time.sleep(0.01)


def test_a_running_process_counts_and_a_zombie_does_not() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        signal.pause()
        os._exit(0)
    try:
        assert pid in uid_processes(os.getuid())
        os.kill(pid, signal.SIGKILL)
        wait_for_state(pid, "Z")  # dead, not yet reaped by its parent (this test)
        assert pid not in uid_processes(os.getuid())
    finally:
        os.kill(pid, signal.SIGKILL)  # a no-op on a zombie
        os.waitpid(pid, 0)
