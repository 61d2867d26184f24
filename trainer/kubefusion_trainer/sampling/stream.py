"""Reading a streamed chat completion (server-sent events) into a Completion.

vLLM and `transformers serve` send `data: {chunk}` lines: each chunk's choices carry a content delta and,
once that answer ends, its finish_reason; with stream_options.include_usage a last chunk carries the usage
(transformers serve puts it on its finish chunk); `data: [DONE]` ends the stream (vLLM; transformers serve
just closes it, which is fine once every answer has its finish_reason). A server error inside the
stream arrives as `data: {"error": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable
from typing import Any

from kubefusion_trainer.sampling.requests import BadResponse, Choice, Completion


class StreamError(RuntimeError):
    """The server reported an error inside a stream (retryable: the request is asked again)."""


async def read_stream(
    lines: AsyncIterable[bytes], on_choice_done: Callable[[int], None] | None = None
) -> Completion:
    """Assemble the streamed answers; on_choice_done(index) is called as each answer finishes."""
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str | None] = {}
    usage: dict[str, Any] = {}
    async for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments and event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise BadResponse(f"a stream chunk is not JSON: {payload[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise BadResponse("a stream chunk is not a JSON object")
        if "error" in chunk:
            raise StreamError(f"server error in stream: {str(chunk['error'])[:300]}")
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for raw_choice in chunk.get("choices") or []:
            if not isinstance(raw_choice, dict):
                raise BadResponse("a stream choice is not a JSON object")
            index = int(raw_choice.get("index", 0))
            delta = raw_choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            pieces = texts.setdefault(index, [])
            if isinstance(content, str):
                pieces.append(content)
            reason = raw_choice.get("finish_reason")
            if reason is not None and reasons.get(index) is None:
                reasons[index] = reason
                if on_choice_done is not None:
                    on_choice_done(index)
    if not texts:
        raise BadResponse("the stream had no choices")
    unfinished = [i for i in texts if reasons.get(i) is None]
    if unfinished:
        raise BadResponse(f"the stream ended with choices {unfinished} unfinished")
    return Completion(
        choices=[Choice("".join(texts[i]), reasons[i]) for i in sorted(texts)],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )
