"""The API server's refusals of a child, and how a failed reconcile reports itself."""

from __future__ import annotations

from kubefusion_operator.kube import ApiError


class ChildRefused(Exception):
    """The API server refused to create or change a child (invalid, quota, admission, RBAC)."""

    def __init__(self, verb: str, child: str, error: ApiError) -> None:
        super().__init__(
            f"{verb} {child} refused by the API server: {error.status} {error.reason}: {error.message}"
        )
        self.child = child
        self.error = error


def failure_report(exc: BaseException) -> tuple[str, str]:
    """(reason, message) of a failed reconcile for the ReconcileFailed condition and its Event."""
    if isinstance(exc, ChildRefused):
        return "ChildRefused", str(exc)
    if isinstance(exc, ApiError):
        return "ApiError", f"the API server answered {exc}"
    return "ReconcileError", f"{type(exc).__name__}: {exc}"


def is_refusal(exc: ApiError) -> bool:
    """A 4xx that will not go away by retrying at once (not 404/409, which callers handle)."""
    return 400 <= exc.status < 500 and exc.status not in (404, 409, 429)
