"""prepare fails at once, naming the PVC, its uid/gid and the fix, when it cannot write the run folder.

The folder is made read-only for the stage process the way a root:root 0755 NFS export is for a pod:
owned by root, mode 0755, and the stage runs as uid/gid 65532 (when the tests run as root: a forked
child drops to that user, as the interpreter itself may not be readable by it), or mode 0555 for the
test's own user otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubefusion_trainer.stages import prepare

STAGE_UID = 65532


def run_in_child(fn: Callable[[], int], uid: int | None) -> tuple[int, str]:
    """fn() in a forked child (as uid/gid `uid` when given, no supplementary groups): (exit code, stderr)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read)
            sys.stderr = open(write, "w", encoding="utf-8")  # noqa: SIM115 (flushed before _exit)
            os.environ["KUBEFUSION_STORAGE_PVC"] = "runs-pvc"
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read, encoding="utf-8", errors="replace") as handle:
        err = handle.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture()
def world_readable_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="kf-readonly-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in base.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)


def test_prepare_names_the_pvc_the_ids_and_the_fix_on_a_read_only_run_folder(
    world_readable_dir: Path,
) -> None:
    store = world_readable_dir / "store"
    store.mkdir(mode=0o755)
    data = world_readable_dir / "addition.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    config = world_readable_dir / "run.json"
    spec = {
        "target": {"model": "t"},
        "sources": [{"name": "a", "model": "m"}],
        "datasets": [
            {"name": "addition", "location": str(data), "domain": "math", "fields": {"answer": "answer"}}
        ],
        "scoring": {"rewardModel": {"model": "r"}},
    }
    config.write_text(json.dumps({"name": "ro", "storageRoot": str(store), "spec": spec}))
    for path in (data, config):
        path.chmod(0o644)
    as_root = os.geteuid() == 0
    if not as_root:
        store.chmod(0o555)
    code, message = run_in_child(
        lambda: prepare.main(["--config", str(config)]), STAGE_UID if as_root else None
    )
    assert code == 1, message
    uid, gid = (STAGE_UID, STAGE_UID) if as_root else (os.getuid(), os.getgid())
    assert f"the run folder {store} on PersistentVolumeClaim 'runs-pvc' (spec.storage.pvc)" in message
    assert f"not writable by uid {uid}, gid {gid}" in message and "Permission denied" in message
    assert "spec.podSecurity.fsGroup" in message and f"chgrp {gid}" in message and "chmod 2775" in message
    assert not (store / "state").exists() and not (store / "prepared").exists()  # nothing half-written
