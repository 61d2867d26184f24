"""Label selectors as kube-apiserver parses them: equality (a=b, a==b, a!=b), existence (a, !a) and
set-based (a in (x,y), a notin (x,y)) requirements, comma-separated, all of which must hold.

A selector it cannot parse raises ValueError (the emulator answers 400 BadRequest, as the server does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Requirement = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _terms(selector: str) -> list[str]:
    """Split on the commas that are not inside a set's parentheses."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in label selector {selector!r}")
    return [*terms, current] if selector.strip() else []


def _requirement(term: str) -> Requirement:
    if match := _SET.match(term):
        key, op, values = match.group(1), match.group(3), match.group(4)
        allowed = {v.strip() for v in values.split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    if match := _EQ.match(term):
        key, op, value = match.group(1), match.group(3), match.group(4)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(term):
        negated, key = bool(match.group(1)), match.group(2)
        return lambda labels: (key in labels) != negated
    raise ValueError(f"unable to parse requirement {term.strip()!r}")


def parse_selector(selector: str) -> Requirement:
    requirements = [_requirement(t) for t in _terms(selector)]
    return lambda labels: all(r(labels) for r in requirements)
