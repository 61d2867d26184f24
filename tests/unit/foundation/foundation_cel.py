"""Evaluate a CRD's x-kubernetes-validations rules with a real CEL implementation, as the API server would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cel


@dataclass(frozen=True)
class RuleFailure:
    path: str
    field_path: str
    rule: str
    message: str


def _coerce(schema: dict[str, Any], value: Any) -> Any:
    """Typed like the API server's CEL environment: schema `number` values are doubles."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _coerce(props[k], v) if k in props else (_coerce(extra, v) if isinstance(extra, dict) else v)
            for k, v in value.items()
        }
    if kind == "array" and isinstance(value, list):
        return [_coerce(schema.get("items", {}), v) for v in value]
    return value


def evaluate(schema: dict[str, Any], obj: Any, old: Any = None, path: str = "") -> list[RuleFailure]:
    """All failing rules under `schema` for `obj` (transition rules only where `old` is given)."""
    failures: list[RuleFailure] = []
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue
        context = {"self": _coerce(schema, obj)}
        if uses_old:
            context["oldSelf"] = _coerce(schema, old)
        if cel.evaluate(rule["rule"], context) is not True:
            failures.append(RuleFailure(path, rule.get("fieldPath", ""), rule["rule"], rule["message"]))
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                sub_old = old.get(key) if isinstance(old, dict) else None
                failures += evaluate(sub, obj[key], sub_old, f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                failures += evaluate(extra, value, None, f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            failures += evaluate(schema["items"], item, None, f"{path}[{i}]")
    return failures
