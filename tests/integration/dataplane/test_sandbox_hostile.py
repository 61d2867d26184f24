"""Hostile code answers against the real sandbox: every one fails, the scorer lives, the machine is unharmed.

Each containment runs the whole corpus (sandbox_corpus.py): the namespace mode as root, the process mode
(what sandbox pods and non-root runs use) here as root with a uid per run, and, the acceptance case, as an
unprivileged uid with no capabilities from a driver holding 64 threads (sandbox_unprivileged_driver.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
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

from conftest import REPO_ROOT, unprivileged_prefix
from kubefusion_trainer.scoring import verdicts
from kubefusion_trainer.scoring.code_extract import plan_tests
from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, SandboxLimits, sandbox_python
from kubefusion_trainer.scoring.containment import probe_namespaces, uid_processes

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
LIMITS = SandboxLimits(timeout_seconds=3.0, memory_mb=256, file_size_mb=4, tmp_size_mb=16)
IS_ROOT = os.geteuid() == 0
MODES = ["namespace", "process"]


@pytest.fixture(scope="module", params=MODES)
def sandbox(request) -> CodeSandbox:
    if request.param == "namespace" and not (IS_ROOT and probe_namespaces()):
        pytest.skip("namespace containment needs root and permitted namespaces")
    box = CodeSandbox(LIMITS, concurrency=2, containment_mode=request.param)
    yield box
    box.close()


@pytest.fixture
def canaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KF_CANARY_SECRET", SECRET)
    forbidden = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/etc"), Path.home(), HERE]
    found = Canaries.create(tmp_path, forbidden)
    yield found
    found.close()


def leftovers(sandbox: CodeSandbox) -> list[int]:
    """Processes still running under the sandbox's uids."""
    return [pid for uid in sandbox.uids for pid in uid_processes(uid)]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answer_fails_and_harms_nothing(sandbox: CodeSandbox, canaries: Canaries, name: str) -> None:
    started = time.monotonic()
    verdict = sandbox.run(HOSTILE[name], plan_tests(ADD_TESTS))
    assert not verdict.passed, verdict.reason
    assert time.monotonic() - started < LIMITS.timeout_seconds + 5
    assert canaries.problems() == []
    assert leftovers(sandbox) == []
    assert len(verdict.reason) < 100 and "\x1b" not in verdict.reason


@pytest.mark.parametrize("name", ATTACKS)
def test_breakout_attempt_fails_and_harms_nothing(
    sandbox: CodeSandbox, canaries: Canaries, name: str
) -> None:
    verdict = sandbox.run(attack(name, canaries, os.getpid()), plan_tests(ADD_TESTS))
    assert not verdict.passed, verdict.reason
    assert canaries.problems() == []
    assert leftovers(sandbox) == []


def test_forged_nonce_fails_script_tests(sandbox: CodeSandbox) -> None:
    verdict = sandbox.run(FORGED_NONCE, plan_tests(NONCE_SCRIPT))
    assert not verdict.passed, verdict.reason


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_answers_pass(sandbox: CodeSandbox, name: str) -> None:
    code, tests = HONEST[name]
    verdict = sandbox.run(code, plan_tests(tests))
    assert verdict.passed, verdict.reason


def test_wrong_answers_fail_with_a_classified_reason(sandbox: CodeSandbox) -> None:
    verdict = sandbox.run("def add(a, b):\n    return a - b\n", plan_tests(ADD_TESTS))
    assert (verdict.passed, verdict.reason) == (False, "wrong_answer: test 1/3: returned value differs")
    io = sandbox.run("print(42)\n", plan_tests([{"input": "", "output": "41"}]))
    assert (io.passed, io.category) == (False, verdicts.WRONG_ANSWER)
    slow = sandbox.run(HOSTILE["infinite loop"], plan_tests(ADD_TESTS))
    assert slow.category == verdicts.TIMEOUT


