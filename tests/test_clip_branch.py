"""The semantic-clip branch: built from a bundle config section with tiny towers saved locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import (
    TINY,
    export_onnx,
    photo,
    quantize_int8,
    save_tiny_tower,
    tiny_clip,
    tiny_semantic_section,
)

from aligngemini.branches import build_branch
from aligngemini.branches.base import Branch
from aligngemini.branches.semantic import clip
from aligngemini.decode import load_image

torch.set_num_threads(2)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bundle")
    return out, tiny_semantic_section(out, seed=0)


def _images(n: int = 5) -> list:
    return [load_image(photo(i, size=(40 + 17 * i, 30 + 9 * i))) for i in range(n)]


def test_builds_from_config_and_scores(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    branch = build_branch("semantic", section, out, device=CPU, dtype=torch.float32)
    assert isinstance(branch, Branch) and isinstance(branch, clip.ClipSemanticBranch)
    assert branch.name == "semantic" and branch.threshold == 0.5
    prepared = [branch.prepare(im) for im in _images()]
    assert all(p.shape == (1, 3, TINY["image_size"], TINY["image_size"]) for p in prepared)  # one view
    scores = branch.score(prepared)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores.std() > 1e-3, "the head should respond to content"
    one_by_one = np.concatenate([branch.score([p]) for p in prepared])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-6)
    assert branch.score([]).shape == (0,)


def test_scores_equal_head_on_normalised_embedding(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    branch = build_branch("semantic", section, out, device=CPU, dtype=torch.float32)
    images = _images(3)
    emb = clip.embed_images(images, branch.tower, batch_size=2, resize="squash")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    head = clip.load_head(out / "semantic_head.safetensors")
    with torch.no_grad():
        expected = torch.sigmoid(head.net(torch.from_numpy(emb))[:, 0]).double().numpy()
    np.testing.assert_allclose(branch.score([branch.prepare(im) for im in images]), expected, atol=1e-5)


def test_cannot_explain(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    branch = build_branch("semantic", section, out, device=CPU, dtype=torch.float32)
    assert branch.can_explain is False
    with pytest.raises(NotImplementedError, match="semantic-vlm"):
        branch.explain(_images(1)[0])


def test_prepare_keeps_the_whole_scene(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    branch = build_branch("semantic", section, out, device=CPU, dtype=torch.float32)
    # a wide image whose left third is black and the rest white: squash keeps the black part, crop loses it
    arr = np.full((30, 90, 3), 255, dtype=np.uint8)
    arr[:, :30] = 0
    (x,) = branch.prepare(load_image(arr))
    black = (0 - clip.CLIP_MEAN[0]) / clip.CLIP_STD[0]
    assert torch.isclose(x[0, :, :8], torch.tensor(black), atol=0.05).all()
    cropped = clip.preprocess_image(load_image(arr).image, 32, mode="crop")
    assert not torch.isclose(cropped[0, :, :8], torch.tensor(black), atol=0.05).any()


def test_several_views_average_the_head_logits(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    views = ["squash", "crop", "squash+flip"]
    branch = build_branch("semantic", {**section, "views": views}, out, device=CPU, dtype=torch.float32)
    images = _images(3)
    prepared = [branch.prepare(im) for im in images]
    assert all(p.shape == (3, 3, TINY["image_size"], TINY["image_size"]) for p in prepared)
    flipped = clip.preprocess_image(
        images[0].image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), TINY["image_size"], mode="squash"
    )
    assert torch.allclose(prepared[0][2], flipped)
    head = clip.load_head(out / "semantic_head.safetensors")
    with torch.no_grad():
        logits = [head(branch.tower(p)).mean() for p in prepared]
    expected = torch.sigmoid(torch.stack(logits)).double().numpy()
    np.testing.assert_allclose(branch.score(prepared), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"view 'squash\+mirror'"):
        build_branch(
            "semantic", {**section, "views": ["squash+mirror"]}, out, device=CPU, dtype=torch.float32
        )


def _layer_features(
    bundle: tuple[Path, dict], features: str
) -> tuple[clip.ClipTower, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The tower, its ``features`` of two images, and its hidden states after each transformer layer."""
    out, section = bundle
    tower = build_branch("semantic", section, out, device=CPU, dtype=torch.float32).tower
    x = torch.stack([clip.preprocess_image(im.image, TINY["image_size"]) for im in _images(2)])
    with torch.no_grad():
        feats = tower(x, features)
        hidden = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    return tower, feats, hidden


