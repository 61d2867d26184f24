"""One size per model id: `kubefusion plan` (model_table.model_size) and the pods' model cache
(render/pods.cache_size_gi) read the same lookup, so a model plans and caches at the same size."""

from __future__ import annotations

import ast
import inspect

import pytest

from kubefusion_operator import model_table
from kubefusion_operator.model_table import model_size
from kubefusion_operator.render.pods import MIN_CACHE_GI, cache_size_gi

# model id, parametersBillions, size plan prints, where it says it comes from, cache (bf16 + 20%, by hand)
CASES = [
    # an exact row beats the size in the name (70.6 from the card, not 70) ...
    ("meta-llama/Llama-3.1-70B-Instruct", None, 70.6, "model card", 170),
    # ... and beats the family: 2407's card figure, not the family's 123
    ("mistralai/Mistral-Large-Instruct-2407", None, 122.6, "model card", 295),
    ("mistralai/Mistral-Large-Instruct-2411", None, 123.0, "the mistral-large family", 296),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", None, 141.0, "the mixtral-8x22b family", 339),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", None, 47.0, "the mixtral-8x7b family", 113),
    ("Qwen/Qwen2.5-32B-Instruct", None, 32.0, "its name", 77),
    ("Qwen/Qwen2.5-0.5B", None, 0.5, "its name", MIN_CACHE_GI),
    # parametersBillions beats the table, a family and the name
    ("mistralai/Mistral-Large-Instruct-2411", 100.0, 100.0, "parametersBillions", 241),
    ("example-org/house-model", 13.0, 13.0, "parametersBillions", 32),
    ("example-org/house-model", None, None, "unknown", MIN_CACHE_GI),
]


@pytest.mark.parametrize(("model", "override", "billions", "where", "cache_gi"), CASES)
def test_plan_and_model_cache_agree_on_a_models_size(
    model: str, override: float | None, billions: float | None, where: str, cache_gi: int
) -> None:
    assert model_size(model, override) == (billions, where)
    assert cache_size_gi(model, override) == cache_gi


def test_family_match_ignores_case() -> None:
    assert model_size("MISTRALAI/MIXTRAL-8X7B-V0.1", None) == (47.0, "the mixtral-8x7b family")


def test_model_table_imports_no_render_module() -> None:
    # render -> model_table only: the other way round was once a circular import (estimate <-> render).
    tree = ast.parse(inspect.getsource(model_table))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("kubefusion_operator")], imported
