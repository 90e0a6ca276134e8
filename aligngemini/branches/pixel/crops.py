"""Crop policy of the pixel branch: images are cropped, never resized, so the decoder's pixels reach the
model untouched.

- training: pad if smaller than the crop (reflect or constant), then a random crop;
- inference: a centre crop, or for images larger than one crop a grid of up to ``max_crops`` crops spread
  evenly over the image (a 4000 px photo is judged at native resolution). Per-crop scores are combined by
  ``max`` or ``mean`` of the probabilities;
- inference with ``phases`` 4: each crop is also scored one pixel down, right and both, and every score
  combined, so that the result does not depend on the parity of the image's rows and columns;
- inference with ``flips`` 2 or 4: each crop is also scored mirrored left-right (2), and upside down and both
  (4): the expert trains on flipped pairs, so this averages out what its scores still owe to orientation;
- both: with ``grid`` > 1, crop corners lie on multiples of ``grid`` from the image's top-left, so every crop
  sees periodic traces (a decoder's up-sampling, a colour-filter array, JPEG blocks) in the same phase.

Arrays are HxWx3 uint8 (numpy); views are float32 tensors in [0, 1], exactly ``pixel / 255``.
Normalisation (mean/std) happens inside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PAD_MODES = ("reflect", "constant", "edge")
INFERENCE_MODES = ("center", "grid")
COMBINE_RULES = ("max", "mean")
PHASES = (1, 4)
FLIPS = (1, 2, 4)


@dataclass
class CropConfig:
    size: int = 336
    pad_mode: str = "reflect"  # reflect | constant | edge (how images smaller than a crop are padded)
    pad_value: int = 0  # fill for pad_mode: constant
    inference: str = "grid"  # center: one crop; grid: several crops over large images
    max_crops: int = 9  # grid: at most this many crops per image
    combine: str = "mean"  # max | mean of per-crop P(fake)
    # Crop corners (training and inference) on multiples of this many pixels from the image's top-left.
    # 16 keeps a latent decoder's up-sampling grid, the camera's 2x2 colour-filter cells and the NPR input
    # filter's 2x2 cells in one phase in every crop; 1 puts crops anywhere.
    grid: int = 1
    # Inference: 4 scores each crop also one pixel down, right, and both (the four phases of a 2x2 cell)
    # and combines all of them, so that a score does not hang on where the image's pixel grid starts; 1 does not.
    phases: int = 1
    # Inference: each crop (at each phase) also mirrored left-right (2), and upside down and both (4).
    flips: int = 1

    def __post_init__(self) -> None:
        if int(self.size) <= 0:
            raise ValueError(f"crop.size must be positive, got {self.size}")
        self.size = int(self.size)
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"crop.pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"crop.inference must be one of {INFERENCE_MODES}, got {self.inference!r}")
        if int(self.max_crops) < 1:
            raise ValueError(f"crop.max_crops must be at least 1, got {self.max_crops}")
        self.max_crops = int(self.max_crops)
        if int(self.grid) < 1:
            raise ValueError(f"crop.grid must be at least 1, got {self.grid}")
        self.grid = int(self.grid)
        if int(self.phases) not in PHASES:
            raise ValueError(f"crop.phases must be one of {PHASES}, got {self.phases}")
        self.phases = int(self.phases)
        if int(self.flips) not in FLIPS:
            raise ValueError(f"crop.flips must be one of {FLIPS}, got {self.flips}")
        self.flips = int(self.flips)
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"crop.combine must be one of {COMBINE_RULES}, got {self.combine!r}")
        if not 0 <= int(self.pad_value) <= 255:
            raise ValueError(f"crop.pad_value must be in 0..255, got {self.pad_value}")


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 view of an RGB image."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def pad_to_min(arr: np.ndarray, size: int, mode: str = "reflect", value: int = 0) -> np.ndarray:
    """Pad (split evenly on both sides) so that both sides are at least ``size``; a no-op when they are."""
    h, w = arr.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return arr
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    if mode == "constant":
        return np.pad(arr, pads, mode="constant", constant_values=value)
    if mode == "reflect" and min(h, w) < 2:  # nothing to reflect in a one-pixel side
        mode = "edge"
    return np.pad(arr, pads, mode=mode)


def random_offset(h: int, w: int, size: int, rng: np.random.Generator, grid: int = 1) -> tuple[int, int]:
    """Top-left corner of a uniformly random ``size`` crop of an (already padded) ``h`` x ``w`` image, on
    multiples of ``grid``."""
    return grid * int(rng.integers(0, (h - size) // grid + 1)), grid * int(
        rng.integers(0, (w - size) // grid + 1)
    )


def crop(arr: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    return arr[top : top + size, left : left + size]


def train_crop(arr: np.ndarray, cfg: CropConfig, rng: np.random.Generator) -> np.ndarray:
    """Pad-if-small then a random ``cfg.size`` crop."""
    arr = pad_to_min(arr, cfg.size, cfg.pad_mode, cfg.pad_value)
    top, left = random_offset(arr.shape[0], arr.shape[1], cfg.size, rng, cfg.grid)
    return crop(arr, top, left, cfg.size)


def _starts(length: int, size: int, n: int) -> list[int]:
    if n <= 1:
        return [(length - size) // 2]
    return [int(round(x)) for x in np.linspace(0, length - size, n)]


def grid_counts(h: int, w: int, size: int, max_crops: int) -> tuple[int, int]:
    """Rows and columns of crops: enough to cover the image, shrunk (larger side first) to ``max_crops``."""
    ny, nx = max(1, math.ceil(h / size)), max(1, math.ceil(w / size))
    while ny * nx > max_crops:
        if ny >= nx:
            ny -= 1
        else:
            nx -= 1
    return ny, nx


def inference_boxes(h: int, w: int, cfg: CropConfig) -> list[tuple[int, int]]:
    """Top-left corners of the inference crops on an image padded to at least ``cfg.size`` per side."""
    g = cfg.grid
    if cfg.inference == "center":
        boxes = [((h - cfg.size) // 2 // g * g, (w - cfg.size) // 2 // g * g)]
    else:
        ny, nx = grid_counts(h, w, cfg.size, cfg.max_crops)
        boxes = [(t // g * g, x // g * g) for t in _starts(h, cfg.size, ny) for x in _starts(w, cfg.size, nx)]
    if cfg.phases == 1:
        return boxes
    return [
        (_step(t, dy, h - cfg.size), _step(x, dx, w - cfg.size))
        for t, x in boxes
        for dy in (0, 1)
        for dx in (0, 1)
    ]


def _step(start: int, by: int, last: int) -> int:
    """``start`` moved by ``by`` pixels, or back by as many where that would leave the image (which changes the
    phase all the same); unmoved when the image is no larger than the crop."""
    if start + by <= last:
        return start + by
    return max(0, start - by)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1] (exactly pixel / 255)."""
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw / np.float32(255.0))


