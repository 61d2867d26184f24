"""The last decoder layer at one token per row gives the model's own rewards, and only where it can."""

from __future__ import annotations

import pytest
import torch

from kubefusion_trainer.scoring.last_token import last_token_rewards, pooled_positions, supports_last_token

torch.set_num_threads(1)

PAD = 0
SMALL = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in Llama 3
    "max_position_embeddings": 128,
    "num_labels": 1,
    "pad_token_id": PAD,
}


def classifier(family: str, **overrides):
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        MistralConfig,
        MistralForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
        Qwen3Config,
        Qwen3ForSequenceClassification,
    )

    kinds = {
        "llama": (LlamaConfig, LlamaForSequenceClassification, {}),
        "mistral": (MistralConfig, MistralForSequenceClassification, {"sliding_window": None}),
        "qwen2": (Qwen2Config, Qwen2ForSequenceClassification, {}),
        "qwen3": (Qwen3Config, Qwen3ForSequenceClassification, {"head_dim": 16}),
    }
    config_class, model_class, defaults = kinds[family]
    torch.manual_seed(0)
    model = model_class(config_class(**{**SMALL, **defaults, **overrides})).eval()
    for parameter in model.parameters():  # random init leaves some weights at zero: make every part count
        parameter.data.normal_(0.0, 0.3)
    return model


def right_padded(lengths: list[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(1, SMALL["vocab_size"], (length,), generator=generator)
    return ids


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_last_token_rewards_equal_the_full_models_for_right_padded_rows(family) -> None:
    model = classifier(family)
    assert supports_last_token(model)
    ids = right_padded([23, 5, 17, 1, 23, 9])
    ids[0, 10] = PAD  # a pad token inside a row: both read the rightmost non-pad token
    with torch.inference_mode():
        full = model(input_ids=ids).logits[:, 0]
        fast = last_token_rewards(model, ids)
    assert fast.shape == full.shape == (6,)
    assert torch.allclose(fast, full, atol=1e-5, rtol=1e-5), (fast, full)
    assert full.std() > 0.1  # distinct rows, distinct rewards: the comparison is not between constants


def test_a_row_is_read_where_transformers_reads_it() -> None:
    ids = torch.tensor([[5, 6, 7, PAD, PAD], [5, PAD, 7, 8, 9], [PAD, 6, PAD, PAD, PAD]])
    assert pooled_positions(ids, PAD).tolist() == [2, 4, 1]


def test_the_model_runs_whole_again_after_the_last_token_pass() -> None:
    model = classifier("llama")
    ids = right_padded([12, 7])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        last_token_rewards(model, ids)
        after = model(input_ids=ids).logits  # the hook that stops at the last layer is gone
    assert torch.equal(before, after)
    assert not model.model.layers[-1]._forward_pre_hooks


def test_models_it_cannot_reproduce_run_whole() -> None:
    from transformers import LlamaForSequenceClassification

    assert not supports_last_token(classifier("mistral", sliding_window=8))  # the last layer sees a window
    assert not supports_last_token(
        classifier("llama", pad_token_id=None)
    )  # transformers reads the last column

    class CustomHead(LlamaForSequenceClassification):  # e.g. remote code that reads its rewards its own way
        def forward(self, input_ids=None, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    custom = CustomHead(classifier("llama").config)
    assert not supports_last_token(custom)
    assert not supports_last_token(torch.nn.Linear(2, 2))
