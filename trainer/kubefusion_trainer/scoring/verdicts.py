"""Code verdicts: a short classified reason, never the answer's own output. Pure.

What an answer prints, raises or names is untrusted text: it must not reach score shards, reports or
logs verbatim (terminal escapes, fake log lines, prompt injection into later LLM judges, sheer size).
A verdict is a category from a fixed list plus a detail built from fixed templates; the one place an
answer influences the text, an exception class name, passes through `excerpt` (identifier characters,
at most EXCERPT_CHARS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PASSED = "passed"
WRONG_ANSWER = "wrong_answer"  # ran, but a test's value or stdout differs from the expected one
TEST_ERROR = "test_error"  # a test raised (e.g. NameError: the function is missing)
TIMEOUT = "timeout"  # wall-clock or CPU-time limit
MEMORY = "memory"  # the address-space limit (MemoryError, or killed while allocating)
CRASH = "crash"  # exited early, died from a signal, or printed no result
PROCESS_LIMIT = "process_limit"  # started more processes than the per-answer cap
NO_CODE = "no_code"  # no Python code block in the answer
SYNTAX_ERROR = "syntax_error"  # the code does not compile or uses undefined names
CATEGORIES = (
    PASSED,
    WRONG_ANSWER,
    TEST_ERROR,
    TIMEOUT,
    MEMORY,
    CRASH,
    PROCESS_LIMIT,
    NO_CODE,
    SYNTAX_ERROR,
)
EXCERPT_CHARS = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """Untrusted text made safe to store: identifier-like characters only, length-capped."""
    cleaned = _UNSAFE.sub("", str(text))
    return cleaned[:limit] + ("..." if len(cleaned) > limit else "")


@dataclass(frozen=True)
class CodeVerdict:
    passed: bool
    category: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown verdict category {self.category!r}")

    @property
    def reason(self) -> str:
        return f"{self.category}: {self.detail}" if self.detail else self.category


def passed(count: int) -> CodeVerdict:
    return CodeVerdict(True, PASSED, f"{count}/{count} tests")


def failed(category: str, detail: str = "") -> CodeVerdict:
    return CodeVerdict(False, category, detail)


# Exception names that say which limit an answer ran into.
_LIMIT_ERRORS = {"MemoryError": MEMORY, "RecursionError": CRASH}


def from_error(case: str, error: str) -> CodeVerdict:
    """A test case that raised or whose process failed: `error` is an exception name or 'exit status N'."""
    name = excerpt(error.split(":", 1)[0])
    if name in _LIMIT_ERRORS:
        return failed(_LIMIT_ERRORS[name], f"{case}: {name}")
    if error.startswith("exit status"):
        return failed(CRASH, f"{case}: {excerpt(error.replace(' ', '_'))}")
    return failed(TEST_ERROR, f"{case}: raised {name}")
