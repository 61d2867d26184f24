"""Schema validation: an object that does not match its kind's schema is refused with 422 Invalid.

kube-apiserver validates every write and answers 422 with a Status body:

    {"kind": "Status", "status": "Failure", "code": 422, "reason": "Invalid",
     "message": "Job.batch \\"x\\" is invalid: spec.backoffLimit: Invalid value: ...",
     "details": {"name": "x", "group": "batch", "kind": "Job", "causes": [{"reason": "FieldValueInvalid",
                 "message": "...", "field": "spec.backoffLimit"}]}}

The emulator checks built-in kinds with `kubernetes_validate` (Kubernetes 1.31 OpenAPI, strict) and
PyTorchJobs against the Kubeflow CRD in the shared schemas folder when it is there. Differences from
the real server: strict mode also refuses unknown fields, which kube-apiserver would drop with a
warning (fieldValidation=Warn, its default) — for the operator's own objects a dropped field is a bug
too; and only the first problem is reported. Writes by the test playing a controller (emulator.write)
and status-only writes are not checked.

Use:  emulator.admission_checks.append(schema.check)
Tested by tests/integration/operator/test_op_admission.py::test_schema_*.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kmock._internal import k8s
from op_emulator import Admission

KUBERNETES_VERSION = "1.31"
BUILT_IN = {
    ("", "Pod"),
    ("", "Service"),
    ("", "ConfigMap"),
    ("apps", "Deployment"),
    ("batch", "Job"),
}
SHARED = Path(os.environ.get("KUBEFUSION_SHARED_DIR") or Path(__file__).resolve().parents[5] / "shared")


@functools.cache
def _crd_validator(file: str, version: str) -> jsonschema.Draft7Validator | None:
    path = SHARED / "schemas" / file
    if not path.is_file():
        return None
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return jsonschema.Draft7Validator(served["schema"]["openAPIV3Schema"])


CRDS = {("kubeflow.org", "PyTorchJob"): ("kubeflow.org_pytorchjobs.yaml", "v1")}


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def problem(obj: dict[str, Any], group: str) -> tuple[str, str] | None:
    """(field, message) of the first schema problem of obj, or None when it is valid or not checked."""
    kind = obj.get("kind", "")
    try:
        if (group, kind) in BUILT_IN:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        elif (group, kind) in CRDS:
            validator = _crd_validator(*CRDS[(group, kind)])
            if validator is not None:
                validator.validate(obj)
    except jsonschema.ValidationError as exc:
        return _field(exc.absolute_path), exc.message.splitlines()[0]
    return None


def check(emulator: Any, admission: Admission) -> None:
    if admission.system or admission.subresource:
        return
    group = admission.resource.group or ""
    found = problem(admission.obj, group)
    if found is None:
        return
    field, message = found
    kind = admission.obj.get("kind", "")
    name = admission.obj.get("metadata", {}).get("name", "")
    qualified = f"{kind}.{group}" if group else kind
    raise k8s.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{qualified} "{name}" is invalid: {field}: Invalid value: {message}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": f"Invalid value: {message}", "field": field}
            ],
        },
    )
