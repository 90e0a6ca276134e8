"""Safe image decoding: every supported format to RGB, EXIF orientation applied, size bounds enforced,
and per-input errors that name the input and the reason instead of crashing a batch."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/AVIF when the plugin is installed
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    with contextlib.suppress(AttributeError):  # newer releases register AVIF with the HEIF opener
        pillow_heif.register_avif_opener()
except ImportError:  # pragma: no cover - optional
    pass

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
DEFAULT_MAX_PIXELS = 64_000_000  # decoded pixels; a 30000x30000 bomb (900 M) is refused
DEFAULT_MAX_BYTES = 100 * 1024 * 1024

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An input that cannot be used as an image. ``source`` names it; ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class PixelLimitError(ImageLoadError):
    """An image whose declared size is over the decoded-pixel limit (refused before decoding)."""


@dataclass(frozen=True)
class ImageFacts:
    """What the original bytes said, kept for branches and builders that need format facts."""

    source: str
    format: str | None  # PIL format name: JPEG, PNG, WEBP, ...
    width: int
    height: int
    mode: str  # mode before conversion to RGB
    jpeg_quality: int | None = None  # estimated from quantisation tables
    n_frames: int = 1
    sha256: str | None = None  # of the original bytes, when there were bytes


@dataclass
class LoadedImage:
    image: Image.Image  # always RGB, orientation applied
    facts: ImageFacts
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = field(
        default=None, repr=False
    )  # the original bytes, for provenance; None for arrays

    @property
    def source(self) -> str:
        return self.facts.source


# IJG standard luminance table (quality 50); quality q scales it by 5000/q (q<50) or 200-2q.
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)  # fmt: skip


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)


# Every quality's table, once: row q-1 is quality q (as given, and with its values sorted).
_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])
_IJG_SORTED = np.sort(_IJG_TABLES, axis=1)


def estimate_jpeg_quality(image: Image.Image) -> int | None:
    """IJG quality (1-100) whose luminance table is closest to this JPEG's; None for non-JPEG."""
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    luma = np.asarray(tables.get(0, next(iter(tables.values()))), dtype=np.float64)
    if luma.size != 64:
        return None
    # PIL gives tables in zigzag order for some versions, natural order for others: compare sorted values too.
    as_given = np.abs(_IJG_TABLES - luma).mean(axis=1)
    sorted_ = np.abs(_IJG_SORTED - np.sort(luma)).mean(axis=1)
    return int(np.argmin(np.minimum(as_given, sorted_)) + 1)


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def sniff_image_type(data: bytes) -> str | None:
    """The image media type the leading bytes announce, or None. Names and headers are never trusted."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "image/avif" if head[8:12] in (b"avif", b"avis") else "image/heic"
    return None


def _describe(src: ImageSource) -> str:
    if isinstance(src, str | os.PathLike):
        return str(src)
    if isinstance(src, bytes):
        return f"<bytes:{len(src)}>"
    if isinstance(src, Image.Image):
        return "<PIL.Image>"
    return f"<array:{getattr(src, 'shape', '?')}>"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, 16-bit and greyscale to 8-bit RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(float(arr.max()), 1e-12) if arr.max() > 1 else arr
        return Image.fromarray(np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_image(arr: np.ndarray, source: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageLoadError(source, f"array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr / 257.0 + 0.5).astype(np.uint8)
        else:
            raise ImageLoadError(
                source, f"unsupported array dtype {arr.dtype}; use uint8, uint16 or float in [0,1]"
            )
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return _to_rgb(Image.fromarray(arr))


def load_image(
    src: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> LoadedImage:
    """Decode ``src`` (path, bytes, PIL image or array) to RGB. Raises ImageLoadError, never anything else
    for bad input. ``max_pixels`` bounds the decoded size before any pixel is decoded."""
    source = name or _describe(src)
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    if isinstance(src, Image.Image):
        w, h = src.size
        if w * h > max_pixels:
            raise ImageLoadError(source, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        facts = ImageFacts(source, src.format, w, h, src.mode, estimate_jpeg_quality(src))
        return LoadedImage(_to_rgb(ImageOps.exif_transpose(src) or src), facts)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2 and src.shape[0] * src.shape[1] > max_pixels:
            raise ImageLoadError(
                source, f"array of {src.shape[0] * src.shape[1]} pixels exceeds {max_pixels}"
            )
        img = _array_to_image(src, source)
        return LoadedImage(img, ImageFacts(source, None, img.width, img.height, "array"))
    if isinstance(src, bytes):
        data = src
    elif isinstance(src, str | os.PathLike):
        path = Path(src)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageLoadError(source, "not a regular file")
            if size > max_bytes:
                raise ImageLoadError(source, f"file is {size} bytes, over the limit of {max_bytes}")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageLoadError(source, "no such file") from None
        except IsADirectoryError:
            raise ImageLoadError(source, "is a directory") from None
        except PermissionError:
            raise ImageLoadError(source, "permission denied") from None
        except OSError as exc:
            raise ImageLoadError(source, f"cannot read: {exc.strerror or exc}") from None
    else:
        raise ImageLoadError(source, f"unsupported input type {type(src).__name__}")
    return decode_bytes(data, source, max_pixels=max_pixels, max_bytes=max_bytes)


def _over_limit(w: int, h: int, limit: int) -> str:
    return f"{w}x{h} = {w * h} decoded pixels exceeds the limit of {limit} (decompression bomb?)"


def _bytes_of(src: bytes | str | os.PathLike) -> bytes | None:
    if isinstance(src, bytes):
        return src
    try:
        with open(src, "rb") as fh:
            return fh.read(1 << 20)  # headers sit at the start; a bomb's payload is never needed
    except OSError:
        return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The size a header declares, read with the format's own parser but without Pillow's bomb check:
    used only to name the size in the refusal of an image Pillow will not open."""
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and accept(data[:16]) is not True:
            continue
        try:
            return factory(io.BytesIO(data), "").size
        except Exception:  # noqa: BLE001, S112 - not this format's header; try the next
            continue
    return None


