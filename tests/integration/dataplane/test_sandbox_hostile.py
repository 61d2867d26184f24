"""Hostile code answers against the real sandbox: every one fails, the scorer lives, the machine is unharmed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubefusion_trainer.scoring.code_extract import plan_tests
from kubefusion_trainer.scoring.code_sandbox import CodeSandbox, SandboxLimits, uid_processes

pytestmark = pytest.mark.integration

SECRET = "kf-canary-secret-7f3a"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-5, 5) == 0\nassert add(10, 20) == 30"
HONEST_ADD = "def add(a, b):\n    return a + b\n"
LIMITS = SandboxLimits(timeout_seconds=3.0, memory_mb=256, file_size_mb=4, max_processes=16, tmp_size_mb=16)


@pytest.fixture(scope="module")
def sandbox() -> CodeSandbox:
    return CodeSandbox(LIMITS, concurrency=2)


@pytest.fixture
def canaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A secret in our environment, a file to protect, a directory to keep clean, a listener, a bystander."""
    monkeypatch.setenv("KF_CANARY_SECRET", SECRET)
    protected = tmp_path / "protected"
    protected.mkdir()
    protected.chmod(0o755)
    canary_file = protected / "canary.txt"
    canary_file.write_text("still here")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    escape_name = f"kf-escape-{os.getpid()}-{time.monotonic_ns()}"
    yield {
        "dir": protected,
        "file": canary_file,
        "port": listener.getsockname()[1],
        "listener": listener,
        "bystander": bystander,
        "escape": escape_name,
    }
    bystander.kill()
    bystander.wait()
    listener.close()


# Each answer defines add() that returns the right sum only if its attack worked (or never returns).
HOSTILE = {
    "infinite loop": "while True:\n    pass\n",
    "infinite loop ignoring signals": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n"
    ),
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "memory bomb": "x = bytearray(8 * 1024 ** 3)\ndef add(a, b):\n    return a + b\n",
    "growing memory": "chunks = []\nwhile True:\n    chunks.append(b'x' * 10 ** 7)\n",
    "huge output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "recursion crash": "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
    "fill the disk": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 10 ** 6)\n",
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "import os\nos._exit(0)\n",
    "custom __eq__ always true": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return '3'\n"
        "def add(a, b):\n    return Anything()\n"
    ),
    "monkeypatch the harness": (
        "import builtins, json, os, sys\n"
        'json.dumps = lambda record: \'{"i": %d, "value": "3"}\' % record.get(\'i\', 0)\n'
        "os.write = lambda fd, data: len(data)\n"
        "builtins.AssertionError = type('Never', (Exception,), {})\n"
        "def add(a, b):\n    return None\n"
    ),
    "forge result lines then exit": (
        "import os\nfor fd in range(3, 64):\n    for i in range(3):\n"
        "        for v in ('3', '0', '30', 'True', 'None'):\n"
        '            try:\n                os.write(fd, (\'{"i": %d, "value": "%s"}\\n\' % (i, v)).encode())\n'
        "            except OSError:\n                pass\nos._exit(0)\n"
    ),
}


def attack(name: str, c: dict) -> str:
    """Answers that pass only if they break out (so a pass would prove the sandbox leaked)."""
    return {
        "read environment secrets": (
            "import os, glob\nfound = os.environ.get('KF_CANARY_SECRET', '')\n"
            "for path in glob.glob('/proc/*/environ'):\n    try:\n"
            f"        if b'{SECRET}' in open(path, 'rb').read():\n            found = '{SECRET}'\n"
            "    except OSError:\n        pass\n"
            f"def add(a, b):\n    return a + b if found == '{SECRET}' else -1\n"
        ),
        "network access": (
            "import socket\nok = False\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {c['port']}), timeout=1).close()\n    ok = True\n"
            "except OSError:\n    pass\n"
            "def add(a, b):\n    return a + b if ok else -1\n"
        ),
        "kill the parent and everyone": (
            "import os, signal\nfor pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            f"for pid in ({os.getpid()}, {c['bystander'].pid}):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        ),
        "delete files outside": (
            "import os, shutil\ndeleted = 0\n"
            f"for action in (lambda: os.remove('{c['file']}'), lambda: shutil.rmtree('{c['dir']}')):\n"
            "    try:\n        action()\n        deleted += 1\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if deleted else -1\n"
        ),
        "write outside the temp dir": (
            # /tmp, /var/tmp and /dev/shm are the answer's own private tmpfs: writing there is allowed but
            # must not reach the host's (assert_unharmed); the other paths must refuse the write.
            "import os\nwritten = 0\n"
            f"for path in ('/tmp/{c['escape']}', '/var/tmp/{c['escape']}', '/dev/shm/{c['escape']}'):\n"
            "    try:\n        open(path, 'w').write('pwned')\n    except OSError:\n        pass\n"
            f"for path in ('{c['dir']}/planted.txt', '/etc/{c['escape']}', '/work/{c['escape']}',"
            f" '{Path.home()}/{c['escape']}', '{Path(__file__).parent}/{c['escape']}'):\n"
            "    try:\n        open(path, 'w').write('pwned')\n        written += 1\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if written else -1\n"
        ),
        "escape the process group and linger": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep(30)\n        open('{c['dir']}/late.txt', 'w').write('late')\n    os._exit(0)\n"
            "os._exit(0)\n"
        ),
    }[name]


