"""The emulator's CRD schema check (tests/integration/operator/emulator_admission/crd_schemas.py), for
the chart tests: the Kubeflow CRDs are read from the shared folder, never copied here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[2] / "integration" / "operator" / "emulator_admission")
)
import crd_schemas

__all__ = ["crd_schemas"]
