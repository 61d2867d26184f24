"""Answers and events kube-apiserver produces, as the emulator renders them (messages included)."""

from __future__ import annotations

from typing import Any

from kmock._internal import k8s


def qualified(resource: Any) -> str:
    """How the API server names a resource in messages: plural.group (plural alone for the core group)."""
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def not_found(resource: Any, name: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(
        status=404,
        reason="NotFound",
        message=f'{qualified(resource)} "{name}" not found',
        details={"name": name, "group": resource.group or "", "kind": resource.plural},
    )


def group_version(resource: Any) -> str:
    return "/".join(p for p in (resource.group, resource.version) if p)


PAGE_NOT_FOUND = "404 page not found\n"  # kube-apiserver's body for a path it does not serve


def resource_key(resource: Any) -> str:
    return "/".join(p for p in (resource.group, resource.version, resource.plural) if p)


def conflict(resource: Any, name: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(
        status=409,
        reason="Conflict",
        message=f'Operation cannot be fulfilled on {qualified(resource)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details={"name": name, "group": resource.group or "", "kind": resource.plural},
    )


def gone(wanted: int, oldest: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {wanted} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


def bookmark(resource: Any, info: Any, version: int) -> dict[str, Any]:
    return {
        "apiVersion": group_version(resource),
        "kind": info.kind if info else "Object",
        "metadata": {"resourceVersion": str(version)},
    }
