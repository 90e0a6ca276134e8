"""A tiny stand-in for aligngemini.detector.Detector, for the eval tests only: it implements the contract the
runner relies on (branches, config, bundle_id, score_loaded) and scores from image content, so that
results are deterministic and a perturbation changes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from aligngemini.decode import LoadedImage


class FakeDetector:
    """pixel p_fake = mean red / 255, semantic p_fake = mean green / 255 (either may be left out)."""

    def __init__(self, roles: Sequence[str] = ("pixel", "semantic"), thresholds: dict[str, float] | None = None,
                 rule: str = "or", fail_on_width: int | None = None):  # fmt: skip
        thresholds = thresholds or {}
        self.branches: dict[str, Any] = {r: SimpleNamespace(arithmetic="cpu:float32") for r in roles}
        self.config: dict[str, Any] = {
            "format": "aligngemini-bundle",
            "name": "fake",
            "branches": {r: {"family": f"fake-{r}", "threshold": thresholds.get(r, 0.5)} for r in roles},
            "fusion": {"rule": rule, "uncertain_band": None},
            "files": {},
        }
        self.bundle_id = "fake@000"
        self.calls = 0
        self.images_scored = 0
        self.fail_on_width = fail_on_width

    def score_loaded(self, images: Sequence[LoadedImage]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.images_scored += len(images)
        if self.fail_on_width is not None and any(im.image.width == self.fail_on_width for im in images):
            raise RuntimeError("this model cannot take that width")
        arrs = [np.asarray(im.image, dtype=np.float64) for im in images]
        out = {}
        if "pixel" in self.branches:
            out["pixel"] = np.array([a[..., 0].mean() / 255 for a in arrs])
        if "semantic" in self.branches:
            out["semantic"] = np.array([a[..., 1].mean() / 255 for a in arrs])
        return out


def make_image(path: Path, red: int, green: int, size: int = 24, seed: int = 0) -> Path:
    """An image whose mean red/green set the fake detector's two scores; a little noise so JPEG and blur
    change it."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), dtype=np.float64)
    arr[..., 0], arr[..., 1], arr[..., 2] = red, green, 128
    arr += rng.normal(0, 12, arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


def make_blind_spot_tree(root: Path) -> Path:
    """real/: low red and green. fake/: some high red only (pixel catches), some high green only
    (semantic catches), one both, one neither. Plus one corrupt file."""
    specs_real = [
        (40, 50),
        (60, 40),
        (30, 70),
        (80, 60),
        (50, 30),
        (140, 40),
    ]  # the last: a pixel false alarm
    specs_fake = [(200, 40), (210, 60), (180, 50), (40, 200), (60, 220), (200, 210), (70, 60)]
    for i, (r, g) in enumerate(specs_real):
        make_image(root / "real" / f"r{i}.png", r, g, seed=i)
    for i, (r, g) in enumerate(specs_fake):
        make_image(root / "fake" / f"f{i}.png", r, g, seed=100 + i)
    (root / "fake" / "broken.png").write_bytes(b"this is not an image")
    return root
