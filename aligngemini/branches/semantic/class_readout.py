"""A CLIP-style tower run for its class tokens alone: the last layer computed for the class token only.

The ``cls-layers`` features and the ``embed`` output read nothing of the last layer but its class token. In a
pre-norm transformer layer, the output at one token depends on the other tokens only through attention's keys
and values. So the last layer needs the keys and values of every token, and the query, attention, output
projection and MLP of the class token alone. The function is the same; at 145 tokens (ViT-B/16 at 192 px) the
last layer then costs about a sixth of a full one: some 7% of the tower's multiply-adds.
"""

from __future__ import annotations

import torch
from torch import nn


def is_clip_layout(vision_model: nn.Module) -> bool:
    """The CLIP vision layout this module runs: embeddings, ``pre_layrnorm``, pre-norm encoder layers
    (``layer_norm1`` / ``self_attn`` with q/k/v/out projections / ``layer_norm2`` / ``mlp``), ``post_layernorm``."""
    layers = getattr(getattr(vision_model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    if not all(hasattr(vision_model, p) for p in ("embeddings", "pre_layrnorm", "post_layernorm")):
        return False
    parts = ("layer_norm1", "self_attn", "layer_norm2", "mlp")
    projections = ("q_proj", "k_proj", "v_proj", "out_proj")
    return all(hasattr(layer, p) for layer in layers for p in parts) and all(
        hasattr(layer.self_attn, p) for layer in layers for p in projections
    )


def layer_attention(
    attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None, *, queries: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn`` (a ``CLIPAttention``) over every token of ``x`` [B, N, C], queried by the first ``queries``
    tokens (None: all), by the attention function the layer itself uses (its config's implementation, as
    ``CLIPAttention.forward`` picks it). ``bias``: [B, 1, 1, N] added to the logits in the query's dtype (token
    merging's proportional attention). Returns the output [B, Q, C] and the keys [B, heads, N, D]."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.clip.modeling_clip import eager_attention_forward

    b, n, _ = x.shape
    nq = n if queries is None else queries
    heads = int(attn.num_heads)
    q = attn.q_proj(x[:, :nq]).view(b, nq, heads, -1).transpose(1, 2)
    k, v = (proj(x).view(b, n, heads, -1).transpose(1, 2) for proj in (attn.k_proj, attn.v_proj))
    function = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, eager_attention_forward
    )
    bias = None if bias is None else bias.to(q.dtype)
    out, _ = function(attn, q, k, v, bias, scaling=float(attn.scale), dropout=0.0)  # [B, Q, heads, D]
    return attn.out_proj(out.reshape(b, nq, -1)), k


def class_token_layer(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One pre-norm encoder ``layer``'s output [B, 1, C] at the class token of ``x`` [B, N, C]
    (``bias``: see :func:`layer_attention`)."""
    x = x[:, :1] + layer_attention(layer.self_attn, layer.layer_norm1(x), bias, queries=1)[0]
    return x + layer.mlp(layer.layer_norm2(x))


def class_token_states(
    vision_model: nn.Module, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False
) -> list[torch.Tensor]:
    """Each layer's output [B, N, C], the last one's for the class token only ([B, 1, C]); the class token of
    every entry equals the full forward pass's (the same operations on the same numbers)."""
    x = vision_model.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    x = vision_model.pre_layrnorm(x)
    *body, last = vision_model.encoder.layers
    states = []
    for layer in body:
        x = layer(x, None)
        states.append(x)
    states.append(class_token_layer(last, x))
    return states
