"""Token merging in the CLIP tower: exact with nothing merged, mass-preserving merges, proportional attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_clip import TINY, save_tiny_tower, tiny_clip, tiny_semantic_section

from aligngemini.branches import build_branch
from aligngemini.branches.semantic import clip
from aligngemini.branches.semantic.clip_task import ClipModelConfig
from aligngemini.branches.semantic.token_merging import _attention, merge_pairs, merged_hidden_states
from aligngemini.config import ConfigError

torch.set_num_threads(2)
CPU = torch.device("cpu")
TOKENS = (TINY["image_size"] // TINY["patch_size"]) ** 2 + 1  # patches and the class token


def _pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, TINY["image_size"], TINY["image_size"], generator=g)


@pytest.mark.parametrize("kind", ["sdpa", "eager"])
def test_merging_nothing_is_the_plain_forward_pass(kind: str) -> None:
    model = tiny_clip(seed=1)
    model.set_attn_implementation(kind)
    x = _pixels()
    with torch.no_grad():
        want = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        got, sizes = merged_hidden_states(model.vision_model, x, 0)
    assert len(got) == len(want) == TINY["num_hidden_layers"]
    for g, w, s in zip(got, want, sizes, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert torch.equal(s, torch.ones(2, TOKENS, 1))


def test_each_layer_merges_r_pairs_and_keeps_the_class_token() -> None:
    model = tiny_clip(seed=1)
    x = _pixels()
    with torch.no_grad():
        plain = merged_hidden_states(model.vision_model, x, 0)[0]
        states, sizes = merged_hidden_states(model.vision_model, x, 3)
    assert [h.shape[1] for h in states] == [TOKENS - 3 * (i + 1) for i in range(len(states))]
    for h, s in zip(states, sizes, strict=True):
        assert s[:, 0].eq(1).all()  # the class token stands for itself alone
        assert s.sum(dim=1).eq(TOKENS).all()  # every patch is in exactly one token
        assert torch.isfinite(h).all()
    # the first layer's class token is computed before any merge, so it is unchanged
    torch.testing.assert_close(states[0][:, 0], plain[0][:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[-1][:, 0], plain[-1][:, 0], atol=1e-4)  # later ones see merged tokens


@pytest.mark.parametrize("kind", ["sdpa", "eager"])
def test_the_last_layer_for_the_class_token_alone_keeps_every_class_token(kind: str) -> None:
    """With tokens merged, the last layer's class token still attends to every merged token in proportion
    to its size; computing it alone changes nothing the cls-layers features read."""
    model = tiny_clip(seed=2)
    model.set_attn_implementation(kind)
    with torch.no_grad():  # sharper attention, so that the size bias visibly matters
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.k_proj.weight.mul_(4)
    x = _pixels(3)
    with torch.no_grad():
        full, full_sizes = merged_hidden_states(model.vision_model, x, 4)
        short, short_sizes = merged_hidden_states(model.vision_model, x, 4, class_only_last=True)
    assert short[-1].shape[1] == 1 and short_sizes[-1].shape[1] == 1
    for f, s in zip(full, short, strict=True):
        torch.testing.assert_close(s[:, 0], f[:, 0], rtol=1e-5, atol=1e-5)
    for f, s in zip(full_sizes[:-1], short_sizes[:-1], strict=True):
        assert torch.equal(f, s)


@pytest.mark.parametrize("kind", ["sdpa", "eager"])
def test_the_class_only_last_layer_adds_the_size_bias_as_the_full_layer_does_under_bf16(kind: str) -> None:
    """Under bf16 autocast the queries are bf16: both passes add the size bias in the query's dtype, so the last
    class token is the same numbers (a float32 bias in one of them moved it by 0.004)."""
    model = tiny_clip(seed=2)
    model.set_attn_implementation(kind)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.k_proj.weight.mul_(4)
    x = _pixels(3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = merged_hidden_states(model.vision_model, x, 4)
        short, _ = merged_hidden_states(model.vision_model, x, 4, class_only_last=True)
    assert torch.equal(short[-1][:, 0], full[-1][:, 0])


def test_merge_pairs_averages_the_most_similar_tokens_by_size() -> None:
    # tokens 0 (class) 1 2 3 4 5: set a = 0 2 4, set b = 1 3 5; token 2 duplicates token 3's direction
    metric = torch.tensor([[1.0, 0], [0, 1], [1, 1], [1, 1.01], [-1, 0.2], [0.3, -1]])[None]
    x = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    size = torch.tensor([1.0, 1, 2, 1, 1, 3]).view(1, 6, 1)
    merged, new_size = merge_pairs(x, size, metric, 1)
    assert merged.shape == (1, 5, 2) and new_size.flatten().tolist() == [1, 1, 1, 3, 3]
    torch.testing.assert_close(merged[0, 0], x[0, 0])  # the class token first, untouched
    torch.testing.assert_close(merged[0, 1], x[0, 4])  # the kept token of set a
    torch.testing.assert_close(merged[0, 3], (2 * x[0, 2] + x[0, 3]) / 3)  # 2 (size 2) into 3 (size 1)
    torch.testing.assert_close((merged * new_size).sum(dim=1), (x * size).sum(dim=1))  # nothing lost
    same, same_size = merge_pairs(x, size, metric, 0)
    assert same is x and same_size is size
    # the class token can never be merged, even when asked for more pairs than set a holds
    assert merge_pairs(x, size, metric, 10)[0].shape == (1, 4, 2)


@pytest.mark.parametrize("kind", ["sdpa", "eager"])
def test_a_merged_pair_of_equal_tokens_attends_like_the_pair(kind: str) -> None:
    """Proportional attention: one token standing for two patches weighs as the two equal tokens did."""
    model = tiny_clip(seed=2)
    model.set_attn_implementation(kind)
    attn = model.vision_model.encoder.layers[0].self_attn
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, TINY["hidden_size"], generator=g)
    doubled = torch.cat([x, x[:, 4:5]], dim=1)  # token 4 twice
    with torch.no_grad():
        want, _ = _attention(attn, doubled, torch.ones(1, 6, 1))
        got, keys = _attention(attn, x, torch.tensor([1.0, 1, 1, 1, 2]).view(1, 5, 1))
    torch.testing.assert_close(got, want[:, :5], rtol=1e-5, atol=1e-5)
    assert keys.shape == (1, 5, TINY["hidden_size"] // TINY["num_attention_heads"])


def test_merged_layers_run_the_attention_function_the_tower_is_set_to() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    biased = []

    def spy(*args: object, **kwargs: object) -> object:
        biased.append(args[4] is not None)  # the size bias, passed once a layer has merged tokens
        return sdpa_attention_forward(*args, **kwargs)

    AttentionInterface.register("aligngemini_test_spy", spy)
    model = tiny_clip(seed=1)
    model.set_attn_implementation("aligngemini_test_spy")
    with torch.no_grad():
        merged_hidden_states(model.vision_model, _pixels(), 2)
    assert biased == [False] + [True] * (TINY["num_hidden_layers"] - 1)


def test_a_bundle_and_a_recipe_name_the_merge(tmp_path: Path) -> None:
    section = tiny_semantic_section(tmp_path, seed=0)
    plain = build_branch("semantic", section, tmp_path, device=CPU, dtype=torch.float32)
    merged = build_branch(
        "semantic", {**section, "merge_tokens": 2}, tmp_path, device=CPU, dtype=torch.float32
    )
    assert plain.tower.merge_tokens == 0 and merged.tower.merge_tokens == 2
    assert merged.tower.variant == "-M2-silu" and plain.tower.variant == "-silu"  # features cached apart
    x = _pixels(3)
    with torch.no_grad():
        for features in clip.FEATURES:
            a, b = plain.tower(x, features), merged.tower(x, features)
            assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-5)
    scores = merged.score([p[None] for p in x])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="merge_tokens -1"):
        build_branch("semantic", {**section, "merge_tokens": -1}, tmp_path, device=CPU, dtype=torch.float32)
    with pytest.raises(ConfigError, match="merge_tokens"):
        ClipModelConfig(merge_tokens=-2)


def test_only_a_clip_layout_can_merge(tmp_path: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = {k: TINY[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "image_size", "patch_size")}  # fmt: skip
    SiglipVisionModel(SiglipVisionConfig(**cfg)).save_pretrained(str(tmp_path / "siglip"))
    tower = clip.load_tower(str(tmp_path / "siglip"))
    with pytest.raises(ValueError, match="CLIP-style tower"):
        tower.configure(merge_tokens=2)
    assert (
        clip.load_tower(str(save_tiny_tower(tmp_path / "clip"))).configure(merge_tokens=2).merge_tokens == 2
    )