def inference_views(image: Image.Image | np.ndarray, cfg: CropConfig) -> torch.Tensor:
    """[V, 3, size, size] float32 crops of ``image`` in [0, 1] at native resolution (padded if small, never
    resized): exactly ``inference_views_uint8(...) / 255``."""
    return inference_views_uint8(image, cfg).float().div_(255.0)


def inference_views_uint8(image: Image.Image | np.ndarray, cfg: CropConfig) -> torch.Tensor:
    """The crops as [V, 3, size, size] uint8: a quarter of the bytes to move to the model's device, where
    they become floats (``uint8 / 255`` in float32 is what ``to_tensor`` computes)."""
    arr = pad_to_min(as_array(image), cfg.size, cfg.pad_mode, cfg.pad_value)
    boxes = inference_boxes(arr.shape[0], arr.shape[1], cfg)
    crops = torch.from_numpy(
        np.stack([crop(arr, t, left, cfg.size) for t, left in boxes])
    )  # [V, size, size, 3]
    if cfg.flips > 1:
        mirrored = [crops, crops.flip(2)] + ([crops.flip(1), crops.flip(1, 2)] if cfg.flips == 4 else [])
        crops = torch.cat(mirrored)
    return crops.permute(0, 3, 1, 2).contiguous()


def combine_scores(probs: np.ndarray | torch.Tensor, rule: str) -> float:
    """One P(fake) from the per-crop probabilities of one image."""
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if p.size == 0:
        raise ValueError("no crop scores to combine")
    if rule == "max":
        return float(p.max())
    if rule == "mean":
        return float(p.mean())
    raise ValueError(f"unknown combine rule {rule!r}; known: {COMBINE_RULES}")
