"""The records that flow between stages (one JSON object per line), and the prompt split.

prepare -> PromptRecord -> sample -> SampleRecord -> score -> ScoredRecord -> build -> trl rows:
  SFT   {"messages": [...prompt, {"role": "assistant", "content": best}], + metadata}
  DPO   {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}], + metadata}
  WRPO  {"prompt": [...], "chosen": [[{assistant: best source}], [{assistant: best target}]],
         "rejected": [{"role": "assistant", ...worst target}], + metadata}
Metadata columns (prompt_id, dataset, source, rewards) ride along; trainers keep only what trl reads.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypedDict

Split = Literal["sft", "pref", "eval"]


class Message(TypedDict):
    role: str
    content: str


class PromptRecord(TypedDict, total=False):
    prompt_id: str  # sha256 of the normalised messages, first 16 hex digits
    dataset: str
    domain: str
    messages: list[Message]  # the prompt (system/user turns), without an answer
    gold_answer: str | None
    tests: Any  # test code (str) or a list of test cases, as the dataset gives them
    split: Split
    row_index: int  # the row in the source dataset, for error reports


class SampleRecord(TypedDict, total=False):
    prompt_id: str
    dataset: str
    domain: str
    source: str  # source name, an existingAnswers name, or "target"
    sample_index: int
    messages: list[Message]
    answer: str
    finish_reason: str | None
    usage: dict[str, int]  # prompt_tokens, completion_tokens
    sampling: dict[str, Any]


class ScoredRecord(SampleRecord, total=False):
    reward: float
    correct: bool | None  # None: not applicable (no gold answer / tests)
    reason: str


def prompt_id(messages: list[Message]) -> str:
    """A stable id from a prompt's content: identical prompts share it."""
    digest = hashlib.sha256()
    for message in messages:
        digest.update(message["role"].encode())
        digest.update(b"\x00")
        digest.update(message["content"].encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def assign_split(pid: str, sft_fraction: float, held_out_fraction: float = 0.0, seed: int = 0) -> Split:
    """Deterministic, seeded split of a prompt: the same id always lands in the same split."""
    bucket = int(hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()[:12], 16) / float(16**12)
    if bucket < held_out_fraction:
        return "eval"
    rest = (bucket - held_out_fraction) / (1.0 - held_out_fraction) if held_out_fraction < 1 else 0.0
    return "sft" if rest < sft_fraction else "pref"