ATTACKS = [
    "read environment secrets",
    "network access",
    "kill the parent and everyone",
    "delete files outside",
    "write outside the temp dir",
    "escape the process group and linger",
]


def assert_unharmed(c: dict) -> None:
    assert c["file"].read_text() == "still here"
    assert not (c["dir"] / "planted.txt").exists()
    assert not (Path("/tmp") / c["escape"]).exists()
    assert not (Path("/var/tmp") / c["escape"]).exists()
    assert not (Path("/dev/shm") / c["escape"]).exists()
    for folder in (Path("/etc"), Path("/work"), Path.home(), Path(__file__).parent):
        assert not (folder / c["escape"]).exists()
    assert c["bystander"].poll() is None, "a bystander process was killed"
    with pytest.raises(BlockingIOError):
        c["listener"].accept()  # nobody connected


def sandbox_processes(sandbox: CodeSandbox) -> list[int]:
    """Processes still running under the sandbox's uids."""
    return [pid for slot in range(2) for pid in uid_processes(61000 + slot)]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answer_fails_and_harms_nothing(sandbox: CodeSandbox, canaries: dict, name: str) -> None:
    started = time.monotonic()
    verdict = sandbox.run(HOSTILE[name], plan_tests(ADD_TESTS))
    assert not verdict.passed, verdict.reason
    assert time.monotonic() - started < LIMITS.timeout_seconds + 5
    assert_unharmed(canaries)
    assert sandbox_processes(sandbox) == []


@pytest.mark.parametrize("name", ATTACKS)
def test_breakout_attempt_fails_and_harms_nothing(sandbox: CodeSandbox, canaries: dict, name: str) -> None:
    verdict = sandbox.run(attack(name, canaries), plan_tests(ADD_TESTS))
    assert not verdict.passed, verdict.reason
    assert_unharmed(canaries)
    assert sandbox_processes(sandbox) == []


def test_forged_nonce_fails_script_tests(sandbox: CodeSandbox) -> None:
    forger = (
        "import os, secrets\nfor fd in range(3, 64):\n    try:\n"
        '        os.write(fd, (\'{"nonce": "%s"}\\n\' % secrets.token_hex(16)).encode())\n'
        "    except OSError:\n        pass\nos._exit(0)\n"
    )
    script = "def check(fn):\n    assert fn(1, 2) == 3\ncheck(add)\n"
    verdict = sandbox.run(forger, plan_tests(script))
    assert not verdict.passed, verdict.reason


@pytest.mark.parametrize(
    ("code", "tests"),
    [
        (HONEST_ADD, ADD_TESTS),
        (HONEST_ADD, ["assert add(1, 2) == 3", "assert not add(0, 0)", "assert add(2, 2)"]),
        (HONEST_ADD + "import json\n", "def check(fn):\n    assert fn(1, 2) == 3\ncheck(add)\n"),
        (
            "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n",
            [{"input": "1 2\n", "output": "3\n"}, {"input": "4 5 6", "output": "15"}],
        ),
        (
            "def rev(s):\n    return s[::-1]\nif __name__ == '__main__':\n    print('usage')\n",
            "assert rev('hello') == 'olleh'\nassert rev('') == ''",
        ),
    ],
    ids=["expr", "snippets-and-truthiness", "script", "stdin-stdout", "main-guard"],
)
def test_honest_answers_pass(sandbox: CodeSandbox, code: str, tests) -> None:
    verdict = sandbox.run(code, plan_tests(tests))
    assert verdict.passed, verdict.reason


def test_wrong_answers_fail_with_a_reason(sandbox: CodeSandbox) -> None:
    verdict = sandbox.run("def add(a, b):\n    return a - b\n", plan_tests(ADD_TESTS))
    assert not verdict.passed
    assert "test 1/3 failed" in verdict.reason
    io = sandbox.run("print(42)\n", plan_tests([{"input": "", "output": "41"}]))
    assert not io.passed and "stdout" in io.reason


def test_fallback_without_namespaces_still_protects(canaries: dict) -> None:
    """Where namespaces are not permitted: uid, rlimits and the group/uid kill still hold (network does not)."""
    fallback = CodeSandbox(LIMITS, concurrency=2, use_namespaces=False)
    assert "NO network isolation" in fallback.isolation
    for name in (
        "kill the parent and everyone",
        "delete files outside",
        "escape the process group and linger",
    ):
        assert not fallback.run(attack(name, canaries), plan_tests(ADD_TESTS)).passed
    assert not fallback.run(HOSTILE["os._exit(0) before the tests"], plan_tests(ADD_TESTS)).passed
    assert fallback.run(HONEST_ADD, plan_tests(ADD_TESTS)).passed
    assert canaries["file"].read_text() == "still here"
    assert canaries["bystander"].poll() is None
    assert sandbox_processes(fallback) == []
