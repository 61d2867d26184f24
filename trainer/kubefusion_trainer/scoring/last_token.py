"""A reward from a decoder-only sequence classifier without computing what the reward does not read.

A transformers `*ForSequenceClassification` model reads one position per row (the rightmost token that is
not the model's pad token) and scores every position to get there. In the last decoder layer only that
position's output matters: every position still needs its key and value (the last token attends to them),
but the query, the attention, the output projection, the MLP, the final norm and the score head are needed
at one position per row only. `last_token_rewards` runs the model up to the last layer unchanged and that
layer at one position per row; the result is the model's own reward up to float rounding (see
tests/unit/dataplane/test_score_last_token.py).

What it saves is about one layer's worth of work minus the keys and values: most of the forward pass of a
2-layer model (the tiny test model), ~3% of a 32-layer 8B one. It applies only to the layer types listed in
LAST_LAYER_TYPES, when the model uses transformers' generic classifier forward, has a pad token, no sliding
window in its last layer, and gets no attention mask (right-padded rows of a causal model); anything else
runs the whole model.
"""

from __future__ import annotations

from typing import Any

# Decoder layers laid out as norm -> attention (q/k/v/o projections, rotary, optional per-head q/k norms)
# -> residual -> norm -> MLP -> residual; each is checked against the full model in the unit test.
LAST_LAYER_TYPES = frozenset(
    {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
)


class _LastLayerReached(Exception):
    """Stops the base model at the input of its last layer (raised by a forward pre-hook)."""

    def __init__(self, hidden: Any, kwargs: dict[str, Any]) -> None:
        super().__init__("last decoder layer reached")
        self.hidden = hidden
        self.kwargs = kwargs


def supports_last_token(model: Any) -> bool:
    """Whether `last_token_rewards` gives this model's own rewards (see the module docstring)."""
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:  # older transformers: each classifier has its own forward
        return False
    if not isinstance(model, GenericForSequenceClassification):
        return False
    if type(model).forward is not GenericForSequenceClassification.forward:
        return False  # a subclass that reads its rewards some other way
    config = model.config.get_text_config()
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(base, "layers", None)
    if config.pad_token_id is None or not layers or getattr(base, "norm", None) is None:
        return False
    last = layers[-1]
    if type(last).__name__ not in LAST_LAYER_TYPES or not type(last).__module__.startswith("transformers."):
        return False
    attention = last.self_attn
    window = getattr(attention, "sliding_window", getattr(config, "sliding_window", None))
    return window is None


def pooled_positions(input_ids: Any, pad_token_id: int) -> Any:
    """The position each row's reward is read at: the rightmost token that is not the pad (as transformers)."""
    import torch

    not_pad = (input_ids != pad_token_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * not_pad).argmax(-1)


def last_token_rewards(model: Any, input_ids: Any) -> Any:
    """model(input_ids).logits[:, 0] for right-padded rows of a causal model, with the last layer at one token."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    base = getattr(model, model.base_model_prefix)
    layer = base.layers[-1]

    def stop(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _LastLayerReached(args[0] if args else kwargs["hidden_states"], kwargs)

    handle = layer.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        base(input_ids=input_ids)
        raise RuntimeError(f"{type(base).__name__} returned without running its last layer")
    except _LastLayerReached as reached:
        hidden, kwargs = reached.hidden, reached.kwargs
    finally:
        handle.remove()

    rows, length, _ = hidden.shape
    row = torch.arange(rows, device=hidden.device)
    last = pooled_positions(input_ids, model.config.get_text_config().pad_token_id).long()
    attention = layer.self_attn
    head_dim = attention.head_dim

    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed[row, last]).view(rows, 1, -1, head_dim)
    key = attention.k_proj(normed).view(rows, length, -1, head_dim)
    value = attention.v_proj(normed).view(rows, length, -1, head_dim).transpose(1, 2)
    if hasattr(attention, "q_norm"):  # Qwen3: RMS norm per head before the rotary embedding
        query, key = attention.q_norm(query), attention.k_norm(key)
    cos, sin = kwargs["position_embeddings"]  # (1 or rows, length, head_dim)
    cos, sin = cos.expand(rows, -1, -1), sin.expand(rows, -1, -1)
    query = _rotate(query.transpose(1, 2), cos[row, last].unsqueeze(1), sin[row, last].unsqueeze(1))
    key = _rotate(key.transpose(1, 2), cos, sin)
    groups = attention.num_key_value_groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # causal at the read position: it sees itself and what came before, never the padding after it
    sees = torch.arange(length, device=hidden.device)[None, :] <= last[:, None]
    attended = scaled_dot_product_attention(
        query, key, value, attn_mask=sees[:, None, None, :], scale=attention.scaling
    )

    out = hidden[row, last] + attention.o_proj(attended.reshape(rows, -1))
    out = out + layer.mlp(layer.post_attention_layernorm(out))
    return model.score(base.norm(out))[:, 0]


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary position embedding of (rows, heads, positions, head_dim) by cos/sin of (rows, positions, head_dim)."""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