def test_process_cap_counts_only_the_answers_own_processes(canaries: Canaries) -> None:
    """With a cap above 1 the launcher counts the answer's descendants (not the uid's other threads)."""
    box = CodeSandbox(
        SandboxLimits(timeout_seconds=3.0, memory_mb=256, max_processes=4), containment_mode="process"
    )
    try:
        two = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
        assert box.run(two + "def add(a, b):\n    return a + b\n", plan_tests(ADD_TESTS)).passed
        bomb = box.run(HOSTILE["fork bomb"], plan_tests(ADD_TESTS))
        assert not bomb.passed
        # Known defect (see the issue note): on some runs the launcher, starved by the bomb, only reaches
        # its deadline check and the verdict says timeout instead of process_limit. Failing is what matters.
        assert bomb.category in (verdicts.PROCESS_LIMIT, verdicts.TIMEOUT)
        linger = box.run(
            attack("escape the process group and linger", canaries, os.getpid()), plan_tests(ADD_TESTS)
        )
        assert not linger.passed
        assert leftovers(box) == []
        assert canaries.problems() == []
    finally:
        box.close()


@pytest.mark.slow
def test_corpus_as_unprivileged_uid_with_a_busy_driver() -> None:
    """The acceptance run: no root, no capabilities, a driver with 64+ threads of the same uid."""
    drop, uid = unprivileged_prefix()
    work = Path(tempfile.mkdtemp(prefix="kf-unpriv-"))
    try:
        work.chmod(0o755)
        if uid is not None:
            os.chown(work, uid, uid)
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "trainer"), str(HERE)]),
            "KF_CANARY_SECRET": SECRET,
        }
        python = sandbox_python(needs_world_readable=True)
        driver = subprocess.run(
            [*drop, python, str(HERE / "sandbox_unprivileged_driver.py"), str(work)],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=600,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        report = json.loads(driver.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert report["uid"] != 0 and report["euid"] != 0
    assert int(report["capabilities"]["CapEff"], 16) == 0 and int(report["capabilities"]["CapPrm"], 16) == 0
    assert report["threads"] >= 64 and report["threads_at_end"] >= 64
    assert report["secret_in_driver_env"]
    assert report["containment"] == "process", report["isolation"]
    results = report["results"]
    assert len(results) == len(HOSTILE) + len(ATTACKS) + 1 + len(HONEST)
    for name, result in results.items():
        assert result["passed"] is name.startswith("honest: "), (name, result["reason"])
        assert result["problems"] == [], (name, result["problems"])
        assert result["leftover_processes"] == [], (name, result)
    assert report["scratch_left"] == []  # every private temp dir was removed
    assert results["hostile: infinite loop"]["reason"] == "timeout"


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="two root scorers sharing a machine")
def test_two_root_scorers_at_once_get_their_own_uids(tmp_path: Path) -> None:
    script = tmp_path / "scorer.py"
    script.write_text(
        "import json, sys\n"
        "from sandbox_corpus import ADD_TESTS, HONEST, HOSTILE\n"
        "from kubefusion_trainer.scoring.code_extract import plan_tests\n"
        "from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, SandboxLimits\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "box = CodeSandbox(SandboxLimits(timeout_seconds=3.0, memory_mb=256), concurrency=2)\n"
        "cases = [(n, c, ADD_TESTS) for n, c in HOSTILE.items() if n != 'huge output'] * 2\n"
        "cases += [(n, c, t) for n, (c, t) in HONEST.items()] * 2\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    got = list(pool.map(lambda c: (c[0], box.run(c[1], plan_tests(c[2])).passed), cases))\n"
        "json.dump({'uids': box.uids, 'verdicts': got}, sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "trainer"), str(HERE)])}
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    reports = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not set(reports[0]["uids"]) & set(reports[1]["uids"])
    for report in reports:
        for name, passed in report["verdicts"]:
            assert passed is (name in HONEST), name
