"""A pytest plugin that records every API request the operator's integration tests send to the emulator.

Loaded with `-p packaging_rbac_recorder` into a pytest run of tests/integration/operator (see
test_chart_rbac.py). It wraps op_emulator.RecordingEmulator._handle and, at the end of the session,
writes one JSON line per request to $KUBEFUSION_RBAC_RECORD:
{"verb", "api_group", "resource", "subresource", "namespace", "user_agent", "test"}.
The User-Agent tells the operator (kopf, the kubernetes client) from the tests' own requests
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
_current_test = {"id": ""}
# The HTTP request being handled: aiohttp serves each request in its own task, so this is exact.
_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("current_request", default=None)


class _AttributedRequests(list):
    """The emulator's api_requests list; each append is also recorded with who sent it."""

    def append(self, api_request: Any) -> None:
        super().append(api_request)
        request = _current_request.get()
        _records.append(
            {
                **api_request._asdict(),
                "namespace": getattr(request, "namespace", None),
                "user_agent": request.headers.get("User-Agent", "") if request is not None else "",
                "test": _current_test["id"],
            }
        )


def pytest_configure(config: pytest.Config) -> None:
    if str(OPERATOR_TESTS) not in sys.path:
        sys.path.insert(0, str(OPERATOR_TESTS))
    import op_emulator

    emulator_class = op_emulator.RecordingEmulator
    original_init, original_handle = emulator_class.__attrs_post_init__, emulator_class._handle

    def post_init(self: Any) -> None:
        original_init(self)
        self.api_requests = _AttributedRequests(self.api_requests)

    async def handle(self: Any, request: Any) -> Any:
        token = _current_request.set(request)
        try:
            return await original_handle(self, request)
        finally:
            _current_request.reset(token)

    emulator_class.__attrs_post_init__ = post_init
    emulator_class._handle = handle


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current_test["id"] = item.nodeid
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("KUBEFUSION_RBAC_RECORD")
    if target:
        Path(target).write_text("".join(json.dumps(r) + "\n" for r in _records), encoding="utf-8")
