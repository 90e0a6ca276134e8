"""Perturbations for robustness sweeps, applied on the fly to decoded images.

Spec grammar (``--perturb``): ``OP:START:STOP:STEP`` (inclusive range), ``OP:V1,V2,...`` or ``OP:V``.

  jpeg     re-encode as JPEG at quality q (1-100, PIL, 4:2:0)        jpeg:10:100:10
  blur     Gaussian blur with standard deviation sigma (pixels)      blur:0:4:0.5
  resize   rescale by factor s (bicubic, antialiased)                resize:0.25:4:0.25

A double form applies the same operation twice: ``jpeg2``, ``double-jpeg`` or ``jpegx2`` (likewise for
blur and resize). Identity points (blur 0, resize 1) are the clean images and reuse their scores.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aligngemini.decode import DEFAULT_MAX_PIXELS, ImageLoadError, LoadedImage, decode_bytes

OPS = ("jpeg", "blur", "resize")
CLEAN = "none"
_PARAM = {"jpeg": "q", "blur": "sigma", "resize": "scale"}
_LIMITS = {"jpeg": (1.0, 100.0), "blur": (0.0, 50.0), "resize": (0.01, 16.0)}


@dataclass(frozen=True)
class Perturbation:
    op: str
    value: float
    times: int = 1

    @property
    def is_identity(self) -> bool:
        return (self.op == "blur" and self.value == 0) or (self.op == "resize" and self.value == 1)

    @property
    def key(self) -> str:
        """Canonical name, used in cache keys and reports (``jpeg:q=50``, ``blur:sigma=1.5x2``)."""
        if self.is_identity:
            return CLEAN
        val = f"{self.value:g}"
        return f"{self.op}:{_PARAM[self.op]}={val}" + (f"x{self.times}" if self.times > 1 else "")

    def apply(self, image: LoadedImage, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
        out = image
        for _ in range(self.times):
            out = _apply_once(self.op, self.value, out, max_pixels)
        if not self.is_identity:
            out.extra = {**out.extra, "perturbation": self.key}
        return out


def _apply_once(op: str, value: float, image: LoadedImage, max_pixels: int) -> LoadedImage:
    img = image.image
    if op == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(round(value)))
        decoded = decode_bytes(buf.getvalue(), image.source, max_pixels=max_pixels)
        return LoadedImage(decoded.image, decoded.facts, dict(image.extra))
    if op == "blur":
        if value == 0:
            return image
        from scipy.ndimage import gaussian_filter

        arr = np.asarray(img, dtype=np.float32)
        blurred = gaussian_filter(arr, sigma=(value, value, 0), mode="reflect")
        new = Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
        return LoadedImage(new, image.facts, dict(image.extra))
    if op == "resize":
        if value == 1:
            return image
        w, h = max(1, round(img.width * value)), max(1, round(img.height * value))
        if w * h > max_pixels:
            raise ImageLoadError(image.source, f"resize x{value:g} gives {w}x{h}, over {max_pixels} pixels")
        new = img.resize((w, h), Image.Resampling.BICUBIC)
        facts = dataclasses.replace(image.facts, width=w, height=h)
        return LoadedImage(new, facts, dict(image.extra))
    raise ValueError(f"unknown perturbation {op!r}; choose one of {OPS}")


@dataclass(frozen=True)
class Sweep:
    """One ``--perturb`` spec: an operation (applied ``times`` times) at each of ``values``."""

    spec: str
    op: str
    times: int
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        return (
            self.op
            if self.times == 1
            else f"double-{self.op}"
            if self.times == 2
            else f"{self.op}x{self.times}"
        )

    @property
    def parameter(self) -> str:
        return _PARAM[self.op]

    def points(self) -> list[Perturbation]:
        return [Perturbation(self.op, v, self.times) for v in self.values]


_OP_RE = re.compile(r"^(?:double-(?P<d>[a-z]+)|(?P<op>[a-z]+?)(?:x?(?P<n>\d+))?)$")


def parse_perturb(spec: str) -> Sweep:
    """Parse ``jpeg:10:100:10``, ``double-blur:0:4:0.5``, ``resize2:0.5,1,2``, ``jpeg:75``."""
    text = spec.strip().lower()
    head, _, rest = text.partition(":")
    m = _OP_RE.match(head)
    if not m or not rest:
        raise ValueError(
            f"perturbation {spec!r}: expected OP:START:STOP:STEP, OP:V1,V2 or OP:V with OP in {OPS}"
        )
    op = m.group("d") or m.group("op")
    times = 2 if m.group("d") else int(m.group("n") or 1)
    if op not in OPS:
        raise ValueError(f"perturbation {spec!r}: unknown operation {op!r}; choose one of {OPS}")
    if not 1 <= times <= 4:
        raise ValueError(f"perturbation {spec!r}: apply 1 to 4 times, not {times}")
    try:
        parts = rest.split(":")
        if len(parts) == 3:
            start, stop, step = (float(p) for p in parts)
            if step <= 0 or stop < start:
                raise ValueError("need STEP > 0 and STOP >= START")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 6) for i in range(n)]
        elif len(parts) == 1:
            values = [float(v) for v in parts[0].split(",") if v.strip()]
        else:
            raise ValueError("use OP:START:STOP:STEP, OP:V1,V2,... or OP:V")
    except ValueError as exc:
        raise ValueError(f"perturbation {spec!r}: {exc}") from None
    lo, hi = _LIMITS[op]
    bad = [v for v in values if not lo <= v <= hi]
    if not values or bad:
        raise ValueError(
            f"perturbation {spec!r}: {_PARAM[op]} must lie in [{lo:g}, {hi:g}]; got {bad or 'none'}"
        )
    if op == "jpeg":
        values = [float(round(v)) for v in values]
    return Sweep(spec, op, times, tuple(dict.fromkeys(values)))
