"""ESRGAN reconstruction: down-scale an image by the model's factor, up-scale it back with the network.

The models are the TF.js layers models shipped in the npm packages ``@upscalerjs/esrgan-medium`` (RDN,
inputs and outputs in [0, 255], nearest up-sampling) and ``@upscalerjs/esrgan-thick`` (RRDN, [0, 1],
pixel shuffle), MIT-licensed, for x2, x3, x4 and x8; ``tfjs.py`` runs them in PyTorch. The result keeps the
scene of the original and carries a super-resolution network's pixels: a generator family the pixel branch
is never trained on, for held-out tests.

Packages are fetched once by :func:`aligngemini.npm.fetch_npm`, checked against their registry integrity
hash. Offline: put the ``.tgz`` files that ``npm pack`` writes into a folder and set ``ALIGNGEMINI_NPM_DIR``
to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from aligngemini.generators.base import (
    GeneratorSpecError,
    finite_or_fp32,
    pad_to_multiple,
    reconstruct_batched,
    resolve_device,
)
from aligngemini.generators.tfjs import load_tfjs_model
from aligngemini.npm import Fetcher, fetch_npm


@dataclass(frozen=True)
class ESRGANPackage:
    npm: str  # pinned npm spec
    integrity: str  # the registry's dist.integrity for that version
    value_range: float  # the network's input/output scale: 255 for RDN models, 1 for RRDN


PACKAGES: dict[str, ESRGANPackage] = {
    "medium": ESRGANPackage(
        "@upscalerjs/esrgan-medium@1.0.0",
        "sha512-Z8JnR87sgetPABKevasXST3FdnXhaoTu9zpXnu3KLaHYpYStVt0FD1VZS9c6jhSGMBC0H929gN9RbWl+MeisKA==",
        255.0,
    ),
    "thick": ESRGANPackage(
        "@upscalerjs/esrgan-thick@1.0.0",
        "sha512-Xt7LAEa1WYVdU8teye1A2J3T2ylb3ihlU/x01x1ieM7zZh5FzTll6fwmeUC82mkztWloGZM65KdSEWOmhlXOdw==",
        1.0,
    ),
}
SCALES = (2, 3, 4, 8)
DOWNSCALE_METHODS = ("area", "bicubic")


# -------------------------------------------------------------------------------------------- generator


def parse_esrgan_spec(spec: str) -> tuple[str, int, str]:
    """``esrgan:<medium|thick>:x<scale>[:<area|bicubic>]`` -> (variant, scale, downscale method)."""
    parts = spec.split(":")
    if parts[0] != "esrgan" or len(parts) not in (3, 4):
        raise GeneratorSpecError(
            f"{spec!r}: expected esrgan:<{'|'.join(PACKAGES)}>:x<{'|'.join(map(str, SCALES))}>[:area|:bicubic]"
        )
    variant, scale_text = parts[1], parts[2]
    method = parts[3] if len(parts) == 4 else "area"
    if variant not in PACKAGES:
        raise GeneratorSpecError(
            f"{spec!r}: unknown ESRGAN variant {variant!r}; choose {' or '.join(PACKAGES)}"
        )
    m = re.fullmatch(r"x(\d+)", scale_text)
    if not m or int(m.group(1)) not in SCALES:
        raise GeneratorSpecError(
            f"{spec!r}: scale {scale_text!r}; choose one of {', '.join(f'x{s}' for s in SCALES)}"
        )
    if method not in DOWNSCALE_METHODS:
        raise GeneratorSpecError(
            f"{spec!r}: down-scaling {method!r}; choose {' or '.join(DOWNSCALE_METHODS)}"
        )
    return variant, int(m.group(1)), method


class ESRGANGenerator:
    """Down-scale by ``scale`` (area average or antialiased bicubic), up-scale with the ESRGAN network, crop
    back to the original size. Low-resolution inputs larger than ``tile`` are processed in overlapping tiles."""

    def __init__(
        self,
        variant: str = "medium",
        scale: int = 2,
        *,
        device: str | None = None,
        downscale: str = "area",
        tile: int | None = 256,
        tile_overlap: int = 16,
        dtype: torch.dtype | None = None,
        fetcher: Fetcher | None = None,
        model_json: str | Path | None = None,
    ):
        if variant not in PACKAGES:
            raise GeneratorSpecError(f"unknown ESRGAN variant {variant!r}; choose {' or '.join(PACKAGES)}")
        if scale not in SCALES:
            raise GeneratorSpecError(f"ESRGAN scale {scale}; choose one of {SCALES}")
        if downscale not in DOWNSCALE_METHODS:
            raise GeneratorSpecError(f"down-scaling {downscale!r}; choose {' or '.join(DOWNSCALE_METHODS)}")
        package = PACKAGES[variant]
        if model_json is None:
            pkg_dir = fetch_npm(package.npm, integrity=package.integrity, fetcher=fetcher)
            model_json = pkg_dir / "models" / f"x{scale}" / "model.json"
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model = load_tfjs_model(model_json).to(self.device, dtype=self.dtype)
        self.variant, self.scale, self.downscale = variant, scale, downscale
        self.value_range = package.value_range
        self.tile, self.tile_overlap = tile, tile_overlap
        self.name = f"esrgan:{variant}:x{scale}" + ("" if downscale == "area" else f":{downscale}")

    @classmethod
    def from_spec(cls, spec: str, *, device: str | None = None, **kwargs: object) -> ESRGANGenerator:
        variant, scale, method = parse_esrgan_spec(spec)
        return cls(variant, scale, device=device, downscale=method, **kwargs)  # type: ignore[arg-type]

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return reconstruct_batched(images, self.roundtrip, max_batch_pixels=1024 * 1024)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] with H, W multiples of the scale -> the low-resolution input, in [0, 1]."""
        h, w = x.shape[-2] // self.scale, x.shape[-1] // self.scale
        if self.downscale == "area":
            return F.avg_pool2d(x, self.scale)
        return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> its reconstruction, same shape, float32 on the CPU."""
        padded, (h, w) = pad_to_multiple(x, self.scale)
        low = self.down(padded)
        return self.upscale(low)[..., :h, :w].float().cpu()

    def upscale(self, low: torch.Tensor) -> torch.Tensor:
        """The network on a [B, 3, h, w] batch in [0, 1]: [B, 3, h*scale, w*scale] in [0, 1]."""
        return finite_or_fp32(self, self.model, lambda: self._upscale(low))

    def _net(self, low: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = self.model((low * self.value_range).to(self.device, dtype=self.dtype))
        return (y.float() / self.value_range).clamp(0, 1)

    def _upscale(self, low: torch.Tensor) -> torch.Tensor:
        b, _, hl, wl = low.shape
        t, o, s = self.tile, self.tile_overlap, self.scale
        if t is None or (hl <= t and wl <= t):
            return self._net(low)
        out = torch.empty(b, 3, hl * s, wl * s, device=self.device)
        for y0 in range(0, hl, t):
            for x0 in range(0, wl, t):
                y1, x1 = min(y0 + t, hl), min(x0 + t, wl)
                ya, xa = max(y0 - o, 0), max(x0 - o, 0)
                yb, xb = min(y1 + o, hl), min(x1 + o, wl)
                res = self._net(low[:, :, ya:yb, xa:xb])
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = res[
                    :, :, (y0 - ya) * s : (y1 - ya) * s, (x0 - xa) * s : (x1 - xa) * s
                ]
        return out