def _bomb_reason(data: bytes | None, pillow_message: str, max_pixels: int | None) -> str:
    """Our wording for Pillow's own refusal (a size over twice ``PIL.Image.MAX_IMAGE_PIXELS``)."""
    limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    size = _declared_size(data) if data is not None else None
    if size is not None:
        return _over_limit(*size, limit)
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    count = f"{found.group(1)} decoded pixels" if found else "the decoded size"
    return f"{count} exceeds the limit of {limit} (decompression bomb?)"


def read_header(
    src: bytes | str | os.PathLike, source: str | None = None, *, max_pixels: int | None = None
) -> tuple[int, int, str | None, int]:
    """(width, height, PIL format, frames) from the header alone: no pixel is decoded. Raises
    ImageLoadError for data that is not an image, and PixelLimitError for sizes Pillow itself refuses
    (``max_pixels`` is only named in that message)."""
    label = source or _describe(src)
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            return img.width, img.height, img.format, int(getattr(img, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:
        raise PixelLimitError(label, _bomb_reason(_bytes_of(src), str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognised image format") from None
    except Exception as exc:  # noqa: BLE001 - header parsers raise many types
        raise ImageLoadError(label, f"cannot read the image header: {exc}") from None


def decode_bytes(
    data: bytes,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    sha256: str | None = None,
) -> LoadedImage:
    """Decode encoded bytes to RGB, refusing more than ``max_pixels`` decoded pixels before decoding.

    Pillow's process-wide guard (``PIL.Image.MAX_IMAGE_PIXELS``) is left exactly as the application set
    it: changing it per call would race between threads and could switch it off for the whole process.
    So Pillow still refuses anything over twice its own limit (about 179 M pixels by default), reported
    here in the same words; a ``max_pixels`` above that needs the application to raise Pillow's limit.
    ``sha256``: the digest of ``data`` when the caller hashed it already (it is not hashed again).
    """
    if len(data) == 0:
        raise ImageLoadError(source, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageLoadError(source, f"{len(data)} bytes, over the limit of {max_bytes}")
    digest = sha256 or hashlib.sha256(data).hexdigest()
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError(source, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise PixelLimitError(source, _bomb_reason(data, str(exc), max_pixels)) from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise ImageLoadError(source, f"cannot open image: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(source, f"invalid dimensions {w}x{h}")
    if w * h > max_pixels:
        raise PixelLimitError(source, _over_limit(w, h, max_pixels))
    fmt = img.format
    mode = img.mode
    try:
        quality = estimate_jpeg_quality(img) if fmt == "JPEG" else None
        n_frames = int(getattr(img, "n_frames", 1) or 1)  # walks the frames: a broken one raises here
        img.seek(0)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # our own image: no copy of an upright one (~1.5 ms/MP)
        rgb = _to_rgb(img)
        rgb.load()
    except Image.DecompressionBombError as exc:  # a later frame or tile can declare more
        raise PixelLimitError(source, _bomb_reason(data, str(exc), max_pixels)) from None
    except Exception as exc:  # noqa: BLE001 - truncated data surfaces as OSError, SyntaxError, ...
        raise ImageLoadError(source, f"corrupt or truncated image data: {exc}") from None
    facts = ImageFacts(source, fmt, w, h, mode, quality, n_frames, digest)
    return LoadedImage(rgb, facts, data=data)


def is_image_file(path: Path) -> bool:
    """Whether the file's first bytes announce a supported image format (its name is not consulted)."""
    try:
        with open(path, "rb") as fh:
            return sniff_image_type(fh.read(32)) is not None
    except OSError:
        return True  # unreadable: let the decoder report it with its reason rather than drop it here


def iter_image_paths(
    inputs: Iterable[str | os.PathLike],
    *,
    recursive: bool = True,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Expand files, folders (recursively, sorted) and glob patterns, in input order.

    Inside a folder or glob, a file is an image by its content (magic bytes), whatever its name: an image
    stored under a content hash with no suffix is found, and a ``notes.txt`` is passed to ``on_skip`` with
    the reason instead of being dropped unsaid. A file named explicitly is always yielded, so that a bad
    input gets reported by the decoder."""
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            children = sorted(path.glob("**/*" if recursive else "*"))
        elif any(ch in text for ch in "*?[") and not path.exists():
            children = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        else:
            yield path
            continue
        for child in children:
            if not child.is_file():
                continue
            if is_image_file(child):
                yield child
            elif on_skip is not None:
                on_skip(child, "not an image (its first bytes match no supported format)")
