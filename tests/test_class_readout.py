"""The tower's last layer computed for the class token alone gives the features of the full forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_clip import TINY, save_tiny_tower
from torch import nn

from aligngemini.branches.semantic import clip
from aligngemini.branches.semantic.class_readout import class_token_states, is_clip_layout

torch.set_num_threads(2)


def _pixels(size: int = TINY["image_size"], n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _full(tower: clip.ClipTower, x: torch.Tensor, features: str) -> torch.Tensor:
    """The features as the transformers model's own forward pass gives them (every token of every layer)."""
    out = tower._run(x, output_hidden_states=True)
    if features == "embed":
        return tower._embed(out)
    return torch.cat([h[:, 0] for h in out.hidden_states[1:]], dim=-1)


@pytest.fixture
def tower(tmp_path: Path) -> clip.ClipTower:
    tower = clip.load_tower(str(save_tiny_tower(tmp_path / "t", seed=3)))
    with torch.no_grad():  # weights large enough that every token's value reaches the class token
        for layer in tower._layers():
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    return tower


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("features", ["cls-layers", "embed"])
def test_class_token_readout_equals_the_full_forward_pass(
    tower: clip.ClipTower, attention: str, features: str
) -> None:
    tower.set_attention(attention)
    x = _pixels()
    with torch.no_grad():
        got, want = tower(x, features), _full(tower, x, features)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # it is the last layer's class token that is computed apart: a change to another token moves it
    y = x.clone()
    y[0, :, -8:, -8:] += 3.0  # the last patch of the first image only
    with torch.no_grad():
        moved = tower(y, features)
    assert not torch.allclose(moved[0], got[0], atol=1e-4)
    torch.testing.assert_close(moved[1:], got[1:], rtol=1e-5, atol=1e-5)


def test_readout_at_another_input_size_fewer_layers_and_bf16(tower: clip.ClipTower) -> None:
    tower.set_input_size(2 * TINY["image_size"])  # position embeddings interpolated
    x = _pixels(2 * TINY["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(
            tower(x, "cls-layers"), _full(tower, x, "cls-layers"), rtol=1e-5, atol=1e-5
        )
        tower.set_layers(1)
        got = tower(x, "cls-layers")
        assert got.shape[-1] == TINY["hidden_size"]
        torch.testing.assert_close(got, _full(tower, x, "cls-layers"), rtol=1e-5, atol=1e-5)
        tower.set_precision("bf16")
        if tower.compute_precision == "bf16":  # where bf16 is native: the same numbers within its rounding
            torch.testing.assert_close(
                tower(x, "cls-layers").float(), _full(tower, x, "cls-layers").float(), rtol=0.05, atol=0.05
            )


def test_states_keep_every_token_but_the_last_layers(tower: clip.ClipTower) -> None:
    x = _pixels()
    with torch.no_grad():
        states = class_token_states(tower._vision, x)
    tokens = (TINY["image_size"] // TINY["patch_size"]) ** 2 + 1
    assert [s.shape[1] for s in states] == [tokens] * (TINY["num_hidden_layers"] - 1) + [1]


def test_other_layouts_take_the_full_forward_pass() -> None:
    assert not is_clip_layout(nn.Linear(2, 2))
    bare = nn.Module()
    bare.encoder = nn.Module()
    bare.encoder.layers = nn.ModuleList()
    assert not is_clip_layout(bare)  # no layers, no embeddings
