"""Pure parts of code scoring: code extraction, static checks, test plans, and the parent's verdict."""

from __future__ import annotations

import json

import pytest

from kubefusion_trainer.scoring.code_extract import (
    TestFormatError,
    extract_code,
    outputs_match,
    plan_tests,
    static_check,
)
from kubefusion_trainer.scoring.code_sandbox import judge


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
    assert judge(PLAN, result_lines, "nonce", 0, "").passed is passed


def test_judge_script_needs_this_runs_nonce() -> None:
    plan = plan_tests("import math\nassert math.isclose(f(), 1.0)")
    assert judge(plan, lines({"nonce": "abc"}), "abc", 0, "").passed
    verdict = judge(plan, lines({"nonce": "forged"}), "abc", 1, "Traceback")
    assert not verdict.passed and "Traceback" in verdict.reason
