"""Reward-model scoring: [user, assistant] conversations -> one float each.

The RM's own chat template renders each conversation; sequences are right-padded (ArmoRM reads the
hidden state of the last token before the first pad) and batched by a token budget: sorted by length
(longest first, so the largest batch comes first and an out-of-memory shows at once), each batch takes rows
while rows x its longest row stays within `tokens_per_batch` (and rows <= batch_size). Short answers get
wide batches, long ones narrow batches, and little is spent on padding either way.

Causal (decoder-only) reward models, such as ArmoRM and Llama/Mistral/Gemma/Qwen classifiers, get no
attention mask: with right padding a real token attends only to earlier real tokens anyway, so the result is
the same, and attention takes its causal fast path instead of building a batch x length x length mask.
A transformers classifier reads its reward at one token per row, so for the layer types scoring/last_token.py
knows, the last decoder layer runs at that token only (same rewards, less work; other models run whole).
Conversations longer than max_length are cut and reported as truncated. ArmoRM-style remote-code models
return `.score`; plain sequence classifiers `.logits[:, 0]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubefusion_trainer.config import RewardModelConfig
from kubefusion_trainer.records import Message
from kubefusion_trainer.scoring.last_token import last_token_rewards, supports_last_token


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
        tokens_per_batch: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.sort_by_length = sort_by_length
        self.tokens_per_batch = tokens_per_batch
        self.causal = is_causal_decoder(model)
        # The last layer at one token per row (scoring/last_token.py); only where it gives the same rewards.
        self.last_token = supports_last_token(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("reward model tokenizer has neither a pad nor an eos token to pad with")
        self.pad_id = int(pad)

    @classmethod
    def from_config(
        cls, config: RewardModelConfig, device: str = "cpu", loader: Loader = load_reward_model
    ) -> RewardScorer:
        model, tokenizer = loader(config, device)
        return cls(
            model,
            tokenizer,
            config.batch_size,
            config.max_length,
            device,
            tokens_per_batch=config.tokens_per_batch or default_tokens_per_batch(device),
        )

    def encode(self, conversations: Sequence[Sequence[Message]]) -> list[tuple[list[int], bool]]:
        """Token ids per conversation (cut to max_length) and whether it was cut; one template and one
        tokenizer call for all of them (the same ids as apply_chat_template one conversation at a time)."""
        if not conversations:
            return []
        texts = self.tokenizer.apply_chat_template([list(c) for c in conversations], tokenize=False)
        return [
            (ids[: self.max_length], True) if len(ids) > self.max_length else (ids, False)
            for ids in token_ids(self.tokenizer, texts)
        ]

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of each forward pass: packed to the token budget (see the module docstring)."""
        order = list(range(len(lengths)))
        if self.sort_by_length:
            order.sort(key=lambda i: -lengths[i])
        out: list[list[int]] = []
        width = 0  # the longest row of the batch being filled
        for i in order:
            wider = max(width, lengths[i])
            rows = len(out[-1]) + 1 if out else 1
            budget_ok = self.tokens_per_batch is None or rows * wider <= self.tokens_per_batch
            if out and rows <= self.batch_size and budget_ok:
                out[-1].append(i)
                width = wider
            else:
                out.append([i])
                width = lengths[i]
        return out

    def score(self, conversations: Sequence[Sequence[Message]]) -> list[RewardResult]:
        import torch

        encoded = self.encode(conversations)
        rewards = [0.0] * len(encoded)
        last_token = self.causal and self.last_token
        with torch.inference_mode():
            for batch in self.batches([len(ids) for ids, _ in encoded]):
                rows = [encoded[i][0] for i in batch]
                width = max(len(tokens) for tokens in rows)
                padded = [tokens + [self.pad_id] * (width - len(tokens)) for tokens in rows]
                ids = torch.tensor(padded, dtype=torch.long).to(self.device)
                if last_token:
                    values = last_token_rewards(self.model, ids)
                elif self.causal:
                    values = _reward_tensor(self.model(input_ids=ids))
                else:
                    mask = [[1] * len(tokens) + [0] * (width - len(tokens)) for tokens in rows]
                    values = _reward_tensor(
                        self.model(input_ids=ids, attention_mask=torch.tensor(mask).to(self.device))
                    )
                for i, value in zip(batch, values.float().cpu().tolist(), strict=True):
                    rewards[i] = float(value)
        return [RewardResult(rewards[i], encoded[i][1], len(encoded[i][0])) for i in range(len(encoded))]


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of rendered chats (their special tokens are in the text). A fast tokenizer whose backend
    is set as transformers would set it for this call (no truncation, no padding, special tokens as tokens)
    is called directly without offsets, which it does not need; anything else goes through the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode_fast = getattr(backend, "encode_batch_fast", None)
    if (
        encode_fast is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return [encoding.ids for encoding in encode_fast(texts, add_special_tokens=False)]
    return tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
    )["input_ids"]


def default_tokens_per_batch(device: str) -> int:
    """A GPU wants large batches to fill its cores; a CPU is fastest when a batch's activations fit its caches
    (measured with benchmarks/bench_scoring.py: 2048 beat 1024, 4096 and 16384 on short and long answers)."""
    return 16384 if device.startswith("cuda") else 2048


# Decoder-only families: a token sees only earlier tokens, so right padding needs no attention mask.
CAUSAL_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox"}
)


def is_causal_decoder(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in CAUSAL_MODEL_TYPES and not getattr(
        config, "is_encoder_decoder", False
    )


def _reward_tensor(output: Any) -> Any:
    score = getattr(output, "score", None)
    if score is not None:  # ArmoRM: the preference score, one per sequence
        return score.reshape(-1)
    return output.logits[:, 0]
