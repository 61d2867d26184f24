"""Pure parts of code scoring: code extraction, static checks, test plans, and the parent's verdict."""

from __future__ import annotations

import json

import pytest

from kubefusion_trainer.scoring import verdicts
from kubefusion_trainer.scoring.code_extract import (
    TestFormatError,
    extract_code,
    outputs_match,
    plan_tests,
    static_check,
)
from kubefusion_trainer.scoring.code_sandbox import Observation, judge, observe
from kubefusion_trainer.scoring.sandbox_seccomp import ARCHES, RET_ALLOW, build_filter


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (
            "Here:\n```python\ndef f(x):\n    return x + 1\n```\nUsage:\n```python\nf(1)\n```",
            "def f(x):\n    return x + 1\n",
        ),
        ("```py\nprint(1)\n```", "print(1)\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("```js\nconsole.log(1)\n```", None),
        ("def f():\n    return 2\n", "def f():\n    return 2\n"),
        ("I cannot solve this.", None),
    ],
    ids=["longest-python-block", "py-tag", "untagged", "other-language", "bare-code", "prose"],
)
def test_extract_code(answer: str, code: str | None) -> None:
    assert extract_code(answer) == code


def test_static_check() -> None:
    assert static_check("def f():\n    return 1\n") is None
    assert "syntax error" in static_check("def f(:\n")


def test_plan_assert_tests_keep_expected_values_out_of_the_sandbox() -> None:
    plan = plan_tests("assert add(1, 2) == 3\nassert [1] == f()\nassert ok(1)\nassert not ok(0)")
    assert plan.mode == "expr"
    assert plan.expressions == ["add(1, 2)", "f()", "ok(1)", "ok(0)"]
    assert plan.expected == [3, [1], True, False]
    assert plan.truthy == [False, False, True, True]
    assert all("3" not in e for e in plan.expressions[:1])


def test_plan_other_formats() -> None:
    assert plan_tests(["assert f(1) == 2", "assert f(2) == 3"]).expected == [2, 3]
    script = plan_tests("import math\nassert math.isclose(f(1), 2.0)")
    assert script.mode == "script" and "isclose" in script.script
    io = plan_tests([{"input": "1 2", "output": "3"}])
    assert (io.mode, io.inputs, io.expected) == ("io", ["1 2"], ["3"])
    apps = plan_tests({"inputs": ["a", "b"], "outputs": ["A", "B"]})
    assert apps.inputs == ["a", "b"] and apps.count == 2


@pytest.mark.parametrize("bad", [None, "", 42, [{"input": "1"}], "assert (", [1, 2]])
def test_plan_rejects_unusable_tests(bad) -> None:
    with pytest.raises(TestFormatError):
        plan_tests(bad)


def test_outputs_match_ignores_trailing_whitespace_only() -> None:
    assert outputs_match("3 \n\n", "3")
    assert not outputs_match("3\n4", "3")
    assert not outputs_match(" 3", "3")


PLAN = plan_tests("assert add(1, 2) == 3\nassert add(2, 2) == 4")


def lines(*records: dict) -> list[str]:
    return [json.dumps(r) for r in records]


@pytest.mark.parametrize(
    ("result_lines", "passed"),
    [
        (lines({"i": 0, "value": "3"}, {"i": 1, "value": "4"}), True),
        (lines({"i": 0, "value": "3"}), False),  # exited before the second test
        (lines({"i": 0, "value": "3"}, {"i": 1, "value": "5"}), False),
        (lines({"i": 0, "value": "3"}, {"i": 1, "error": "AssertionError"}), False),
        # A forged extra line cannot outvote the real one.
        (lines({"i": 0, "value": "3"}, {"i": 1, "value": "4"}, {"i": 1, "value": "5"}), False),
        (lines({"i": 0, "value": "<Anything object>"}, {"i": 1, "value": "4"}), False),
        (["garbage", "{", *lines({"i": 0, "value": "3"}, {"i": 1, "value": "4"})], True),
        ([], False),
    ],
)
def test_judge_expr(result_lines: list[str], passed: bool) -> None:
    assert judge(PLAN, observe(PLAN, result_lines, "nonce", 0, False, "")).passed is passed


