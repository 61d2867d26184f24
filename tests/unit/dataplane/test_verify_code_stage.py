"""verify-code + score --sandbox-verdicts: the same verdicts as scoring inline, each answer merged exactly once."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dataplane_run_helpers import (
    answer_record,
    prompt,
    read_jsonl,
    write_prompts,
    write_run_config,
    write_shards,
)

from conftest import subprocess_env
from kubefusion_trainer.config import load_run_config
from kubefusion_trainer.layout import RunLayout
from kubefusion_trainer.scoring.code_extract import plan_tests
from kubefusion_trainer.scoring.code_items import INPUTS_FILE, CodeItem, read_inputs, write_inputs
from kubefusion_trainer.scoring.code_sandbox import SandboxLimits
from kubefusion_trainer.stages import score as score_stage
from kubefusion_trainer.stages import verify_code

pytestmark = pytest.mark.slow

ADD = "assert add(1, 2) == 3\nassert add(0, 5) == 5"
IO = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}]
ANSWERS = {
    "add": [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "```python\nimport os\nos._exit(0)\n```",
        "```python\nwhile True:\n    pass\n```",
        "no code here",
        "```python\ndef add(a, b) return a\n```",
        "```python\ndef add(a, b):\n    raise ValueError('\\x1b[31mfake PASS')\n```",
    ],
    "sum": [
        "```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```",
        "```python\nprint(5)\n```",
        "```python\nx = bytearray(8 * 1024 ** 3)\n```",
    ],
}


@pytest.fixture
def run(tmp_path: Path, tiny_world: dict) -> dict:
    datasets = [{"name": "leet", "location": "leet.jsonl", "domain": "code", "fields": {"tests": "tests"}}]
    config = write_run_config(
        tmp_path,
        datasets,
        reward_model=str(tiny_world["reward"]),
        reward={"batchSize": 8, "maxLength": 128, "gpus": 0},
        codeExecution={"timeoutSeconds": 2, "memoryMb": 256, "sandboxPods": 3},
    )
    layout = RunLayout(tmp_path / "storage")
    prompts = {
        "add": prompt("leet", "code", "write add", "pref", tests=ADD),
        "sum": prompt("leet", "code", "sum stdin", "pref", tests=IO),
    }
    write_prompts(layout, "leet", list(prompts.values()))
    records = [
        answer_record(prompts[name], source, i, text)
        for name, answers in ANSWERS.items()
        for i, text in enumerate(answers)
        for source in ("x", "y")
    ]
    write_shards(layout.samples_dir("sources", "x", "leet"), [r for r in records if r["source"] == "x"], 2)
    write_shards(layout.samples_dir("sources", "y", "leet"), [r for r in records if r["source"] == "y"], 2)
    return {"config": config, "layout": layout, "records": records}


def score(config: Path, *, sandbox_verdicts: bool) -> dict:
    args = argparse.Namespace(
        config=str(config),
        phase="sources",
        shard=(0, 1),
        device="cpu",
        concurrency=2,
        metrics_port=None,
        sandbox_verdicts=sandbox_verdicts,
    )
    return score_stage.run(args)


def verdicts(layout: RunLayout) -> dict[str, tuple[bool | None, str]]:
    rows = [
        row for path in sorted((layout.root / "scores").rglob("shard-*.jsonl")) for row in read_jsonl(path)
    ]
    keys = Counter(f"{r['source']}/{r['prompt_id']}/{r['sample_index']}" for r in rows)
    assert max(keys.values()) == 1, "an answer was scored twice"
    return {key: (r["correct"], r["reason"].split(";")[0]) for key, r in zip(keys, rows, strict=True)}


def test_sandbox_shards_give_the_inline_verdicts_exactly_once(run: dict) -> None:
    layout, config = run["layout"], run["config"]
    inline_summary = score(config, sandbox_verdicts=False)
    inline = verdicts(layout)
    assert len(inline) == len(run["records"])
    assert sum(c for c, _ in inline.values() if c) == 4  # the honest add and stdin answers, from x and y
    assert {r.split(":")[1].strip() for _, r in inline.values()} >= {
        "passed",
        "wrong_answer",
        "crash",
        "timeout",
        "no_code",
        "syntax_error",
        "test_error",
        "memory",
    }
    assert all("\x1b" not in r and "fake" not in r for _, r in inline.values())
    shutil.rmtree(layout.root / "scores")
    (layout.root / "state" / "score-sources.json").unlink()

    # A first attempt dies after shard 0: shard 1 left a temp file, shard 2 nothing.
    spec = load_run_config(config).spec
    inbox = layout.root / "inbox-0"
    outbox = layout.sandbox_verdicts("sources", 0, 3).parent
    verify_code.stage_in(spec, layout, "sources", 0, 3, inbox)
    _limits, items = read_inputs(inbox / INPUTS_FILE)
    assert items and all(i.plan.expected == [] for i in items)
    assert "== 3" not in (inbox / INPUTS_FILE).read_text()  # expected values stay out of the sandbox
    assert verify_code.run_inbox(inbox, outbox, concurrency=2) == len(items)
    half = layout.sandbox_verdicts("sources", 1, 3)
    half.parent.mkdir(parents=True)
    (half.parent / ".verdicts.jsonl.dead.tmp").write_text('{"format": 1')
    with pytest.raises(score_stage.InputError, match="sandbox verdict shards are missing"):
        score(config, sandbox_verdicts=True)

    summary = verify_code.run_local(spec, layout, "sources", concurrency=2)
    assert (summary["shards_skipped"], summary["shards_run"]) == (1, 2)
    assert "process:" in summary["sandbox_isolation"] or "namespace:" in summary["sandbox_isolation"]
    merged = score(config, sandbox_verdicts=True)
    assert verdicts(layout) == inline
    assert merged["sandbox_verdicts_merged"] == summary["code_answers"] == 16
    assert merged["correct"] == inline_summary["correct"]

    # Rerun: everything is there, nothing is done twice.
    again = verify_code.run_local(spec, layout, "sources", concurrency=2)
    assert again["shards_skipped"] == 3 and "shards_run" not in again
    rerun = score(config, sandbox_verdicts=True)
    assert rerun.get("shards_scored", 0) == 0 and verdicts(layout) == inline


def test_a_verdict_for_changed_code_is_refused(run: dict) -> None:
    layout, config = run["layout"], run["config"]
    spec = load_run_config(config).spec
    verify_code.run_local(spec, layout, "sources", concurrency=2)
    shard = layout.samples_dir("sources", "x", "leet") / "shard-00000-of-00002.jsonl"
    rows = read_jsonl(shard)
    rows[0]["answer"] = "```python\ndef add(a, b):\n    return b + a\n```"
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="is for other code or tests"):
        score(config, sandbox_verdicts=True)


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == current and int(entry) not in found:
                    found.add(int(entry))
                    todo.append(int(entry))
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rfind(")") + 2] != "Z":
            alive.add(pid)
    return alive


@pytest.mark.parametrize("containment", ["process", "namespace"])
def test_a_killed_sandbox_pod_leaves_nothing_behind_and_its_rerun_completes(
    tmp_path: Path, containment: str
) -> None:
    """SIGKILL the sandbox driver mid-shard: no verdict file, no answer process outlives it; a rerun finishes."""
    if containment == "namespace" and os.geteuid() != 0:
        pytest.skip("namespace containment needs root")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    outbox.mkdir()
    sleeper = CodeItem(
        "d/s/p/0", "import time\ntime.sleep(120)\n", plan_tests(ADD)
    )  # no CPU: only a kill ends it
    honest = CodeItem("d/s/p/1", "def add(a, b):\n    return a + b\n", plan_tests(ADD))
    write_inputs(inbox / INPUTS_FILE, [sleeper, honest], SandboxLimits(timeout_seconds=60, memory_mb=256))
    env = {**subprocess_env(), "KUBEFUSION_SANDBOX_CONTAINMENT": containment}
    command = [sys.executable, "-m", "kubefusion_trainer.cli", "verify-code", "--inbox", str(inbox)]
    command += ["--outbox", str(outbox), "--concurrency", "2"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline:  # until the sleeper's sandbox is all that runs, for a while
        seen |= _descendants(driver.pid)
        if len(_descendants(driver.pid)) >= 2 and time.monotonic() > deadline - 55:
            break
        time.sleep(0.05)
    assert seen, "no sandbox process started"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 15
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(seen) == set(), [Path(f"/proc/{p}/cmdline").read_bytes() for p in _alive(seen)]
    assert not (outbox / verify_code.VERDICTS_FILE).exists()
    fast = [CodeItem(sleeper.key, "def add(a, b):\n    return b + a\n", sleeper.plan), honest]
    write_inputs(inbox / INPUTS_FILE, fast, SandboxLimits(timeout_seconds=5, memory_mb=256))
    assert verify_code.run_inbox(inbox, outbox, concurrency=2) == 2
    assert len(read_jsonl(outbox / verify_code.VERDICTS_FILE)) == 3  # the header and both answers
