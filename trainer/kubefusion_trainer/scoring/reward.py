"""Reward-model scoring: [user, assistant] conversations -> one float each.

The RM's own chat template renders each conversation; sequences are right-padded (ArmoRM reads the
hidden state of the last token before the first pad) and batched after sorting by length, so a batch
wastes little on padding. Conversations longer than max_length are cut and reported as truncated.
ArmoRM-style remote-code models return `.score`; plain sequence classifiers `.logits[:, 0]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubefusion_trainer.config import RewardModelConfig
from kubefusion_trainer.records import Message


@dataclass(frozen=True)
class RewardResult:
    reward: float
    truncated: bool
    tokens: int


def load_reward_model(config: RewardModelConfig, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id or a local path; the default loader of RewardScorer.from_config."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(
        config.model, trust_remote_code=config.trust_remote_code, dtype=dtype
    )
    tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
    return model.to(device).eval(), tokenizer


Loader = Callable[[RewardModelConfig, str], tuple[Any, Any]]


class RewardScorer:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int = 4096,
        device: str = "cpu",
        sort_by_length: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.sort_by_length = sort_by_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("reward model tokenizer has neither a pad nor an eos token to pad with")
        self.pad_id = int(pad)

    @classmethod
    def from_config(
        cls, config: RewardModelConfig, device: str = "cpu", loader: Loader = load_reward_model
    ) -> RewardScorer:
        model, tokenizer = loader(config, device)
        return cls(model, tokenizer, config.batch_size, config.max_length, device)

    def encode(self, conversations: Sequence[Sequence[Message]]) -> list[tuple[list[int], bool]]:
        """Token ids per conversation (cut to max_length) and whether it was cut; one tokenizer call."""
        if not conversations:
            return []
        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
        all_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [
            (ids[: self.max_length], True) if len(ids) > self.max_length else (ids, False) for ids in all_ids
        ]

    def score(self, conversations: Sequence[Sequence[Message]]) -> list[RewardResult]:
        import torch

        encoded = self.encode(conversations)
        order = list(range(len(encoded)))
        if self.sort_by_length:
            order.sort(key=lambda i: len(encoded[i][0]))
        rewards = [0.0] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(encoded[i][0]) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    tokens = encoded[i][0]
                    ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                    mask[row, : len(tokens)] = 1
                output = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                values = _reward_tensor(output).float().cpu().tolist()
                for row, i in enumerate(batch):
                    rewards[i] = float(values[row])
        return [RewardResult(rewards[i], encoded[i][1], len(encoded[i][0])) for i in range(len(encoded))]


def _reward_tensor(output: Any) -> Any:
    score = getattr(output, "score", None)
    if score is not None:  # ArmoRM: the preference score, one per sequence
        return score.reshape(-1)
    return output.logits[:, 0]
