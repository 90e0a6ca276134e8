"""VAE round trip: any ``diffusers.AutoencoderKL`` (the paper's SD2.1 VAE, FLUX's, or one trained here).

The image is reflect-padded to the VAE's down-sampling multiple, encoded, decoded from the latent mean (or a
sample), and cropped back, so that every pixel of the original has its reconstruction and nothing is lost at
the borders. Very large images go through diffusers' tiled encode/decode; equal sizes are batched.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from PIL import Image

from aligngemini.generators.base import (
    GeneratorSpecError,
    finite_or_fp32,
    pad_to_multiple,
    reconstruct_batched,
    resolve_device,
)

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?$")


class VAELoadError(GeneratorSpecError):
    """A VAE that cannot be loaded; the message says what to pass instead."""


def _save_hint(repo: str, subfolder: str | None) -> str:
    sub = f", subfolder={subfolder!r}" if subfolder else ""
    return (
        "Where a model hub is reachable, save it to a folder with\n"
        f"  python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('{repo}'{sub})"
        ".save_pretrained('DIR')\"\n"
        "then copy DIR here and pass 'vae:DIR' (a folder holding config.json and "
        "diffusion_pytorch_model.safetensors; a full pipeline folder with a vae/ subfolder works too)."
    )


def _local_layout(path: Path) -> tuple[Path, str | None]:
    if not path.is_dir():
        raise VAELoadError(f"{path}: expected a folder written by save_pretrained, found a file")
    if (path / "config.json").is_file():
        return path, None
    if (path / "vae" / "config.json").is_file():
        return path, "vae"
    raise VAELoadError(
        f"{path}: no config.json (nor vae/config.json) here; pass a folder written by "
        "AutoencoderKL.save_pretrained or a diffusers pipeline folder"
    )


def load_autoencoder(source: str | os.PathLike, *, dtype: torch.dtype | None = None) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a local folder (save_pretrained layout, or a pipeline folder with ``vae/``)
    or a hub id ``ORG/NAME`` / ``ORG/NAME/SUBFOLDER``. Safetensors weights only."""
    import torch
    from diffusers import AutoencoderKL

    dtype = dtype or torch.float32
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.exists():
        root, subfolder = _local_layout(path)
        try:
            return AutoencoderKL.from_pretrained(
                root, subfolder=subfolder, torch_dtype=dtype, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise VAELoadError(
                f"{path}: could not load an AutoencoderKL ({exc}); it needs config.json and "
                "diffusion_pytorch_model.safetensors (.bin weights are not loaded: convert them to safetensors)"
            ) from exc
    if text.startswith((".", "/", "~")) or (os.sep in text and not _HUB_ID.match(text)):
        raise VAELoadError(f"{text}: no such folder; pass 'vae:DIR' with a folder written by save_pretrained")
    if not _HUB_ID.match(text):
        raise VAELoadError(f"{text!r} is neither an existing folder nor a hub id like ORG/NAME[/SUBFOLDER]")
    parts = text.split("/")
    repo = "/".join(parts[:2])
    subfolders = [parts[2]] if len(parts) == 3 else [None, "vae"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    online = not offline and _hub_reachable()
    errors: list[str] = []
    for subfolder in subfolders:
        try:  # without a reachable hub, only the local hub cache is tried (no retries against a dead network)
            return AutoencoderKL.from_pretrained(
                repo,
                subfolder=subfolder,
                torch_dtype=dtype,
                use_safetensors=True,
                local_files_only=not online,
            )
        except Exception as exc:  # noqa: BLE001 - hub errors come in many classes; all mean "not loadable"
            where = f"{repo}/{subfolder}" if subfolder else repo
            errors.append(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if online:
        why = "the hub answered, but no AutoencoderKL with safetensors weights is there"
    elif offline:
        why = "HF_HUB_OFFLINE is set and the local hub cache does not hold it"
    else:
        why = "no model hub is reachable from here and the local hub cache does not hold it"
    raise VAELoadError(
        f"could not load the VAE {text!r} ({why}):\n  "
        + "\n  ".join(errors)
        + "\n"
        + _save_hint(repo, subfolders[0] if len(subfolders) == 1 else None)
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub endpoint within ``timeout`` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


class VAEGenerator:
    """Reconstruct images through an ``AutoencoderKL``: fp16 on GPU (falling back to fp32 on overflow),
    fp32 on CPU; latent mean by default, a seeded latent sample with ``sample=True``.

    Images with a side above ``tile`` go through diffusers' tiled encode/decode, which changes the result
    (GroupNorm statistics are taken per tile and tiles are blended: measured 25 dB PSNR between tiled-512 and
    whole-image reconstructions of 1280x720 photos); hence a high default, so that ordinary photos are
    reconstructed whole and tiling only bounds memory for very large ones. ``None`` never tiles."""

    def __init__(
        self,
        source: str | os.PathLike | AutoencoderKL,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        sample: bool = False,
        seed: int = 0,
        batch_size: int = 8,
        max_batch_pixels: int = 4 * 512 * 512,
        tile: int | None = 2048,
        name: str | None = None,
    ):
        import torch
        from diffusers import AutoencoderKL

        self.device = resolve_device(device)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        if isinstance(source, AutoencoderKL):
            vae, default_name = source.to(dtype=self.dtype), "vae:custom"
        else:
            vae = load_autoencoder(source, dtype=self.dtype)
            text = str(source)
            default_name = (
                f"vae:{Path(text).expanduser().name}" if Path(text).expanduser().exists() else f"vae:{text}"
            )
        self.name = name or default_name
        self.vae = vae.to(self.device).eval()
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if tile is not None:
            if tile % self.factor:
                raise ValueError(
                    f"tile={tile} must be a multiple of the VAE's down-sampling factor {self.factor}"
                )
            self.vae.enable_tiling()
            self.vae.tile_sample_min_size = tile
            self.vae.tile_latent_min_size = tile // self.factor
        self.sample = sample
        self.seed = seed
        self.batch_size = max(1, batch_size)
        self.max_batch_pixels = max_batch_pixels

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return reconstruct_batched(images, self.roundtrip, self.max_batch_pixels, self.batch_size)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> its reconstruction, same shape, float32 on the CPU."""
        padded, (h, w) = pad_to_multiple(x, self.factor)
        y = finite_or_fp32(self, self.vae, lambda: self._run(padded))
        return ((y.float() + 1.0) / 2.0).clamp(0, 1)[..., :h, :w].cpu()

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            inp = (padded * 2.0 - 1.0).to(self.device, dtype=self.dtype)
            dist = self.vae.encode(inp).latent_dist
            if self.sample:
                gen = torch.Generator(device=self.device).manual_seed(self.seed)
                z = dist.sample(generator=gen)
            else:
                z = dist.mode()
            return self.vae.decode(z).sample
