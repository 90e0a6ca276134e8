"""DDA-style training augmentations for the pixel branch, each with its own probability in the recipe.

Random JPEG (quality 55-100, encoded in memory with PIL), horizontal/vertical flips, Gaussian noise,
pepper noise, one blur (Gaussian, median or motion), unsharp-mask sharpening, colour jitter (brightness,
contrast, saturation, hue in random order), greyscale; plus *resize alignment*: a random rescale drawn
from the same distribution for both classes (and, for a pair, the same factor and filter for both
images), so that image size carries no label.

Randomness is split in two: :func:`sample_plan` draws every parameter (including seeds for the noise
patterns) from one ``numpy.random.Generator``, and :func:`apply_plan` is a pure function of the image and
the plan. Applying one plan to both images of a pure-pixel pair gives them identical treatment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import ndimage

from aligngemini.config import from_dict
from aligngemini.data import transforms as T
from aligngemini.data.transforms import RESAMPLE

BLUR_KINDS = ("gaussian3", "gaussian5", "median3", "motion5")


def _range(value: Any, name: str, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"augment.{name} must be a [min, max] pair, got {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"augment.{name} must satisfy {lo} <= min <= max <= {hi}, got {[a, b]}")
    return a, b


@dataclass
class AugmentConfig:
    """Probabilities (``*_p``) and parameter ranges. Defaults follow DDA's training transforms."""

    jpeg_p: float = 0.15
    jpeg_quality: tuple[float, float] = (55, 100)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    gaussian_noise_p: float = 0.1
    gaussian_noise_std: tuple[float, float] = (1.0, 25.0)  # in 0-255 units
    pepper_p: float = 0.1
    pepper_ratio: tuple[float, float] = (0.01, 0.10)  # fraction of pixels set to black
    blur_p: float = 0.2
    blur_kinds: tuple[str, ...] = BLUR_KINDS  # one is chosen uniformly
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blurs
    sharpen_p: float = 0.1
    sharpen_amount: tuple[float, float] = (1.0, 3.0)
    sharpen_sigma: float = 3.0
    color_jitter_p: float = 0.2
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.175  # fraction of the hue circle, at most 0.5
    greyscale_p: float = 0.1
    resize_p: float = 0.0  # resize alignment: probability of a random rescale (same law for both classes)
    resize_down: tuple[float, float] = (0.2, 1.0)
    resize_up: tuple[float, float] = (1.0, 3.5)
    resize_up_p: float = 0.5  # given a rescale, probability that it enlarges
    resize_methods: tuple[str, ...] = tuple(RESAMPLE)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_p"):
                v = float(getattr(self, f.name))
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"augment.{f.name} must be a probability in [0, 1], got {v}")
                setattr(self, f.name, v)
        q = _range(self.jpeg_quality, "jpeg_quality", 1, 100)
        self.jpeg_quality = (round(q[0]), round(q[1]))
        self.gaussian_noise_std = _range(self.gaussian_noise_std, "gaussian_noise_std", 0.0, 255.0)
        self.pepper_ratio = _range(self.pepper_ratio, "pepper_ratio", 0.0, 1.0)
        self.blur_sigma = _range(self.blur_sigma, "blur_sigma", 1e-3, 50.0)
        self.sharpen_amount = _range(self.sharpen_amount, "sharpen_amount", 0.0, 20.0)
        self.resize_down = _range(self.resize_down, "resize_down", 1e-2, 1.0)
        self.resize_up = _range(self.resize_up, "resize_up", 1.0, 16.0)
        self.blur_kinds = tuple(self.blur_kinds)
        self.resize_methods = tuple(self.resize_methods)
        bad = [k for k in self.blur_kinds if k not in BLUR_KINDS]
        if bad or not self.blur_kinds:
            raise ValueError(
                f"augment.blur_kinds must be a non-empty subset of {BLUR_KINDS}, got {list(self.blur_kinds)}"
            )
        bad = [m for m in self.resize_methods if m not in RESAMPLE]
        if bad or not self.resize_methods:
            raise ValueError(
                f"augment.resize_methods must be a non-empty subset of {list(RESAMPLE)}, got {bad}"
            )
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AugmentConfig:
        return from_dict(cls, data, where="augment")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")})


