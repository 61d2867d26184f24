"""Other projects' CRDs in the emulator: TrainJob, (Cluster)TrainingRuntime and PyTorchJob writes are
checked against the real CRD schemas, as kube-apiserver checks a custom resource.

The schemas come from the shared folder ($KUBEFUSION_SHARED_DIR/schemas or ../shared/schemas; see its
PROVENANCE.txt), never from a copy in this repository. Where they are absent, `schemas_available()` is
False and the tests that need them skip with that reason.

A write is refused with 422 Invalid and a Status naming the fields when:
- it breaks the OpenAPI schema (types, enums, required fields, bounds), checked with jsonschema;
- it breaks an x-kubernetes-validations CEL rule (transition rules only on updates), checked with the
  CEL library the foundation tests use;
- it sets a field the schema does not declare. A real API server prunes such fields silently (or
  refuses them with fieldValidation=Strict): either way the setting is lost, so the emulator refuses.

    emulator.admission_checks.append(crd_schemas.check)
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests" / "unit" / "foundation"))
from foundation_cel import evaluate  # noqa: E402

# (group, plural) -> (file in the schemas folder, version, kind)
CRDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("trainer.kubeflow.org", "trainjobs"): ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1", "TrainJob"),
    ("trainer.kubeflow.org", "clustertrainingruntimes"): (
        "trainer.kubeflow.org_clustertrainingruntimes.yaml",
        "v1alpha1",
        "ClusterTrainingRuntime",
    ),
    ("trainer.kubeflow.org", "trainingruntimes"): (
        "trainer.kubeflow.org_trainingruntimes.yaml",
        "v1alpha1",
        "TrainingRuntime",
    ),
    ("kubeflow.org", "pytorchjobs"): ("kubeflow.org_pytorchjobs.yaml", "v1", "PyTorchJob"),
}
MISSING_REASON = (
    "the Kubeflow CRD schemas are not here: set KUBEFUSION_SHARED_DIR to the shared folder "
    "(schemas/trainer.kubeflow.org_trainjobs.yaml, ...)"
)


def schemas_dir() -> Path | None:
    candidates = (
        [Path(os.environ["KUBEFUSION_SHARED_DIR"])] if os.environ.get("KUBEFUSION_SHARED_DIR") else []
    )
    candidates.append(REPO.parent / "shared")
    for folder in candidates:
        if (folder / "schemas" / CRDS[("trainer.kubeflow.org", "trainjobs")][0]).is_file():
            return folder / "schemas"
    return None


def schemas_available() -> bool:
    return schemas_dir() is not None


@functools.cache
def crd_schema(group: str, plural: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's version, from the shared folder."""
    folder = schemas_dir()
    if folder is None:
        raise FileNotFoundError(MISSING_REASON)
    file, version, _ = CRDS[(group, plural)]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((folder / file).read_text(encoding="utf-8"), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(group: str, plural: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(group, plural))


def unknown_fields(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Fields the structural schema does not declare (the API server would prune them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key in schema["properties"]:
                if path or key != "metadata":  # ObjectMeta is validated apart from the CRD schema
                    found += unknown_fields(schema["properties"][key], value, f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}".lstrip("."))
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(schema["additionalProperties"], value, f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += unknown_fields(schema["items"], item, f"{path}[{i}]")
    return found


def problems(group: str, plural: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Why the API server would refuse this object (empty: it would accept it)."""
    schema = crd_schema(group, plural)
    out = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in _validator(group, plural).iter_errors(obj)
    ]
    out += [f"{field}: field not declared in the schema" for field in unknown_fields(schema, obj)]
    out += [f"{f.path.lstrip('.') or '<root>'}: {f.message}" for f in evaluate(schema, obj, old)]
    return out


def check(emulator: Any, admission: Any) -> None:
    from op_emulator import refuse

    key = (admission.resource.group or "", admission.resource.plural)
    if key not in CRDS or not schemas_available():
        return
    found = problems(*key, admission.obj, admission.old)
    if found:
        kind = CRDS[key][2]
        name = admission.obj.get("metadata", {}).get("name", "")
        raise refuse(422, "Invalid", f'{kind}.{key[0]} "{name}" is invalid: ' + "; ".join(found[:20]))
