"""Shared fixtures: tiny local models (nothing is downloaded) and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny tokenizer, causal LM and reward model on disk: {'tokenizer', 'model', 'reward'} paths."""
    from kubefusion_trainer.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"))
