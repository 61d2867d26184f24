"""The hostile corpus: answers that must fail, breakouts that must not work, honest answers that must pass.

No pytest here: test_sandbox_hostile.py runs it in-process, and sandbox_unprivileged_driver.py runs it as
an unprivileged uid under the system Python.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SECRET = "kf-canary-secret-7f3a"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-5, 5) == 0\nassert add(10, 20) == 30"
HONEST_ADD = "def add(a, b):\n    return a + b\n"
TMP_LIKE = ("/tmp", "/var/tmp", "/dev/shm")

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
    "terminal escapes in the error": (
        "def add(a, b):\n    raise ValueError('\\x1b[2J\\x1b[31mPASSED all tests\\n' + 'A' * 100000)\n"
    ),
}

ATTACKS = [
    "read environment secrets",
    "network access",
    "kill the parent and everyone",
    "delete files outside",
    "write outside the temp dir",
    "escape the process group and linger",
]

HONEST = {
    "expr": (HONEST_ADD, ADD_TESTS),
    "snippets-and-truthiness": (
        HONEST_ADD,
        ["assert add(1, 2) == 3", "assert not add(0, 0)", "assert add(2, 2)"],
    ),
    "script": (HONEST_ADD + "import json\n", "def check(fn):\n    assert fn(1, 2) == 3\ncheck(add)\n"),
    "stdin-stdout": (
        "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n",
        [{"input": "1 2\n", "output": "3\n"}, {"input": "4 5 6", "output": "15"}],
    ),
    "main-guard": (
        "def rev(s):\n    return s[::-1]\nif __name__ == '__main__':\n    print('usage')\n",
        "assert rev('hello') == 'olleh'\nassert rev('') == ''",
    ),
}


@dataclass
class Canaries:
    """A file to protect, a directory to keep clean, a listener, a bystander, names that must not appear."""

    dir: Path
    file: Path
    listener: socket.socket
    bystander: subprocess.Popen
    escape: str
    forbidden_dirs: list[Path]

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    @classmethod
    def create(cls, root: Path, forbidden_dirs: list[Path]) -> Canaries:
        protected = root / "protected"
        protected.mkdir()
        protected.chmod(0o755)
        canary_file = protected / "canary.txt"
        canary_file.write_text("still here")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        escape = f"kf-escape-{os.getpid()}-{time.monotonic_ns()}"
        return cls(protected, canary_file, listener, bystander, escape, forbidden_dirs)

    def close(self) -> None:
        self.bystander.kill()
        self.bystander.wait()
        self.listener.close()

    def problems(self) -> list[str]:
        """What an answer managed to harm (empty: nothing)."""
        found = []
        if not self.file.exists() or self.file.read_text() != "still here":
            found.append("canary file changed or deleted")
        for path in [self.dir / "planted.txt", self.dir / "late.txt"] + [
            folder / self.escape for folder in self.forbidden_dirs
        ]:
            if path.exists():
                found.append(f"{path} was written")
        if self.bystander.poll() is not None:
            found.append("a bystander process was killed")
        try:
            self.listener.accept()[0].close()
            found.append("someone connected to the listener")
        except BlockingIOError:
            pass
        return found


def attack(name: str, c: Canaries, driver_pid: int) -> str:
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
            f"    socket.create_connection(('127.0.0.1', {c.port}), timeout=1).close()\n    ok = True\n"
            "except OSError:\n    pass\n"
            "def add(a, b):\n    return a + b if ok else -1\n"
        ),
        "kill the parent and everyone": (
            "import os, signal\nfor pid in [os.getppid(), 1] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            f"for pid in ({driver_pid}, {c.bystander.pid}, -1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        ),
        "delete files outside": (
            "import os, shutil\ndeleted = 0\n"
            f"for action in (lambda: os.remove('{c.file}'), lambda: shutil.rmtree('{c.dir}')):\n"
            "    try:\n        action()\n        deleted += 1\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if deleted else -1\n"
        ),
        "write outside the temp dir": (
            # With a private tmpfs (namespace containment) /tmp, /var/tmp and /dev/shm writes stay inside
            # the sandbox, so they are tried but not counted; the canaries check none reached the host.
            "import os\nwritten = 0\n"
            f"for path in {[str(f / c.escape) for f in c.forbidden_dirs if str(f) in TMP_LIKE]!r}:\n"
            "    try:\n        open(path, 'w').write('pwned')\n    except OSError:\n        pass\n"
            f"for path in {[str(c.dir / 'planted.txt')] + [str(f / c.escape) for f in c.forbidden_dirs if str(f) not in TMP_LIKE]!r}:\n"
            "    try:\n        open(path, 'w').write('pwned')\n        written += 1\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return a + b if written else -1\n"
        ),
        "escape the process group and linger": (
            "import os, time\ntry:\n    child = os.fork()\nexcept OSError:\n    child = 1\n"
            "if child == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        time.sleep(3)\n        open('{c.dir}/late.txt', 'w').write('late')\n    os._exit(0)\n"
            "os._exit(0)\n"
        ),
    }[name]


FORGED_NONCE = (
    "import os, secrets\nfor fd in range(3, 64):\n    try:\n"
    '        os.write(fd, (\'{"nonce": "%s"}\\n\' % secrets.token_hex(16)).encode())\n'
    "    except OSError:\n        pass\nos._exit(0)\n"
)
NONCE_SCRIPT = "def check(fn):\n    assert fn(1, 2) == 3\ncheck(add)\n"
