"""Pure helpers for code answers: pull the code out of an answer, check it statically, plan its tests.

Test formats a dataset row may carry (PromptRecord.tests):
  str                      Python test code, e.g. "assert add(1, 2) == 3\\nassert is_ok('x')".
  list[str]                several such snippets (joined).
  list[{"input", "output"}] stdin/stdout cases: the program reads input, its stdout must equal output
                           (trailing whitespace per line ignored).
  {"inputs": [...], "outputs": [...]}  the same, APPS style.
Test code whose every statement is `assert EXPR == LITERAL`, `assert LITERAL == EXPR`, `assert EXPR` or
`assert not EXPR` becomes checked expressions: the sandbox only evaluates EXPR and the parent compares
with the literal, so the expected values never reach the answer. Any other test code runs as a script.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Literal

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3", "py3", ""}


def extract_code(answer: str) -> str | None:
    """The longest fenced Python block (solutions outgrow usage examples); else the whole answer if it
    parses as Python; else None."""
    blocks = [body for tag, body in FENCE.findall(answer) if tag.lower() in PYTHON_TAGS]
    if blocks:
        return max(blocks, key=len)
    if "```" in answer:
        return None
    try:
        ast.parse(answer)
    except (SyntaxError, ValueError):
        return None
    return answer


def static_check(code: str) -> str | None:
    """None when the code compiles; else a short reason. pyflakes (when installed) flags undefined names."""
    try:
        compile(code, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        return f"syntax error: {exc}"[:300]
    try:
        from pyflakes import api as flakes_api
        from pyflakes import reporter as flakes_reporter
    except ImportError:
        return None
    import io

    out = io.StringIO()
    flakes_api.check(code, "solution.py", flakes_reporter.Reporter(out, out))
    undefined = [line for line in out.getvalue().splitlines() if "undefined name" in line]
    return f"pyflakes: {undefined[0]}"[:300] if undefined else None


@dataclass(frozen=True)
class TestPlan:
    """What the sandbox runs (expressions / script / inputs) and what only the parent knows (expected)."""

    __test__ = False  # not a pytest test class

    mode: Literal["expr", "script", "io"]
    expressions: list[str] = field(default_factory=list)
    expected: list[Any] = field(default_factory=list)
    truthy: list[bool] = field(default_factory=list)  # compare bool(EXPR), computed by the harness's bool
    script: str = ""
    inputs: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.expressions) if self.mode == "expr" else len(self.inputs) if self.mode == "io" else 1


class TestFormatError(ValueError):
    __test__ = False  # not a pytest test class


def plan_tests(tests: Any) -> TestPlan:
    """Turn a row's tests into a TestPlan; TestFormatError names what is wrong with them."""
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"], strict=False)]
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        if not all("input" in t and "output" in t for t in tests):
            raise TestFormatError("test cases must each have 'input' and 'output'")
        return TestPlan(
            mode="io",
            inputs=[_text(t["input"]) for t in tests],
            expected=[_text(t["output"]) for t in tests],
        )
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if not isinstance(tests, str) or not tests.strip():
        raise TestFormatError(
            f"tests must be test code, a list of snippets or input/output cases, not {tests!r:.80}"
        )
    try:
        module = ast.parse(tests)
    except SyntaxError as exc:
        raise TestFormatError(f"test code does not parse: {exc}") from exc
    checks = [_as_check(node) for node in module.body]
    if checks and all(check is not None for check in checks):
        return TestPlan(
            mode="expr",
            expressions=[c[0] for c in checks if c],
            expected=[c[1] for c in checks if c],
            truthy=[c[2] for c in checks if c],
        )
    return TestPlan(mode="script", script=tests)


def outputs_match(actual: str, expected: str) -> bool:
    """stdout comparison: trailing whitespace per line and trailing blank lines are ignored."""

    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return norm(actual) == norm(expected)


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else "\n".join(map(str, value))
        if isinstance(value, list)
        else str(value)
    )


def _as_check(node: ast.stmt) -> tuple[str, Any, bool] | None:
    """(expression to evaluate in the sandbox, expected value) for the assert shapes we can check outside."""
    if not isinstance(node, ast.Assert):
        return None
    test = node.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]
        for expr, literal in ((left, right), (right, left)):
            try:
                expected = ast.literal_eval(literal)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            return ast.unparse(expr), expected, False
        return None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return ast.unparse(test.operand), False, True
    return ast.unparse(test), True, True