@dataclass
class AugmentPlan:
    """Every random choice for one image (or one pair): apply it with :func:`apply_plan`."""

    resize: tuple[float, str] | None = None  # (scale, method)
    jpeg_quality: int | None = None
    hflip: bool = False
    vflip: bool = False
    noise: tuple[float, int] | None = None  # (std, seed)
    pepper: tuple[float, int] | None = None  # (ratio, seed)
    blur: tuple[str, float, float] | None = None  # (kind, sigma, motion angle in degrees)
    sharpen: float | None = None
    jitter: tuple[tuple[str, float], ...] = ()  # ordered (op, factor) pairs
    greyscale: bool = False


def sample_plan(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentPlan:
    """Draw one plan. A fixed number of draws per step keeps plans reproducible from the generator's seed."""
    plan = AugmentPlan()

    def hit(p: float) -> bool:
        return bool(rng.random() < p)

    def uniform(r: tuple[float, float]) -> float:
        return float(rng.uniform(r[0], r[1]))

    if hit(cfg.resize_p):
        scale = uniform(cfg.resize_up) if hit(cfg.resize_up_p) else uniform(cfg.resize_down)
        plan.resize = (scale, str(rng.choice(cfg.resize_methods)))
    if hit(cfg.jpeg_p):
        plan.jpeg_quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    plan.hflip = hit(cfg.hflip_p)
    plan.vflip = hit(cfg.vflip_p)
    if hit(cfg.gaussian_noise_p):
        plan.noise = (uniform(cfg.gaussian_noise_std), int(rng.integers(2**31)))
    if hit(cfg.pepper_p):
        plan.pepper = (uniform(cfg.pepper_ratio), int(rng.integers(2**31)))
    if hit(cfg.blur_p):
        plan.blur = (str(rng.choice(cfg.blur_kinds)), uniform(cfg.blur_sigma), float(rng.uniform(0, 180)))
    if hit(cfg.sharpen_p):
        plan.sharpen = uniform(cfg.sharpen_amount)
    if hit(cfg.color_jitter_p):
        ops = [
            ("brightness", uniform((1 - cfg.brightness, 1 + cfg.brightness))),
            ("contrast", uniform((1 - cfg.contrast, 1 + cfg.contrast))),
            ("saturation", uniform((1 - cfg.saturation, 1 + cfg.saturation))),
            ("hue", uniform((-cfg.hue, cfg.hue))),
        ]
        plan.jitter = tuple(ops[i] for i in rng.permutation(len(ops)))
    plan.greyscale = hit(cfg.greyscale_p)
    return plan


# --- operations (pure functions of their inputs) ----------------------------------------------------


def gaussian_noise(img: Image.Image, std: float, seed: int) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, std, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr + noise), 0, 255).astype(np.uint8))


def pepper_noise(img: Image.Image, ratio: float, seed: int) -> Image.Image:
    arr = np.array(img)
    h, w = arr.shape[:2]
    n = int(round(h * w * ratio))
    g = np.random.default_rng(seed)
    arr[g.integers(0, h, n), g.integers(0, w, n)] = 0
    return Image.fromarray(arr)


def _filter_channels(arr: np.ndarray, fn) -> np.ndarray:
    return np.stack([fn(arr[..., c]) for c in range(arr.shape[2])], axis=2)


