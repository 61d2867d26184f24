"""Tiny local models for tests and the quickstart: nothing is downloaded.

A byte-level BPE tokenizer trained on a few KB, a chat template with {% generation %} markers (so trl's
assistant_only_loss works), a 2-layer Llama causal LM and a 2-layer Llama reward model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! "
    "What is 12 + 34? The answer is 46. Reverse the word hello: olleh. Write a python function def f(x): "
    "return x + 1. import math print assert True False None if else for while in range \\boxed{42} "
    "question answer please explain why because step first then finally sum total result "
)


def build_tokenizer(path: str | Path, corpus: str = DEFAULT_CORPUS, vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer on `corpus`, save it with the chat template, return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    fast.save_pretrained(str(path))
    return fast


def _llama_config(tokenizer: Any, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_causal_lm(path: str | Path, tokenizer: Any, seed: int = 0, **config: Any) -> Any:
    """A random-init 2-layer Llama that samples by default (transformers serve needs do_sample)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, **config))
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


def build_reward_model(path: str | Path, tokenizer: Any, seed: int = 0, **config: Any) -> Any:
    """A random-init 2-layer Llama sequence classifier with one output (a reward)."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1, **config))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


def build_tiny_world(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Tokenizer, one causal LM and one reward model under `root`; returns their paths."""
    root = Path(root)
    tokenizer = build_tokenizer(root / "tokenizer")
    paths = {"tokenizer": root / "tokenizer", "model": root / "model", "reward": root / "reward"}
    build_causal_lm(paths["model"], tokenizer, seed=seed)
    build_reward_model(paths["reward"], tokenizer, seed=seed + 1)
    return paths
