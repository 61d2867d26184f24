"""Watches as kube-apiserver serves them, over the emulator's event history.

Without resourceVersion (or "0"): every existing object as ADDED, then the changes. With one: only the
changes after it; one older than the history gets an ERROR event with a 410 Expired Status.
allowWatchBookmarks=true adds BOOKMARK events every `emulator.bookmark_interval` seconds; timeoutSeconds
ends the stream. Label selectors apply as on lists.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from typing import Any

import aiohttp.web
from emulator_status import bookmark, gone, resource_key
from kmock._internal import rendering


async def stream_watch(emulator: Any, request: rendering.Request) -> aiohttp.web.StreamResponse:
    """A watch as kube-apiserver serves it (see the module docstring: resourceVersion, 410, bookmarks)."""
    matches = emulator.selector(request)
    resource, namespace = request.resource, request.namespace
    info = emulator._info(resource)
    params = request.params
    since = params.get("resourceVersion") or ""
    timeout = float(params.get("timeoutSeconds") or 0) or None
    bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
    response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request._raw_request)

    def wanted(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (namespace is None or meta.get("namespace") == namespace) and matches(meta.get("labels") or {})

    async def send(event: dict[str, Any]) -> None:
        await response.write(json.dumps(event).encode() + b"\n")

    async with emulator._lock:
        if since in ("", "0"):  # "now": every existing object as ADDED, then the changes
            position = emulator._last_rv
            initial = [o for o in emulator.live(resource_key(resource)) if wanted(o)]
        else:
            position, initial = int(since), []
    if position < emulator._compacted_rv:
        await send({"type": "ERROR", "object": gone(position, emulator._compacted_rv)})
        return response
    for obj in initial:
        await send({"type": "ADDED", "object": obj})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    while True:
        changed = emulator._changed
        first = bisect.bisect_right(emulator._events, position, key=lambda e: e[0])
        for rv, res, event in emulator._events[first:]:
            if res == resource and wanted(event["object"]):
                await send(event)
            position = rv
        wait = emulator.bookmark_interval if bookmarks else None
        if deadline is not None:
            left = max(deadline - loop.time(), 0.0)
            wait = left if wait is None else min(wait, left)
        try:
            await asyncio.wait_for(changed.wait(), wait)
        except TimeoutError:
            if bookmarks:
                await send({"type": "BOOKMARK", "object": bookmark(resource, info, emulator._last_rv)})
                position = max(position, emulator._last_rv)
            if deadline is not None and loop.time() >= deadline:
                return response
