"""Chat-completion request bodies and SampleRecords (pure: no network).

Seeds: sample i of a prompt is sampled with seed + i. A request for n answers carries seed + (index of its
first answer); the server derives the other answers' randomness from it (vLLM does), so a rerun of the same
request is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubefusion_trainer.config import SamplingParams
from kubefusion_trainer.records import Message, PromptRecord, SampleRecord


class BadResponse(ValueError):
    """A 200 answer that is not a chat completion."""


@dataclass(frozen=True)
class Choice:
    content: str
    finish_reason: str | None


@dataclass(frozen=True)
class Completion:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int


def request_body(
    model: str, messages: list[Message], params: SamplingParams, n: int, first_index: int
) -> dict:
    """An OpenAI chat-completion body; `n` and `repetition_penalty` are sent only when they matter.

    (`transformers serve` rejects unknown fields such as repetition_penalty with 422; vLLM accepts it.)
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if n > 1:
        body["n"] = n
    if params.seed is not None:
        body["seed"] = params.seed + first_index
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    return body


def parse_completion(data: Any) -> Completion:
    """The choices (in index order) and token usage of a chat-completion response."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise BadResponse("response has no 'choices' list")
    choices = []
    for raw in sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        message = raw.get("message") if isinstance(raw, dict) else None
        if not isinstance(message, dict):
            raise BadResponse("a choice has no 'message'")
        content = message.get("content")
        choices.append(
            Choice(
                content=content if isinstance(content, str) else "", finish_reason=raw.get("finish_reason")
            )
        )
    if not choices:
        raise BadResponse("response has an empty 'choices' list")
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    return Completion(
        choices=choices,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def sample_record(
    prompt: PromptRecord,
    source: str,
    model: str,
    params: SamplingParams,
    sample_index: int,
    choice: Choice,
    completion: Completion,
    request_n: int,
    request_seed: int | None,
) -> SampleRecord:
    """One answer as a SampleRecord.

    usage: prompt_tokens of the request; completion_tokens exact when the request had one answer, else the
    request's total split evenly (servers report only the total); choices_in_request says which.
    """
    k = max(len(completion.choices), 1)
    return {
        "prompt_id": prompt["prompt_id"],
        "dataset": prompt["dataset"],
        "domain": prompt["domain"],
        "source": source,
        "sample_index": sample_index,
        "messages": prompt["messages"],
        "answer": choice.content,
        "finish_reason": choice.finish_reason,
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens // k,
            "choices_in_request": k,
        },
        "sampling": {
            "model": model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "repetition_penalty": params.repetition_penalty,
            "seed": request_seed,
            "n": request_n,
        },
    }
