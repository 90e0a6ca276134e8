"""Shared fixtures for the pixel-branch tests: tiny pure-pixel pair sets and recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TINY_VIT = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"img_size": 32, "depth": 2},
    "lora": {"r": 2},
}
HEAVY = {
    "jpeg_p": 1.0,
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "gaussian_noise_p": 1.0,
    "pepper_p": 1.0,
    "blur_p": 1.0,
    "sharpen_p": 1.0,
    "color_jitter_p": 1.0,
    "greyscale_p": 0.5,
    "resize_p": 1.0,
}


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([xx * 2 % 255, yy * 3 % 255, (xx + yy) % 255], axis=2) + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_pairs(root: Path, n_train: int = 3, n_val: int = 1, size=(48, 40), identical: bool = False) -> Path:
    """Real photos and their 'reconstructions' (a blur: the pixels differ, the scene does not)."""
    rows = []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        real = photo(i, size)
        fake = real if identical else real.filter(ImageFilter.GaussianBlur(1.0))
        for label, img in (("real", real), ("fake", fake)):
            rel = f"{split}/{label}_{i}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            img.save(root / rel)
            rows.append({"path": rel, "label": label, "split": split, "group": f"pair{i}"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def recipe(manifest: Path, **over) -> dict:
    base = {
        "task": "pixel-timm",
        "model": TINY_VIT,
        "crop": {"size": 32, "inference": "grid", "max_crops": 4},
        "augment": {},
        "data": {"manifest": str(manifest), "paired": True},
    }
    base.update(over)
    return base
