"""Tiny Hugging Face transformers from configs (no downloads), built the one way every transformer test needs.

Sizes are the caller's; what is shared is the recipe: every dropout probability 0 (the analysis repeats
forward passes that must agree), random weights under seed 0 and train mode. ``transformers`` is imported
on call, so a module holding plain-torch builders next to these imports without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["gpt2", "llama", "vit"]


def _seeded(model_class: type[nn.Module], config: Any, attn: str | None) -> nn.Module:
    """Random weights under seed 0 in train mode, so twin builds start from the same model."""
    if attn is not None:
        config._attn_implementation = attn
    torch.manual_seed(0)
    return model_class(config).train()


def gpt2(
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    positions: int,
    model_class: type[nn.Module] | None = None,
    attn: str | None = None,
    **extra: Any,
) -> nn.Module:
    """GPT-2 LM (lm_head tied to wte unless extra says otherwise) with every dropout off."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra,
    )  # fmt: skip
    return _seeded(model_class or transformers.GPT2LMHeadModel, config, attn)


def llama(
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    positions: int,
    model_class: type[nn.Module] | None = None,
    attn: str | None = None,
    **extra: Any,
) -> nn.Module:
    """Llama causal LM (RMSNorm, RoPE, SwiGLU of width 2x hidden), attention dropout off."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
        attention_dropout=0.0, **extra,
    )  # fmt: skip
    return _seeded(model_class or transformers.LlamaForCausalLM, config, attn)


def vit(
    *,
    image: int,
    hidden: int,
    layers: int,
    heads: int,
    labels: int,
    model_class: type[nn.Module] | None = None,
    attn: str | None = None,
) -> nn.Module:
    """ViT classifier on 3-channel images in 4x4 patches, MLP width 2x hidden, every dropout off."""
    import transformers

    config = transformers.ViTConfig(
        image_size=image, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden, num_labels=labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return _seeded(model_class or transformers.ViTForImageClassification, config, attn)
