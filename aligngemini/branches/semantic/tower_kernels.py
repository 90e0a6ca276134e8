"""How a CLIP-style tower's arithmetic is carried out: which attention kernel, and its MLP activation in one
pass. Neither changes the function the tower computes, only the rounding; both were chosen by measurement on
the 2-core CPU dev box (ViT-B/16 at 192 px, 145 tokens, bf16).

- Attention ``"sdpa"`` is PyTorch's fused kernel (``scaled_dot_product_attention``, flash on a CPU) and
  ``"eager"`` the plain matrix product, fp32 softmax and matrix product that transformers calls eager. At 145
  tokens the plain products ran 5.4 ms per image against the fused kernel's 8.8. The fused kernel keeps the
  logits in fp32 where the plain product rounds them to bfloat16, so the two differ by bf16 rounding.
- ``fold_quick_gelu``: CLIP's ``quick_gelu(h) = h * sigmoid(1.702 h)`` takes three passes over the MLP's
  widest activation (a scale, a sigmoid, a product). Since ``quick_gelu(h) = silu(1.702 h) / 1.702``, scaling
  ``fc1`` by 1.702 and ``fc2`` by 1 / 1.702 leaves the same function with SiLU, one fused pass (3.3 to 1.6 ms
  per image).
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTION_KINDS = ("sdpa", "eager")
QUICK_GELU_SCALE = 1.702  # quick_gelu(h) = h * sigmoid(1.702 h)

__all__ = ["ATTENTION_KINDS", "check_attention", "fold_quick_gelu", "unfold_quick_gelu"]


def check_attention(kind: str, where: str) -> str:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"{where}: attention {kind!r} is unknown; use one of {ATTENTION_KINDS}")
    return kind


def fold_quick_gelu(model: nn.Module) -> int:
    """Rewrite every MLP ``fc2(quick_gelu(fc1(x)))`` in ``model`` as the same function with SiLU (see the
    module doc), and name the new activation in the configs so that a saved copy reloads as it now computes.
    Returns how many MLPs were rewritten (0 for a tower without quick_gelu)."""
    from transformers.activations import QuickGELUActivation

    folded = 0
    for module in model.modules():
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if not (
            isinstance(getattr(module, "activation_fn", None), QuickGELUActivation)
            and isinstance(fc1, nn.Linear)
            and isinstance(fc2, nn.Linear)
        ):
            continue
        with torch.no_grad():
            fc1.weight.mul_(QUICK_GELU_SCALE)
            if fc1.bias is not None:
                fc1.bias.mul_(QUICK_GELU_SCALE)
            fc2.weight.div_(QUICK_GELU_SCALE)
        module.activation_fn = nn.SiLU()
        folded += 1
    if folded:
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "hidden_act", None) == "quick_gelu":
                config.hidden_act = "silu"
    return folded


def unfold_quick_gelu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a tower ``fold_quick_gelu`` rewrote, with every MLP's ``fc1`` and ``fc2`` scaled back:
    the weights of the original quick_gelu tower, for code that computes quick_gelu itself (a timm ViT)."""
    out = dict(state)
    for key, value in state.items():
        if ".mlp.fc1." in key:
            out[key] = value / QUICK_GELU_SCALE
        elif key.endswith(".mlp.fc2.weight"):
            out[key] = value * QUICK_GELU_SCALE
    return out
