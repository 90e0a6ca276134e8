"""The tower's kernels: quick_gelu folded into SiLU computes the same function, the plain attention products
equal the fused kernel, and bundles and towers name the kernel they use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_clip import TINY, save_tiny_tower, tiny_clip, tiny_semantic_section
from torch import nn

from aligngemini.branches import build_branch
from aligngemini.branches.semantic import clip
from aligngemini.branches.semantic.tower_kernels import fold_quick_gelu

torch.set_num_threads(2)
CPU = torch.device("cpu")


def _pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, TINY["image_size"], TINY["image_size"], generator=g)


def _hidden(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(pixel_values=x, output_hidden_states=True).hidden_states)


def test_folding_quick_gelu_keeps_every_layer_output() -> None:
    model, reference = tiny_clip(seed=4), tiny_clip(seed=4)
    with torch.no_grad():  # weights large enough that the activation's curve matters, not only its slope
        for mlp in (layer.mlp for layer in model.vision_model.encoder.layers):
            mlp.fc1.weight.mul_(8)
        for mlp in (layer.mlp for layer in reference.vision_model.encoder.layers):
            mlp.fc1.weight.mul_(8)
    x = _pixels()
    want = _hidden(reference, x)
    assert fold_quick_gelu(model) == TINY["num_hidden_layers"]
    assert all(isinstance(layer.mlp.activation_fn, nn.SiLU) for layer in model.vision_model.encoder.layers)
    assert model.config.hidden_act == "silu"
    for got, ref in zip(_hidden(model, x), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert fold_quick_gelu(model) == 0  # nothing left to fold: a second call changes nothing
    torch.testing.assert_close(_hidden(model, x)[-1], want[-1], rtol=1e-5, atol=1e-5)


def test_a_folded_tower_saved_and_reloaded_computes_the_same(tmp_path: Path) -> None:
    tower = clip.load_tower(str(save_tiny_tower(tmp_path / "orig", seed=5)))
    assert tower.folded_mlps == TINY["num_hidden_layers"] and tower.variant == "-silu"
    tower.model.save_pretrained(str(tmp_path / "saved"), safe_serialization=True)  # as a LoRA export does
    again = clip.load_tower(str(tmp_path / "saved"))
    assert again.folded_mlps == 0 and again.variant == ""  # SiLU by its config: not folded a second time
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(again(x, "cls-layers"), tower(x, "cls-layers"), rtol=1e-5, atol=1e-5)


def test_a_bundle_names_the_attention_kernel(tmp_path: Path) -> None:
    section = tiny_semantic_section(tmp_path, seed=7)
    fused = build_branch("semantic", section, tmp_path, device=CPU, dtype=torch.float32)
    plain = build_branch(
        "semantic", {**section, "attention": "eager"}, tmp_path, device=CPU, dtype=torch.float32
    )
    assert fused.tower.attention == "sdpa" and plain.tower.attention == "eager"
    assert plain.tower.model.config._attn_implementation == "eager"
    assert fused.tower.variant == "-silu" and plain.tower.variant == "-eager-silu"  # features cached apart
    x = _pixels()
    with torch.no_grad():
        for features in clip.FEATURES:
            torch.testing.assert_close(
                plain.tower(x, features), fused.tower(x, features), rtol=1e-5, atol=1e-5
            )
        plain.tower.set_merge_tokens(2)
        fused.tower.set_merge_tokens(2)
        torch.testing.assert_close(
            plain.tower(x, "cls-layers"), fused.tower(x, "cls-layers"), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="attention 'flash' is unknown"):
        build_branch("semantic", {**section, "attention": "flash"}, tmp_path, device=CPU, dtype=torch.float32)
