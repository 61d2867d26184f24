"""Run the hostile corpus as whoever runs this script (an unprivileged uid), from a driver holding 64+ threads.

    setpriv --reuid U --regid U --clear-groups --inh-caps=-all --bounding-set=-all \
        python3 sandbox_unprivileged_driver.py WORKDIR > report.json

Stdlib + kubefusion_trainer.scoring only, so a system Python can run it. test_sandbox_hostile.py reads
the report; everything is measured here, nothing decided.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from sandbox_corpus import (
    ADD_TESTS,
    ATTACKS,
    FORGED_NONCE,
    HONEST,
    HOSTILE,
    NONCE_SCRIPT,
    SECRET,
    Canaries,
    attack,
)

from kubefusion_trainer.scoring.code_extract import plan_tests
from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, SandboxLimits
from kubefusion_trainer.scoring.containment import uid_processes

LIMITS = SandboxLimits(timeout_seconds=3.0, memory_mb=256, file_size_mb=4, tmp_size_mb=16)
DRIVER_THREADS = 64


def capabilities() -> dict[str, str]:
    status = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: line.split()[1] for line in status if line.startswith("Cap")}


def main() -> None:
    work = Path(sys.argv[1])
    stop = threading.Event()
    for _ in range(DRIVER_THREADS):  # like a scorer with torch loaded: many threads of this uid
        threading.Thread(target=stop.wait, daemon=True).start()
    outside = work / "outside"
    outside.mkdir()
    canaries = Canaries.create(work, [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), outside])
    os.environ["KUBEFUSION_SANDBOX_SCRATCH"] = str(work)
    sandbox = CodeSandbox(LIMITS, concurrency=2)
    report: dict = {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "capabilities": capabilities(),
        "threads": len(os.listdir("/proc/self/task")),
        "secret_in_driver_env": os.environ.get("KF_CANARY_SECRET") == SECRET,
        "isolation": sandbox.isolation,
        "containment": sandbox.containment,
        "results": {},
    }
    cases = [(f"hostile: {n}", code, ADD_TESTS) for n, code in HOSTILE.items()]
    cases += [(f"attack: {n}", attack(n, canaries, os.getpid()), ADD_TESTS) for n in ATTACKS]
    cases += [("forged nonce", FORGED_NONCE, NONCE_SCRIPT)]
    cases += [(f"honest: {n}", code, tests) for n, (code, tests) in HONEST.items()]
    try:
        for name, code, tests in cases:
            verdict = sandbox.run(code, plan_tests(tests))
            ours = {os.getpid(), canaries.bystander.pid}
            report["results"][name] = {
                "passed": verdict.passed,
                "reason": verdict.reason,
                "problems": canaries.problems(),
                "leftover_processes": [p for p in uid_processes(os.getuid()) if p not in ours],
            }
        report["threads_at_end"] = len(os.listdir("/proc/self/task"))
        report["scratch_left"] = sorted(p.name for p in work.iterdir() if p.name.startswith("kf-sandbox-"))
    finally:
        canaries.close()
        stop.set()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
