"""Tiny detector bundles built from the real branch families, for API, CLI, eval and serve tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from aligngemini.bundle import Bundle, save_bundle

TINY_PIXEL_BACKBONE = {"name": "resnet10t", "kwargs": {}}


def _pixel_section(out: Path, seed: int) -> dict:
    from aligngemini.branches.pixel.model import ModelConfig, PixelModel

    torch.manual_seed(seed)
    model = PixelModel.from_config(
        ModelConfig(backbone="resnet10t", finetune="full", normalize={"mean": [0.5] * 3, "std": [0.5] * 3}),
        load_weights=False,
    )
    with torch.no_grad():  # a head that responds to content, so scores spread over (0, 1)
        model.head.weight.normal_(0, 0.5)
    save_file(model.export_state_dict(), str(out / "pixel.safetensors"))
    return {
        "family": "pixel-timm",
        "weights": "pixel.safetensors",
        "backbone": TINY_PIXEL_BACKBONE,
        "crop": {"size": 32, "inference": "grid", "max_crops": 4, "combine": "mean"},
        "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3},
        "threshold": 0.5,
    }


def make_tiny_bundle(out_dir: Path, *, semantic: bool = True, seed: int = 0) -> Bundle:
    """A working two-branch bundle (tiny random ResNet pixel branch, tiny CLIP semantic branch)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    branches = {"pixel": _pixel_section(out_dir, seed)}
    if semantic:
        from tiny_clip import tiny_semantic_section

        branches["semantic"] = tiny_semantic_section(out_dir, seed)
    config = {"name": "tiny", "branches": branches, "fusion": {"rule": "or", "uncertain_band": None}}
    return save_bundle(out_dir, config, card="# tiny\nRandom weights, for tests only.\n")
