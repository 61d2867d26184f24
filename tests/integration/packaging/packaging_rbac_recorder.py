"""Records every API request sent to the operator tests' emulator, with who sent it and in which test.

Two ways in (see test_chart_rbac.py):
- install(), called at import by test_chart_rbac.py: records the requests of the operator's
  integration tests that run earlier in the same pytest session;
- as a plugin, `-p packaging_rbac_recorder`, in a separate pytest run; at the end of the session it
  writes one JSON line per request to $KUBEFUSION_RBAC_RECORD.
A record is {"verb", "api_group", "resource", "subresource", "namespaced", "namespace", "user_agent",
"test"}. The User-Agent tells the operator (kopf, its aiohttp client) from the tests' own requests
(kmock's client, kubectl).
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

OPERATOR_TESTS = Path(__file__).resolve().parents[1] / "operator"

_records: list[dict[str, Any]] = []
# The HTTP request being handled: aiohttp serves each request in its own task, so this is exact.
_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("current_request", default=None)


def _current_test() -> str:
    # pytest sets it for every test phase: "path::name (call)".
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


class _AttributedRequests(list):
    """The emulator's api_requests list; each append is also recorded with who sent it."""

    def append(self, api_request: Any) -> None:
        super().append(api_request)
        request = _current_request.get()
        _records.append(
            {
                **api_request._asdict(),
                "namespace": getattr(request, "namespace", None) if api_request.namespaced else None,
                "user_agent": request.headers.get("User-Agent", "") if request is not None else "",
                "test": _current_test(),
            }
        )


def install() -> None:
    """Wrap op_emulator.RecordingEmulator (once) so that every emulator records into this module."""
    if str(OPERATOR_TESTS) not in sys.path:
        sys.path.insert(0, str(OPERATOR_TESTS))
    import op_emulator

    emulator_class = op_emulator.RecordingEmulator
    if getattr(emulator_class, "_packaging_recorded", False):
        return
    original_init, original_handle = emulator_class.__attrs_post_init__, emulator_class._handle
    original_call = emulator_class.__call__

    def post_init(self: Any) -> None:
        original_init(self)
        self.api_requests = _AttributedRequests(self.api_requests)

    async def handle(self: Any, request: Any) -> Any:
        token = _current_request.set(request)
        try:
            return await original_handle(self, request)
        finally:
            _current_request.reset(token)

    async def call(self: Any, raw_request: Any) -> Any:
        # The raw HTTP request, for paths the emulator answers before parsing (e.g. /api/v1/namespaces);
        # handle() narrows it to the parsed request, which also knows the namespace.
        token = _current_request.set(raw_request)
        try:
            return await original_call(self, raw_request)
        finally:
            _current_request.reset(token)

    emulator_class.__attrs_post_init__ = post_init
    emulator_class._handle = handle
    emulator_class.__call__ = call
    emulator_class._packaging_recorded = True


def records() -> list[dict[str, Any]]:
    return list(_records)


def pytest_configure(config: pytest.Config) -> None:
    install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("KUBEFUSION_RBAC_RECORD")
    if target:
        Path(target).write_text("".join(json.dumps(r) + "\n" for r in _records), encoding="utf-8")
