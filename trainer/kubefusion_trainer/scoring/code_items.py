"""Code answers as work items for a sandbox, and the verdict shards sandboxes return. Pure apart from file I/O.

The score stage and the verify-code stage share this: which answers need running (`prepare_answer`), the
stable key each answer is known by, what crosses into a sandbox (`item_to_json`: the code and the test
*inputs*, never the expected values) and what comes back (an Observation per key, judged by the score
stage against the expected values it alone holds).

A fingerprint of the code and the test plan rides along each way, so a verdict can never be applied to
an answer or tests that changed after it was produced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubefusion_trainer.scoring import verdicts
from kubefusion_trainer.scoring.code_extract import (
    TestFormatError,
    TestPlan,
    extract_code,
    plan_tests,
    static_check,
)
from kubefusion_trainer.scoring.code_sandbox import Observation, SandboxLimits
from kubefusion_trainer.shards import read_jsonl, write_jsonl

INPUTS_FILE = "items.jsonl"
FORMAT = 1


@dataclass(frozen=True)
class CodeItem:
    key: str
    code: str
    plan: TestPlan

    @property
    def fingerprint(self) -> str:
        """Of what the sandbox ran (code, test inputs). Expected values may change: judging uses the new ones."""
        blob = json.dumps([self.code, _plan_json(self.plan)], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def answer_key(record: dict[str, Any]) -> str:
    """Unique per answer of a phase: dataset, source, prompt, sample index."""
    return f"{record['dataset']}/{record['source']}/{record['prompt_id']}/{record.get('sample_index', 0)}"


def prepare_answer(record: dict[str, Any], tests: Any) -> CodeItem | tuple[bool | None, str]:
    """A CodeItem to run, or the verdict (correct, reason) when nothing needs running."""
    if not tests:
        return None, "code: no tests"
    try:
        plan = plan_tests(tests)
    except TestFormatError as exc:
        return None, f"code: unusable tests for prompt {record['prompt_id']}: {exc}"[:300]
    code = extract_code(record["answer"])
    if code is None:
        return False, f"code: {verdicts.NO_CODE}"
    problem = static_check(code)
    if problem:
        detail = "undefined name" if problem.startswith("pyflakes") else "does not compile"
        return False, f"code: {verdicts.SYNTAX_ERROR}: {detail}"
    return CodeItem(answer_key(record), code, plan)


def _plan_json(plan: TestPlan) -> dict[str, Any]:
    """The part of a plan the sandbox needs: no expected values."""
    return {
        "mode": plan.mode,
        "expressions": plan.expressions,
        "truthy": plan.truthy,
        "script": plan.script,
        "inputs": plan.inputs,
    }


def item_to_json(item: CodeItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "fingerprint": item.fingerprint,
        "code": item.code,
        "plan": _plan_json(item.plan),
    }


def item_from_json(data: dict[str, Any]) -> CodeItem:
    plan = data["plan"]
    return CodeItem(
        data["key"],
        data["code"],
        TestPlan(
            mode=plan["mode"],
            expressions=list(plan["expressions"]),
            truthy=list(plan["truthy"]),
            script=plan["script"],
            inputs=list(plan["inputs"]),
        ),
    )


def write_inputs(path: Path, items: list[CodeItem], limits: SandboxLimits) -> None:
    """A sandbox shard's inputs: a header with the limits, then one item per line (atomic)."""
    header = {"format": FORMAT, "count": len(items), "limits": limits.__dict__}
    write_jsonl(path, [header, *(item_to_json(i) for i in items)])


def read_inputs(path: Path) -> tuple[SandboxLimits, list[CodeItem]]:
    lines = read_jsonl(path)
    if not lines or lines[0].get("format") != FORMAT:
        raise ValueError(f"{path}: not a sandbox inputs file (format {FORMAT})")
    items = [item_from_json(line) for line in lines[1:]]
    if len(items) != lines[0]["count"]:
        raise ValueError(f"{path}: {len(items)} items, the header says {lines[0]['count']}")
    return SandboxLimits(**lines[0]["limits"]), items


def write_verdicts(path: Path, results: list[tuple[CodeItem, Observation]], isolation: str) -> None:
    header = {"format": FORMAT, "count": len(results), "isolation": isolation}
    rows = [{"key": i.key, "fingerprint": i.fingerprint, "observation": o.to_json()} for i, o in results]
    write_jsonl(path, [header, *rows])


@dataclass
class VerdictShards:
    """Every observation of a phase's sandbox shards, by answer key; `use` hands each out exactly once."""

    observations: dict[str, tuple[str, Observation]]
    isolation: set[str]
    used: set[str]

    @classmethod
    def load(cls, paths: list[Path]) -> VerdictShards:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} sandbox verdict shards are missing (e.g. {missing[0]}): "
                "finish `kubefusion stage verify-code` first"
            )
        found: dict[str, tuple[str, Observation]] = {}
        isolation: set[str] = set()
        for path in paths:
            lines = read_jsonl(path)
            if not lines or lines[0].get("format") != FORMAT or lines[0].get("count") != len(lines) - 1:
                raise ValueError(f"{path}: not a complete sandbox verdict shard")
            isolation.add(str(lines[0].get("isolation", "")))
            for row in lines[1:]:
                if row["key"] in found:
                    raise ValueError(f"{path}: answer {row['key']} has a verdict in two shards")
                found[row["key"]] = (row["fingerprint"], Observation.from_json(row["observation"]))
        return cls(found, isolation, set())

    def use(self, item: CodeItem) -> Observation:
        entry = self.observations.get(item.key)
        if entry is None:
            raise ValueError(
                f"no sandbox verdict for answer {item.key}: rerun `kubefusion stage verify-code`"
            )
        if entry[0] != item.fingerprint:
            raise ValueError(f"the sandbox verdict for {item.key} is for other code or tests (stale shards)")
        if item.key in self.used:
            raise ValueError(f"answer {item.key} was scored twice")
        self.used.add(item.key)
        return entry[1]
