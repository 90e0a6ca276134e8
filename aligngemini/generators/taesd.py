"""Tiny autoencoders of the TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2...): a real photo sent
through the encoder and the decoder comes back with a latent-diffusion decoder's upsampling fingerprint.

Each is two plain ``nn.Sequential`` stacks of 3x3 convolutions, stored as ``*_encoder.safetensors`` and
``*_decoder.safetensors`` with the stack's indices as keys. Everything the architecture varies is read from
the weights: the latent channels, and which residual blocks carry the GroupNorm branch of the FLUX.2 variant
(``N.pool.*``: 1x1 conv to 256 channels, GroupNorm with 4 groups, ReLU, 1x1 conv back, added to the block's
input). Spec: ``taesd:<folder>``, e.g. ``taesd:/data/weights/taef2``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from aligngemini.generators.base import (
    GeneratorSpecError,
    pad_to_multiple,
    reconstruct_batched,
    resolve_device,
)

FACTOR = 8  # three stride-2 stages


def _conv(c_in: int, c_out: int, *, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias, stride=stride)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, channels: int, *, norm_branch: bool) -> None:
        super().__init__()
        c = channels
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (
            nn.Sequential(
                nn.Conv2d(c, 256, 1, bias=False),
                nn.GroupNorm(4, 256),
                nn.ReLU(),
                nn.Conv2d(256, c, 1, bias=False),
            )  # fmt: skip
            if norm_branch
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _with_norm_branch(state: dict[str, torch.Tensor]) -> set[int]:
    return {int(k.split(".", 1)[0]) for k in state if ".pool." in k}


def build_encoder(latent_channels: int, norm_blocks: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, 64)]
    layers.append(_Block(64, norm_branch=len(layers) in norm_blocks))
    for _ in range(3):
        layers.append(_conv(64, 64, bias=False, stride=2))
        for _ in range(3):
            layers.append(_Block(64, norm_branch=len(layers) in norm_blocks))
    layers.append(_conv(64, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int, norm_blocks: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for stage, blocks in enumerate((3, 3, 3, 1)):
        if stage:
            layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
        for _ in range(blocks):
            layers.append(_Block(64, norm_branch=len(layers) in norm_blocks))
    layers.append(_conv(64, 3))
    return nn.Sequential(*layers)


def weights_file(folder: Path, part: str) -> Path:
    """The one ``*<part>.safetensors`` (part: encoder or decoder) in a TAESD-family folder."""
    found = sorted(folder.glob(f"*{part}.safetensors"))
    if len(found) != 1:
        raise GeneratorSpecError(
            f"{folder}: expected exactly one *_{part}.safetensors, found {[p.name for p in found] or 'none'} "
            "(pickled .pth weights are not loaded: convert them to safetensors)"
        )
    return found[0]


def _read_part(folder: str | os.PathLike, part: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise GeneratorSpecError(
            f"taesd:{folder}: no such folder (it should hold *_encoder/_decoder.safetensors)"
        )
    return {k: v.float() for k, v in load_file(weights_file(path, part)).items()}


def _fitted(folder: str | os.PathLike, name: str, module: nn.Sequential, state: dict) -> nn.Sequential:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise GeneratorSpecError(
            f"taesd:{folder}: the {name} weights do not fit a TAESD-family network: {exc}"
        ) from None
    return module.eval()


def latent_channels_of(encoder: nn.Sequential) -> int:
    """Channels of the latent a TAESD-family encoder writes (its last convolution's outputs)."""
    return int(encoder[-1].out_channels)


def load_tiny_encoder(folder: str | os.PathLike) -> nn.Sequential:
    """The encoder alone, eval mode, float32, from a folder holding one ``*encoder.safetensors``."""
    state = _read_part(folder, "encoder")
    last = max(int(k.split(".", 1)[0]) for k in state)
    encoder = build_encoder(int(state[f"{last}.weight"].shape[0]), _with_norm_branch(state))
    return _fitted(folder, "encoder", encoder, state)


def load_tiny_autoencoder(folder: str | os.PathLike) -> tuple[nn.Sequential, nn.Sequential]:
    """(encoder, decoder) in eval mode, float32, from a folder holding the two safetensors files."""
    encoder = load_tiny_encoder(folder)
    dec_state = _read_part(folder, "decoder")
    decoder = build_decoder(latent_channels_of(encoder), _with_norm_branch(dec_state))
    return encoder, _fitted(folder, "decoder", decoder, dec_state)


class TinyAutoencoderGenerator:
    """Round trip through a TAESD-family autoencoder (latents are used as encoded: no sampling)."""

    kind = "taesd"
    default_batch_pixels = 4 * 512 * 512

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_pixels: int | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = dtype or torch.float32
        self.encoder, self.decoder = (m.to(self.device, dtype=self.dtype) for m in self.load(folder))
        self.name = f"{self.kind}:{Path(folder).expanduser().name}"
        self.max_batch_pixels = max_batch_pixels or self.default_batch_pixels

    @staticmethod
    def load(folder: str | os.PathLike) -> tuple[nn.Module, nn.Module]:
        return load_tiny_autoencoder(folder)

    @staticmethod
    def to_unit(y: torch.Tensor) -> torch.Tensor:
        """The decoder's output in [0, 1] (TAESD decoders write [0, 1] already)."""
        return y

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return reconstruct_batched(images, self.roundtrip, self.max_batch_pixels)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> its reconstruction, same shape, float32 on the CPU."""
        padded, (h, w) = pad_to_multiple(x, FACTOR)
        with torch.inference_mode():
            y = self.decoder(self.encoder(padded.to(self.device, dtype=self.dtype)))
        return self.to_unit(y.float()).clamp(0, 1)[..., :h, :w].cpu()