def gaussian_blur(img: Image.Image, kernel: int, sigma: float) -> Image.Image:
    """Gaussian blur truncated to a ``kernel`` x ``kernel`` support (reflect at the borders)."""
    arr = np.asarray(img, dtype=np.float32)
    out = ndimage.gaussian_filter(
        arr, sigma=(sigma, sigma, 0), truncate=(kernel // 2) / sigma, mode="reflect"
    )
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def median_blur(img: Image.Image, kernel: int = 3) -> Image.Image:
    return img.filter(ImageFilter.MedianFilter(kernel))


def motion_kernel(size: int, angle_deg: float) -> np.ndarray:
    """A normalised line of ``size`` taps through the centre at ``angle_deg``."""
    k = np.zeros((size, size), dtype=np.float32)
    c = size // 2
    a = np.deg2rad(angle_deg)
    for t in range(-c, c + 1):
        k[int(round(c - t * np.sin(a))), int(round(c + t * np.cos(a)))] = 1.0
    return k / k.sum()


def motion_blur(img: Image.Image, kernel: int, angle_deg: float) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    k = motion_kernel(kernel, angle_deg)
    out = _filter_channels(arr, lambda ch: ndimage.correlate(ch, k, mode="reflect"))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def sharpen(img: Image.Image, amount: float, sigma: float) -> Image.Image:
    """Unsharp mask: ``x + amount * (x - gaussian(x, sigma))``."""
    arr = np.asarray(img, dtype=np.float32)
    blurred = ndimage.gaussian_filter(arr, sigma=(sigma, sigma, 0), mode="reflect")
    return Image.fromarray(np.clip(np.rint(arr + amount * (arr - blurred)), 0, 255).astype(np.uint8))


def shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate hue by ``shift`` of the circle (-0.5..0.5)."""
    if shift == 0:
        return img
    h, s, v = img.convert("HSV").split()
    h = Image.fromarray((np.asarray(h, dtype=np.int16) + int(round(shift * 255))).astype(np.uint8))
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, ops: Sequence[tuple[str, float]]) -> Image.Image:
    for name, factor in ops:
        if name == "brightness":
            img = ImageEnhance.Brightness(img).enhance(factor)
        elif name == "contrast":
            img = ImageEnhance.Contrast(img).enhance(factor)
        elif name == "saturation":
            img = ImageEnhance.Color(img).enhance(factor)
        elif name == "hue":
            img = shift_hue(img, factor)
        else:
            raise ValueError(f"unknown colour jitter op {name!r}")
    return img


def apply_plan(img: Image.Image, plan: AugmentPlan, cfg: AugmentConfig) -> Image.Image:
    """Apply ``plan`` to one RGB image. Only the resize step changes the size."""
    img = img.convert("RGB")
    if plan.resize is not None:
        scale, method = plan.resize
        img = T.resize(img, scale=scale, method=method)
    if plan.jpeg_quality is not None:
        img = T.jpeg(img, plan.jpeg_quality).convert("RGB")
    if plan.hflip:
        img = ImageOps.mirror(img)
    if plan.vflip:
        img = ImageOps.flip(img)
    if plan.noise is not None:
        img = gaussian_noise(img, *plan.noise)
    if plan.pepper is not None:
        img = pepper_noise(img, *plan.pepper)
    if plan.blur is not None:
        kind, sigma, angle = plan.blur
        if kind.startswith("gaussian"):
            img = gaussian_blur(img, int(kind[len("gaussian") :]), sigma)
        elif kind.startswith("median"):
            img = median_blur(img, int(kind[len("median") :]))
        else:
            img = motion_blur(img, int(kind[len("motion") :]), angle)
    if plan.sharpen is not None:
        img = sharpen(img, plan.sharpen, cfg.sharpen_sigma)
    if plan.jitter:
        img = color_jitter(img, plan.jitter)
    if plan.greyscale:
        img = img.convert("L").convert("RGB")
    return img


def augment(images: Sequence[Image.Image], cfg: AugmentConfig, rng: np.random.Generator) -> list[Image.Image]:
    """One plan drawn from ``rng`` and applied to every image given (one image, or both of a pair)."""
    plan = sample_plan(cfg, rng)
    return [apply_plan(img, plan, cfg) for img in images]
