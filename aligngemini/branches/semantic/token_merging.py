"""Token merging (ToMe, Bolya et al., ICLR 2023) for a CLIP-style ViT image tower.

After each layer's attention, the ``r`` most similar pairs of patch tokens (cosine similarity of their keys,
averaged over heads) are merged into one token, their features averaged by how many patches each already
stands for. Later layers then multiply fewer tokens: on a CPU, where the tower's matrix products run at the
machine's peak and so cannot get cheaper any other way, this is what cuts the tower's cost. Attention is
*proportional*: a merged token's key counts once per patch it stands for (``log(size)`` added to its
logits), so with nothing merged the forward pass is the plain one. The class token is never merged.

The features change with ``r``: a head must be trained on features computed with the same ``r``.
"""

from __future__ import annotations

import torch
from torch import nn

from aligngemini.branches.semantic.class_readout import class_token_layer, is_clip_layout, layer_attention

__all__ = ["check_mergeable", "merge_pairs", "merged_hidden_states"]


def merge_pairs(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching: ``x`` [B, N, C] (token 0 the class token), ``size`` [B, N, 1] patches per token,
    ``metric`` [B, N, K] what similarity is measured on. Tokens alternate between two sets; each token of the
    first set (bar the class token) finds its most similar token of the second, and the ``r`` best-matched
    are averaged into their matches. Returns [B, N - r, C] and [B, N - r, 1], the class token first and the
    kept tokens in their original order."""
    n_a = (x.shape[1] + 1) // 2
    r = min(r, n_a - 1)  # the class token (in set a) never merges
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # [B, Na, Nb]
    scores[:, 0, :] = -torch.inf
    best, match = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]  # [B, Na, 1]
    kept = order[:, r:].sort(dim=1).values  # the class token, at -inf, is among the kept and sorts first
    merged = order[:, :r]
    into = match[..., None].gather(1, merged)

    def combine(t: torch.Tensor) -> torch.Tensor:
        a, b = t[:, ::2], t[:, 1::2]
        width = t.shape[-1]
        b = b.scatter_reduce(1, into.expand(-1, -1, width), a.gather(1, merged.expand(-1, -1, width)), "sum")
        return torch.cat([a.gather(1, kept.expand(-1, -1, width)), b], dim=1)

    total = combine(x * size)
    size = combine(size)
    return total / size, size


def check_mergeable(vision_model: nn.Module) -> None:
    """Raise unless ``vision_model`` has the CLIP layout this module runs (``class_readout.is_clip_layout``)."""
    if not is_clip_layout(vision_model):
        raise ValueError("token merging needs a CLIP-style tower (embeddings, pre_layrnorm, encoder.layers of "
                         "layer_norm1 / self_attn with q/k/v/out projections / layer_norm2 / mlp, "
                         "post_layernorm)")  # fmt: skip


def _size_bias(size: torch.Tensor) -> torch.Tensor:
    """Proportional attention's logit bias [B, 1, 1, N]: log of each token's size [B, N, 1]."""
    return size.log().view(size.shape[0], 1, 1, -1)


def _attention(
    attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention, proportional to ``size`` (None: every token one patch); returns the output and
    the keys averaged over heads."""
    out, k = layer_attention(attn, x, None if size is None else _size_bias(size))
    return out, k.mean(dim=1)


def merged_hidden_states(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    r: int,
    *,
    interpolate_pos_encoding: bool = False,
    class_only_last: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the tower merging ``r`` token pairs after each layer's attention. Returns each layer's output
    [B, N_l, C] and the matching sizes [B, N_l, 1] (patches per token; the class token is row 0, size 1).
    ``class_only_last``: the last layer for the class token alone (``class_readout``; its entry is [B, 1, C])."""
    x = vision_model.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    x = vision_model.pre_layrnorm(x)
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=torch.float32, device=x.device)
    states, sizes = [], []
    merged = False  # until the first merge every size is 1 and attention is the plain one
    layers = list(vision_model.encoder.layers)
    for i, layer in enumerate(layers):
        if class_only_last and i == len(layers) - 1:  # the class token is never merged: no merge needed
            states.append(class_token_layer(layer, x, _size_bias(size) if merged else None))
            sizes.append(size[:, :1])
            break
        out, keys = _attention(layer.self_attn, layer.layer_norm1(x), size if merged else None)
        x = x + out
        tokens = x.shape[1]
        x, size = merge_pairs(x, size, keys.float(), r)
        merged = merged or x.shape[1] < tokens
        x = x + layer.mlp(layer.layer_norm2(x))
        states.append(x)
        sizes.append(size)
    return states, sizes
