"""Degradation and alignment operations used to *build* training sets.

Pure functions on PIL images: every random choice comes from an explicit ``numpy.random.Generator``
passed by the caller, so a pair (or a whole set) is reproducible from its seed. Evaluation has its
own perturbation module; these exist so the pixel and semantic builders apply identical operations
to both classes.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter, JpegImagePlugin
from scipy import fft as sfft

RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL convention)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _resample(method: str) -> Image.Resampling:
    try:
        return RESAMPLE[method.lower()]
    except KeyError:
        raise ValueError(f"unknown resize method {method!r}; known: {sorted(RESAMPLE)}") from None


# --- JPEG -------------------------------------------------------------------------------------------


def jpeg_bytes(img: Image.Image, quality: int, *, subsampling: int = 2) -> bytes:
    """Encode ``img`` as a baseline JPEG at IJG ``quality`` (1-100). ``subsampling`` is PIL's code:
    0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0 (libjpeg's default)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if subsampling not in (0, 1, 2):
        raise ValueError(f"subsampling must be 0 (4:4:4), 1 (4:2:2) or 2 (4:2:0), got {subsampling}")
    buf = io.BytesIO()
    _rgb(img).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Decode encoded bytes fully; the returned image keeps ``format`` and (for JPEG) ``quantization``."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def jpeg(img: Image.Image, quality: int, *, subsampling: int = 2) -> Image.Image:
    """JPEG round trip in memory: what a file saved at ``quality`` decodes to."""
    return decode(jpeg_bytes(img, quality, subsampling=subsampling))


def jpeg_subsampling(img: Image.Image) -> int | None:
    """PIL's subsampling code (0, 1, 2) of an opened JPEG, None when not a JPEG or not a standard layout."""
    if getattr(img, "format", None) != "JPEG":
        return None
    code = JpegImagePlugin.get_sampling(img)
    return code if code in (0, 1, 2) else None


# --- geometry ---------------------------------------------------------------------------------------


def resize(
    img: Image.Image,
    *,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    method: str = "bicubic",
) -> Image.Image:
    """Resize by a factor or to an exact ``(width, height)``; exactly one of the two must be given."""
    if (scale is None) == (size is None):
        raise ValueError("resize needs exactly one of scale= or size=")
    if size is None:
        assert scale is not None
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if tuple(size) == img.size:
        return img.copy()
    return img.resize(tuple(size), _resample(method))


def resize_short_side(img: Image.Image, short: int, method: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``short`` pixels, keeping the aspect ratio."""
    w, h = img.size
    factor = short / min(w, h)
    return resize(img, size=(max(1, round(w * factor)), max(1, round(h * factor))), method=method)


def _floor_to(value: int, multiple: int) -> int:
    return (value // multiple) * multiple


def center_box(width: int, height: int, crop_w: int, crop_h: int, *, align: int = 1) -> Box:
    """The centred ``crop_w`` x ``crop_h`` box, its top-left corner rounded down to a multiple of ``align``
    (16 keeps a JPEG's 8x8 and 4:2:0 chroma grid intact)."""
    if crop_w > width or crop_h > height or crop_w <= 0 or crop_h <= 0:
        raise ValueError(f"crop {crop_w}x{crop_h} does not fit in {width}x{height}")
    left = _floor_to((width - crop_w) // 2, align)
    top = _floor_to((height - crop_h) // 2, align)
    return left, top, left + crop_w, top + crop_h


def random_box(
    width: int, height: int, crop_w: int, crop_h: int, rng: np.random.Generator, *, align: int = 1
) -> Box:
    """A uniformly placed ``crop_w`` x ``crop_h`` box whose top-left corner is a multiple of ``align``."""
    if crop_w > width or crop_h > height or crop_w <= 0 or crop_h <= 0:
        raise ValueError(f"crop {crop_w}x{crop_h} does not fit in {width}x{height}")
    left = int(rng.integers(0, (width - crop_w) // align + 1)) * align
    top = int(rng.integers(0, (height - crop_h) // align + 1)) * align
    return left, top, left + crop_w, top + crop_h


def center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    cw, ch = (size, size) if isinstance(size, int) else size
    return img.crop(center_box(img.width, img.height, cw, ch))


def random_crop(img: Image.Image, size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    cw, ch = (size, size) if isinstance(size, int) else size
    return img.crop(random_box(img.width, img.height, cw, ch, rng))


def bounded_crop_size(width: int, height: int, bound: int, multiple: int) -> tuple[int, int]:
    """Largest crop no bigger than ``bound`` per side whose sides are multiples of ``multiple``."""
    cw = _floor_to(min(width, bound), multiple)
    ch = _floor_to(min(height, bound), multiple)
    if cw <= 0 or ch <= 0:
        raise ValueError(f"{width}x{height} is smaller than one {multiple}-pixel block")
    return cw, ch


# --- filtering and noise ------------------------------------------------------------------------------


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels (0 returns a copy)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.copy()
    return _rgb(img).filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def add_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` (in 0-255 units), rounded and clipped."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    arr = np.asarray(_rgb(img), dtype=np.float32)
    noisy = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


# --- blends (DDA-style alignment of a fake towards its real) ------------------------------------------


def _pair_arrays(real: Image.Image, fake: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    if real.size != fake.size:
        raise ValueError(f"blend needs images of one size, got real {real.size} and fake {fake.size}")
    return np.asarray(_rgb(real), dtype=np.float64), np.asarray(_rgb(fake), dtype=np.float64)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def pixel_blend(real: Image.Image, fake: Image.Image, alpha: float) -> Image.Image:
    """``alpha * real + (1 - alpha) * fake``: blend the real into its reconstruction. The result stays
    labelled fake; a detector trained on it must find generation traces even when they are faint."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    r, f = _pair_arrays(real, fake)
    return _to_image(alpha * r + (1.0 - alpha) * f)


def frequency_mask(height: int, width: int, band: tuple[float, float], *, square: bool = False) -> np.ndarray:
    """Boolean DCT-coefficient mask selecting normalised frequencies in ``[lo, hi)``.

    A coefficient (u, v) has radial frequency ``sqrt((u/H)^2 + (v/W)^2)``: 0 is DC, 1 is Nyquist along
    one axis, sqrt(2) the diagonal corner. With ``square`` the frequency is ``max(u/H, v/W)`` instead, so
    ``[0, c)`` is exactly what survives a separable down-scale by ``c``."""
    lo, hi = band
    if lo < 0 or hi <= lo:
        raise ValueError(f"band must satisfy 0 <= lo < hi, got {band}")
    fu = np.arange(height, dtype=np.float64)[:, None] / height
    fv = np.arange(width, dtype=np.float64)[None, :] / width
    radius = np.maximum(fu, fv) if square else np.sqrt(fu**2 + fv**2)
    return (radius >= lo) & (radius < hi)


def frequency_blend(
    real: Image.Image,
    fake: Image.Image,
    alpha: float,
    band: tuple[float, float] = (0.25, math.inf),
    *,
    square: bool = False,
) -> Image.Image:
    """Mix the real's DCT coefficients in a frequency ``band`` (radial, or square: see
    :func:`frequency_mask`) into the fake's (weight ``alpha`` on the real), leaving the fake's other
    frequencies untouched.

    Why: reconstructions restore high-frequency detail that JPEG removed from the real photo, so a
    detector can learn "rich high frequencies = fake". Pulling the fake's high band towards the
    real's removes that shortcut (DDA's frequency alignment). ``band=(0, inf)`` equals
    :func:`pixel_blend`, since the DCT is linear."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    r, f = _pair_arrays(real, fake)
    mask = frequency_mask(r.shape[0], r.shape[1], band, square=square)[:, :, None]
    rd = sfft.dctn(r, axes=(0, 1), norm="ortho")
    fd = sfft.dctn(f, axes=(0, 1), norm="ortho")
    mixed = fd + mask * alpha * (rd - fd)
    return _to_image(sfft.idctn(mixed, axes=(0, 1), norm="ortho"))


def high_frequency_energy(img: Image.Image, band: tuple[float, float] = (0.5, math.inf)) -> float:
    """Mean squared DCT coefficient of the grey image inside ``band``: a scalar used by tests and audits
    to compare how much fine detail two images carry."""
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    coeffs = sfft.dctn(grey, norm="ortho")
    mask = frequency_mask(grey.shape[0], grey.shape[1], band)
    return float(np.mean(coeffs[mask] ** 2)) if mask.any() else 0.0
