"""Small synthetic images, manifests and generators shared by the set-builder and audit tests."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def photo(
    seed: int, width: int, height: int, tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> Image.Image:
    """A photo-like image: smooth colour fields, a few soft shapes, mild sensor noise. ``tint`` is an
    additive colour offset: it changes content (mean colour) without changing high-pass residuals."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        img[..., c] = 128 + 60 * np.sin(fx * xx / width * 6.28 + ph) * np.cos(fy * yy / height * 6.28)
    for _ in range(6):
        cx, cy, r = (
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(8, max(10, min(width, height) / 3)),
        )
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r**2
        img[mask] = img[mask] * 0.5 + rng.uniform(0, 255, 3) * 0.5
    img += np.asarray(tint, np.float32)
    img += rng.normal(0, 2.0, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.6))


def save(img: Image.Image, path: Path, fmt: str, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {"quality": quality} if fmt == "JPEG" and quality else {}
    if fmt == "PNG":
        kwargs["compress_level"] = 1  # test speed: noisy images compress slowly
    img.save(path, format=fmt, **kwargs)


@dataclass
class Source:
    label: str
    source: str
    split: str
    fmt: str = "PNG"
    quality: int | None = None
    size: tuple[int, int] = (128, 96)
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    generator: str | None = None
    extra: dict = field(default_factory=dict)


def write_sources(root: Path, sources: Sequence[Source], *, seed0: int = 0) -> Path:
    """Write each source image under root/<label>/<source>/ and a manifest with relative paths."""
    from aligngemini.data.manifest import ManifestRow, write_manifest

    rows = []
    for i, s in enumerate(sources):
        ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[s.fmt]
        rel = f"{s.label}/{s.source}/{i:04d}.{ext}"
        save(photo(seed0 + i, *s.size, tint=s.tint), root / rel, s.fmt, s.quality)
        data = (root / rel).read_bytes()
        rows.append(
            ManifestRow(
                path=rel,
                label=s.label,
                generator=s.generator,
                source=s.source,
                license="test",
                sha256=hashlib.sha256(data).hexdigest(),
                width=s.size[0],
                height=s.size[1],
                format=s.fmt,
                split=s.split,
                group=None,
                extra=dict(s.extra),
            )
        )
    manifest = root / "manifest.jsonl"
    write_manifest(rows, manifest)
    return manifest


def checker(size: tuple[int, int], amplitude: float) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx + yy) % 2) * 2 - 1)[..., None].astype(np.float32) * amplitude


class PatternGenerator:
    """A stand-in reconstruction: slight blur plus a faint checkerboard (a decoder-like high-frequency
    trace). Counts calls and images so tests can see when work is skipped."""

    def __init__(self, name: str = "fake-vae", amplitude: float = 6.0, blur: float = 0.0):
        self.name = name
        self.amplitude = amplitude
        self.blur = blur
        self.calls = 0
        self.images = 0

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        self.calls += 1
        self.images += len(images)
        out = []
        for img in images:
            if self.blur:
                img = img.filter(ImageFilter.GaussianBlur(self.blur))
            arr = np.asarray(img, np.float32) + checker(img.size, self.amplitude)
            out.append(Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)))
        return out


class ResizingGenerator(PatternGenerator):
    """A broken generator that returns a different size."""

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return [img.resize((img.width // 2, img.height // 2)) for img in images]


def mean_colour_embedder(images: list[Image.Image]) -> np.ndarray:
    """A 'content' embedding for tests: per-channel means and coarse 2x2 layout; blind to fine pixels."""
    feats = []
    for img in images:
        small = np.asarray(img.convert("RGB").resize((2, 2), Image.Resampling.BOX), np.float32) / 255.0
        feats.append(np.concatenate([small.reshape(-1), small.mean(axis=(0, 1))]) - 0.5)
    return np.stack(feats)


def jpeg_image(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out
