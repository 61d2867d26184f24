"""Reward scoring with the tiny random reward model: padding, batching, truncation, ArmoRM outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kubefusion_trainer.config import RewardModelConfig
from kubefusion_trainer.scoring.reward import RewardScorer, load_reward_model, token_ids

torch.set_num_threads(1)

CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 34?"}, {"role": "assistant", "content": "46"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 4},
    ],
    [{"role": "user", "content": "Reverse hello"}, {"role": "assistant", "content": "olleh"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "why"},
        {"role": "assistant", "content": "because"},
    ],
    [
        {"role": "user", "content": "sum"},
        {"role": "assistant", "content": "first 1 then 2 so the total result is 3"},
    ],
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_world):
    return load_reward_model(RewardModelConfig(model=str(tiny_world["reward"])), "cpu")


def test_batched_length_sorted_equals_one_at_a_time(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    batched = RewardScorer(model, tokenizer, batch_size=4, max_length=512).score(CONVERSATIONS)
    single = RewardScorer(model, tokenizer, batch_size=1, max_length=512, sort_by_length=False).score(
        CONVERSATIONS
    )
    assert [r.reward for r in batched] == pytest.approx([r.reward for r in single], abs=1e-4)
    assert len({round(r.reward, 6) for r in batched}) == len(
        CONVERSATIONS
    )  # distinct conversations, distinct scores
    assert not any(r.truncated for r in batched)


def test_token_budget_packs_length_sorted_batches_within_budget_and_row_cap(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    lengths = [5, 300, 40, 41, 39, 2000, 10, 10, 10, 10, 10, 120]
    scorer = RewardScorer(model, tokenizer, batch_size=4, tokens_per_batch=256)
    batches = scorer.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each answer once
    assert batches[0] == [5]  # longest first, alone: one answer always fits, even over the budget
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 256
        widths = [lengths[i] for i in batch]
        assert widths == sorted(widths, reverse=True)
    assert [len(b) for b in batches] == [1, 1, 2, 4, 4]  # 2000 | 300 | 120,41 | 40,39,10,10 | 10,10,10,5


def test_causal_models_skip_the_mask_with_the_same_rewards(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    scorer = RewardScorer(model, tokenizer, batch_size=8, max_length=512)
    assert scorer.causal  # a Llama classifier
    fast = [r.reward for r in scorer.score(CONVERSATIONS)]
    scorer.causal = False  # what an encoder reward model gets: an explicit attention mask
    masked = [r.reward for r in scorer.score(CONVERSATIONS)]
    assert fast == pytest.approx(masked, abs=1e-4)


def test_encode_gives_apply_chat_templates_ids_one_conversation_at_a_time(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    tricky = [
        [
            {"role": "user", "content": "say <|eos|> and <|pad|>"},
            {"role": "assistant", "content": "<|eos|>ok"},
        ],
        [
            {"role": "user", "content": "naïve café 😀 ∑"},
            {"role": "assistant", "content": "  two  spaces\n\tend "},
        ],
    ]
    conversations = CONVERSATIONS + tricky
    expected = [tokenizer.apply_chat_template(c, return_dict=True)["input_ids"] for c in conversations]
    scorer = RewardScorer(model, tokenizer, max_length=512)
    assert [ids for ids, _ in scorer.encode(conversations)] == expected
    # special tokens written in messages are read as special tokens, as apply_chat_template does (2 + the end)
    assert expected[-2].count(tokenizer.eos_token_id) == 3


def test_token_ids_falls_back_to_the_tokenizer_when_its_backend_would_cut(model_and_tokenizer) -> None:
    import copy

    _, tokenizer = model_and_tokenizer
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    cutting = copy.deepcopy(tokenizer)
    cutting.backend_tokenizer.enable_truncation(max_length=4)  # a tokenizer.json saved with truncation on
    assert [len(ids) for ids in token_ids(cutting, texts)] == [len(ids) for ids in expected]
    assert token_ids(cutting, texts) == token_ids(tokenizer, texts) == expected


def test_the_last_layer_at_one_token_gives_the_whole_models_rewards(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    scorer = RewardScorer(model, tokenizer, batch_size=8, max_length=512)
    assert scorer.last_token  # a transformers Llama classifier
    fast = [r.reward for r in scorer.score(CONVERSATIONS)]
    scorer.last_token = False
    whole = [r.reward for r in scorer.score(CONVERSATIONS)]
    assert fast == pytest.approx(whole, abs=1e-5)
    assert len({round(r, 6) for r in fast}) == len(CONVERSATIONS)


def test_truncation_is_reported(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    results = RewardScorer(model, tokenizer, batch_size=8, max_length=16).score(CONVERSATIONS)
    long_one = results[1]
    assert long_one.truncated and long_one.tokens == 16
    assert not results[2].truncated


class ArmoLike(torch.nn.Module):
    """Stands in for ArmoRM's remote code: `.score` per sequence, read at the last token before the pad."""

    def __init__(self, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask):
        self.seen.append(input_ids.clone())
        last = attention_mask.sum(dim=1) - 1
        score = input_ids[torch.arange(len(input_ids)), last].float()
        return SimpleNamespace(score=score, logits=torch.full((len(input_ids), 19), -1.0))


def test_armo_style_score_and_right_padding(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    armo = ArmoLike(tokenizer.pad_token_id)
    scorer = RewardScorer(armo, tokenizer, batch_size=8, max_length=512)
    results = scorer.score(CONVERSATIONS)
    # Each conversation's score is its own last real token (the eos), not a pad or a logit.
    assert all(r.reward == tokenizer.eos_token_id for r in results)
    batch = armo.seen[0]
    lengths = [r.tokens for r in sorted(results, key=lambda r: -r.tokens)]  # longest first
    for row, length in zip(batch, lengths, strict=True):
        assert (row[length:] == tokenizer.pad_token_id).all()  # pads only on the right
        assert (row[:length] != tokenizer.pad_token_id).all()
    assert [len(r) for r in batch] == [max(lengths)] * len(lengths)


def test_from_config_uses_the_injected_loader(model_and_tokenizer) -> None:
    calls = []

    def loader(config, device):
        calls.append((config.model, device))
        return model_and_tokenizer

    scorer = RewardScorer.from_config(
        RewardModelConfig(model="org/armo", batchSize=3, maxLength=64), "cpu", loader
    )
    assert calls == [("org/armo", "cpu")] and scorer.batch_size == 3 and scorer.max_length == 64