def test_cls_layers_features_are_every_layers_class_token(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    tower, feats, hidden = _layer_features(bundle, "cls-layers")
    assert feats.shape == (2, tower.feature_dim("cls-layers"))
    assert tower.feature_groups("cls-layers") == len(hidden)
    width = tower.model.config.hidden_size
    for layer, h in enumerate(hidden):
        torch.testing.assert_close(feats[:, layer * width : (layer + 1) * width], h[:, 0])
    # a head for the embedding does not fit these features: loading says so
    with pytest.raises(ValueError, match="-d"):
        build_branch("semantic", {**section, "features": "cls-layers"}, out, device=CPU, dtype=torch.float32)


def test_cls_mean_layers_features_add_each_layers_mean_patch_token(bundle: tuple[Path, dict]) -> None:
    tower, feats, hidden = _layer_features(bundle, "cls-mean-layers")
    width = tower.model.config.hidden_size
    assert (
        tower.feature_groups("cls-mean-layers") == 2 * len(hidden) == 2 * tower.feature_groups("cls-layers")
    )
    assert feats.shape == (2, tower.feature_dim("cls-mean-layers")) == (2, 2 * len(hidden) * width)
    for layer, h in enumerate(hidden):
        cls_part, mean_part = feats[:, 2 * layer * width : (2 * layer + 2) * width].split(width, dim=-1)
        torch.testing.assert_close(cls_part, h[:, 0])
        torch.testing.assert_close(mean_part, h[:, 1:].mean(dim=1))
    assert not torch.allclose(mean_part, cls_part)


def test_grouped_head_gives_each_group_equal_weight() -> None:
    head = clip.SemanticHead(6, groups=3)
    x = torch.tensor([[3.0, 4.0, 0.0, 10.0, 1.0, 0.0]])
    parts = head.normalise(x).reshape(3, 2)
    torch.testing.assert_close(parts.norm(dim=-1), torch.full((3,), 3**-0.5))
    torch.testing.assert_close(head.normalise(x).norm(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="equal groups"):
        clip.SemanticHead(7, groups=3)


def test_config_errors(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    out, section = bundle
    with pytest.raises(ValueError, match="lacks"):
        build_branch(
            "semantic",
            {"family": "semantic-clip", "tower": "semantic_tower"},
            out,
            device=CPU,
            dtype=torch.float32,
        )
    with pytest.raises(ValueError, match="resize"):
        build_branch("semantic", {**section, "resize": "stretch"}, out, device=CPU, dtype=torch.float32)
    with pytest.raises(
        ValueError, match="patch size"
    ):  # image_size feeds the tower that size: a patch multiple
        build_branch("semantic", {**section, "image_size": 30}, out, device=CPU, dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="semantic head"):
        build_branch(
            "semantic", {**section, "head": "none.safetensors"}, out, device=CPU, dtype=torch.float32
        )
    wrong = clip.SemanticHead(8)
    clip.save_head(wrong, tmp_path / "h8.safetensors")
    with pytest.raises(ValueError, match="8-d embeddings but the tower gives 16-d"):
        build_branch(
            "semantic",
            {**section, "head": str(tmp_path / "h8.safetensors")},
            out,
            device=CPU,
            dtype=torch.float32,
        )
    with pytest.raises(ValueError, match="head_type 'mlp'"):
        build_branch("semantic", {**section, "head_type": "mlp"}, out, device=CPU, dtype=torch.float32)


def test_head_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = clip.SemanticHead(16, "mlp", hidden=8, dropout=0.1).eval()
    clip.save_head(head, tmp_path / "h.safetensors")
    back = clip.load_head(tmp_path / "h.safetensors", embed_dim=16, head_type="mlp")
    x = torch.randn(4, 16)
    torch.testing.assert_close(back(x), head(x))
    torch.testing.assert_close(head(x), head(3.0 * x))  # reads the direction of the embedding only


def test_onnx_tower_through_the_branch(tmp_path: Path) -> None:
    """An INT8 ONNX tower as the source: imported once, cached under the aligngemini home, then scored."""
    fp32 = export_onnx(tiny_clip(seed=5), tmp_path / "t.onnx")
    int8 = quantize_int8(fp32, tmp_path / "t.int8.onnx")
    tower = clip.load_tower(str(int8))
    assert tower.kind == "clip-projection" and tower.embed_dim == TINY["projection_dim"]
    assert tower.identity.startswith("onnx-") and tower.mean == clip.CLIP_MEAN
    head = clip.SemanticHead(tower.embed_dim)
    clip.save_head(head, tmp_path / "head.safetensors")
    section = {"family": "semantic-clip", "tower": str(int8), "head": "head.safetensors"}
    branch = build_branch("semantic", section, tmp_path, device=CPU, dtype=torch.float32)
    scores = branch.score([branch.prepare(im) for im in _images(2)])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_siglip_and_projectionless_towers(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = {
        k: TINY[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
        )
    }
    SiglipVisionModel(SiglipVisionConfig(**cfg)).save_pretrained(str(tmp_path / "siglip"))
    CLIPVisionModel(CLIPVisionConfig(**cfg)).save_pretrained(str(tmp_path / "clipnoproj"))
    for name in ("siglip", "clipnoproj"):
        tower = clip.load_tower(str(tmp_path / name))
        assert tower.kind == "pooled" and tower.embed_dim == TINY["hidden_size"]
        emb = clip.embed_images(_images(2), tower)
        assert emb.shape == (2, TINY["hidden_size"])
    assert clip.load_tower(str(tmp_path / "siglip")).mean == clip.SIGLIP_MEAN


def test_embed_images_accepts_paths_and_reuses_the_tower(tmp_path: Path) -> None:
    folder = save_tiny_tower(tmp_path / "tower", seed=1)
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        photo(i).save(p)
        paths.append(p)
    a = clip.embed_images(paths, str(folder), batch_size=2)
    b = clip.embed_images([load_image(p) for p in paths], str(folder), batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert clip.get_tower(str(folder)) is clip.get_tower(str(folder))
    assert clip.embed_images([], str(folder)).shape == (0, TINY["projection_dim"])


def test_a_smaller_input_interpolates_the_position_embeddings(bundle: tuple[Path, dict]) -> None:
    out, section = bundle
    small = TINY["image_size"] // 2
    branch = build_branch("semantic", {**section, "image_size": small}, out, device=CPU, dtype=torch.float32)
    (x,) = branch.prepare(_images(1)[0])
    assert x.shape == (3, small, small)
    with torch.no_grad():
        want = branch.tower.model(pixel_values=x[None], interpolate_pos_encoding=True).image_embeds
        torch.testing.assert_close(branch.tower(x[None]), want)
    assert 0 <= branch.score([x[None]])[0] <= 1
    with pytest.raises(ValueError, match="multiple of the tower's patch size"):
        branch.tower.set_input_size(small + 1)


def test_first_layers_only_and_bf16_are_the_tower_settings_a_bundle_names(
    bundle: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, section = bundle
    monkeypatch.setattr(clip, "native_bf16", lambda device_type: True)  # as on a CPU with AVX512-BF16 or AMX
    full = build_branch("semantic", section, out, device=CPU, dtype=torch.float32).tower
    x = torch.stack([clip.preprocess_image(im.image, TINY["image_size"]) for im in _images(2)])
    with torch.no_grad():
        every = full(x, "cls-layers")
    width = TINY["hidden_size"]
    one = clip.load_tower(str(out / section["tower"])).configure(layers=1)
    assert one.n_layers == 1 and one.feature_dim("cls-layers") == width and one.variant == "-L1-silu"
    with torch.no_grad():
        torch.testing.assert_close(one(x, "cls-layers"), every[:, :width])  # the same first class token
    half = clip.load_tower(str(out / section["tower"])).configure(precision="bf16")
    assert half.variant == "-bf16-silu" and full.variant == "-silu"
    with torch.no_grad():
        low = half(x, "cls-layers")
    assert not torch.equal(low.float(), every)  # bf16 arithmetic really ran
    assert torch.nn.functional.cosine_similarity(low.float(), every).min() > 0.99
    with pytest.raises(ValueError, match="between 1 and"):
        clip.load_tower(str(out / section["tower"])).configure(layers=TINY["num_hidden_layers"] + 1)
    with pytest.raises(ValueError, match="precision 'int4'"):
        build_branch("semantic", {**section, "precision": "int4"}, out, device=CPU, dtype=torch.float32)


def test_without_native_bf16_a_bf16_tower_computes_in_fp32(
    bundle: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, section = bundle
    monkeypatch.setattr(clip, "native_bf16", lambda device_type: False)  # emulated bf16 would be 3x slower
    branch = build_branch("semantic", {**section, "precision": "bf16"}, out, device=CPU, dtype=torch.float32)
    tower = branch.tower
    assert tower.precision == "bf16" and tower.compute_precision == "fp32" and tower.variant == "-silu"
    assert all(p.dtype == torch.float32 for p in tower.parameters())  # no bf16 weight copies either
    plain = build_branch("semantic", section, out, device=CPU, dtype=torch.float32)
    images = [branch.prepare(im) for im in _images(3)]
    np.testing.assert_array_equal(branch.score(images), plain.score(images))
    with pytest.raises(ValueError, match="computing in bf16"):
        tower.store_matmul_weights_in_bf16()
    assert branch.arithmetic == plain.arithmetic == "cpu:float32"  # the same numbers share cached scores
    monkeypatch.setattr(clip, "native_bf16", lambda device_type: True)
    fast = build_branch("semantic", {**section, "precision": "bf16"}, out, device=CPU, dtype=torch.float32)
    assert fast.arithmetic == "cpu:float32+autocast-bf16"


def test_the_environment_can_switch_bf16_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    clip.native_bf16.cache_clear()
    try:
        assert clip.native_bf16("cpu") is True  # what the CPU probe says
        clip.native_bf16.cache_clear()
        monkeypatch.setenv("ALIGNGEMINI_BF16", "off")
        assert clip.native_bf16("cpu") is False and clip.native_bf16("cuda") is False
    finally:
        clip.native_bf16.cache_clear()