def test_judge_script_needs_this_runs_nonce() -> None:
    plan = plan_tests("import math\nassert math.isclose(f(), 1.0)")
    assert judge(plan, observe(plan, lines({"nonce": "abc"}), "abc", 0, False, "")).passed
    verdict = judge(plan, observe(plan, lines({"nonce": "forged"}), "abc", 1, False, "Traceback \x1b[31m"))
    assert not verdict.passed and verdict.category == verdicts.CRASH
    assert "Traceback" not in verdict.reason  # the answer's stderr never reaches the reason


def test_io_stdout_is_kept_only_as_a_digest() -> None:
    plan = plan_tests([{"input": "1", "output": "3 \n"}, {"input": "2", "output": "4"}])
    obs = observe(plan, lines({"i": 0, "stdout": "3\n\n"}, {"i": 1, "stdout": "5"}), "n", 0, False, "")
    assert all(len(r["stdout"]) == 64 for r in obs.records)
    assert "3\n" not in json.dumps(obs.to_json())
    verdict = judge(plan, Observation.from_json(json.loads(json.dumps(obs.to_json()))))
    assert (verdict.passed, verdict.reason) == (False, "wrong_answer: test 2/2: stdout differs")
    good = observe(plan, lines({"i": 0, "stdout": "3"}, {"i": 1, "stdout": "4\n"}), "n", 0, False, "")
    assert judge(plan, good).passed


@pytest.mark.parametrize(
    ("obs", "category"),
    [
        (Observation(timed_out=True), verdicts.TIMEOUT),
        (Observation(status=125), verdicts.PROCESS_LIMIT),
        (Observation(status=1, error_name="MemoryError"), verdicts.MEMORY),
        (Observation(status=152), verdicts.TIMEOUT),  # 128 + SIGXCPU: the CPU-time rlimit
        (Observation(status=0), verdicts.CRASH),  # exited before the tests
        (Observation([{"i": 0, "error": "NameError"}]), verdicts.TEST_ERROR),
        (Observation([{"i": 0, "error": "MemoryError"}]), verdicts.MEMORY),
        (Observation([{"i": 0, "value": "4"}]), verdicts.WRONG_ANSWER),
    ],
)
def test_verdicts_are_classified(obs: Observation, category: str) -> None:
    verdict = judge(PLAN, obs)
    assert not verdict.passed and verdict.category == category


def test_untrusted_text_is_sanitised_and_capped() -> None:
    hostile = "Evil\x1b[31m\nPASSED" + "A" * 500
    verdict = judge(PLAN, Observation([{"i": 0, "error": hostile}]))
    assert "\x1b" not in verdict.reason and "\n" not in verdict.reason
    assert len(verdict.reason) < 120
    assert verdicts.excerpt("a b\tc;rm -rf /") == "abcrmrf"
    with pytest.raises(ValueError, match="unknown verdict category"):
        verdicts.CodeVerdict(False, "pwned")


@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_seccomp_filter_is_well_formed(arch: str) -> None:
    """Jumps stay inside the program, every path ends in a return, and the default is allow."""
    prog = build_filter(arch, pid=1234, no_fork=True)
    assert prog[-1] == (0x06, 0, 0, RET_ALLOW)
    assert len(prog) < 4096
    for index, (code, jt, jf, _k) in enumerate(prog):
        if code & 0x07 == 0x05:  # BPF_JMP
            assert index + 1 + max(jt, jf) < len(prog)
    numbers = {k for code, _jt, _jf, k in prog if code == 0x15}
    assert ARCHES[arch]["kill"] in numbers and ARCHES[arch]["deny"]["ptrace"] in numbers
    assert 1234 in numbers  # the only pid it may signal
    assert ARCHES[arch]["clone3"] not in {
        k for c, _a, _b, k in build_filter(arch, 1, no_fork=False) if c == 0x15
    }
