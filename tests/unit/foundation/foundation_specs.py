"""A small valid FusionRun document for tests to mutate."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "kubefusion.dev/v1alpha1",
    "kind": "FusionRun",
    "metadata": {"name": "demo"},
    "spec": {
        "recipe": "fusechat3",
        "target": {"model": "org/target-1B"},
        "sources": [
            {"name": "alpha", "model": "org/alpha-70B", "serving": {"gpus": 4}},
            {"name": "beta", "model": "org/beta-27B"},
        ],
        "datasets": [
            {"name": "chat", "location": "hf://org/chat", "domain": "instruction", "rowLimit": 100},
            {
                "name": "maths",
                "location": "hf://org/maths",
                "domain": "math",
                "fields": {"prompt": "problem", "answer": "solution"},
                "sources": ["alpha"],
            },
        ],
        "scoring": {"rewardModel": {"model": "org/rm-8B"}, "margin": {"min": 0.01, "max": 0.1}},
        "training": {
            "sft": {"globalBatchSize": 16, "microBatchSize": 1, "resources": {"nodes": 2, "gpusPerNode": 8}},
            "dpo": {"globalBatchSize": 16, "resources": {"nodes": 1, "gpusPerNode": 8}},
        },
    },
}


def spec_with(*edits: tuple[str, Any]) -> dict[str, Any]:
    """BASE with edits applied; a path is dotted with [i] indices; value DELETE removes the key."""
    doc = copy.deepcopy(BASE)
    for path, value in edits:
        parts = path.replace("[", ".").replace("]", "").split(".")
        node: Any = doc
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


DELETE = object()
