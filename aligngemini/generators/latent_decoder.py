"""A decoder of our own on a frozen TAESD-family encoder: real latents, an SD-family decoder, trainable on a CPU.

Training a whole VAE of our own until it reconstructs better than bicubic interpolation takes a GPU; most of that
time goes into learning a good latent. TAEF2's encoder already writes one (32 channels at 1/8, FLUX.2's latent
shape), so only a decoder is learnt here: diffusers' ``Decoder``, the up-sampling network of the SD / SDXL / SD3 /
FLUX VAEs (ResNet blocks with GroupNorm and SiLU, nearest-neighbour x2 then a 3x3 convolution, a mid-block with
attention), narrower. A photo sent through the encoder and this decoder comes back with that family's
up-sampling trace rather than the TAESD decoder's.

A folder holds ``taesd_encoder.safetensors`` (the encoder's weights, copied with its licence file), and
``kl_decoder.safetensors`` with ``kl_decoder.json`` (the decoder's architecture). Spec: ``taesd-kl:<folder>``;
``aligngemini generators train-vae --encoder taesd:<folder>`` writes one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligngemini.generators.base import GeneratorSpecError
from aligngemini.generators.taesd import TinyAutoencoderGenerator

if TYPE_CHECKING:
    import torch
    from torch import nn

ENCODER_FILE = "taesd_encoder.safetensors"
ENCODER_LICENSE = "ENCODER_LICENSE"
DECODER_FILE = "kl_decoder.safetensors"
DECODER_CONFIG = "kl_decoder.json"


def kl_decoder(latent_channels: int, block_out_channels: tuple[int, ...], layers_per_block: int) -> nn.Module:
    """diffusers' VAE decoder (three x2 up-samplers: four blocks) reading ``latent_channels``; output in [-1, 1]."""
    from diffusers.models.autoencoders.vae import Decoder

    if len(block_out_channels) != 4:
        raise GeneratorSpecError("block_out_channels needs 4 entries (8x up-sampling: 3 up-samplers)")
    return Decoder(
        in_channels=latent_channels,
        out_channels=3,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=math.gcd(32, *block_out_channels),
        act_fn="silu",
    )


def save_latent_decoder(
    out: Path, decoder: nn.Module, arch: dict[str, Any], encoder_folder: str | os.PathLike
) -> None:
    """Write the decoder, its architecture and a copy of the encoder's weights (and licence) into ``out``."""
    from safetensors.torch import save_file

    from aligngemini.generators.taesd import weights_file

    source = Path(encoder_folder).expanduser()
    shutil.copyfile(weights_file(source, "encoder"), out / ENCODER_FILE)
    licence = next((p for p in sorted(source.iterdir()) if p.name.upper().startswith("LICENSE")), None)
    if licence is not None:
        shutil.copyfile(licence, out / ENCODER_LICENSE)
    state = {k: v.detach().float().cpu().contiguous() for k, v in decoder.state_dict().items()}
    save_file(state, out / DECODER_FILE)
    (out / DECODER_CONFIG).write_text(json.dumps(arch, indent=1) + "\n")


def load_latent_decoder(folder: str | os.PathLike) -> tuple[nn.Sequential, nn.Module]:
    """(encoder, decoder), eval mode, float32, from a folder :func:`save_latent_decoder` wrote."""
    from safetensors.torch import load_file

    from aligngemini.generators.taesd import latent_channels_of, load_tiny_encoder

    path = Path(folder).expanduser()
    missing = [n for n in (DECODER_FILE, DECODER_CONFIG) if not (path / n).is_file()]
    if missing:
        raise GeneratorSpecError(
            f"taesd-kl:{folder}: missing {', '.join(missing)}; give a folder written by "
            "'aligngemini generators train-vae --encoder taesd:DIR'"
        )
    arch = json.loads((path / DECODER_CONFIG).read_text())
    encoder = load_tiny_encoder(path)
    if arch.get("latent_channels") != latent_channels_of(encoder):
        raise GeneratorSpecError(
            f"taesd-kl:{folder}: the decoder reads {arch.get('latent_channels')} latent channels, the encoder "
            f"writes {latent_channels_of(encoder)}"
        )
    decoder = kl_decoder(arch["latent_channels"], tuple(arch["block_out_channels"]), arch["layers_per_block"])
    try:
        decoder.load_state_dict(load_file(path / DECODER_FILE))
    except RuntimeError as exc:
        raise GeneratorSpecError(f"taesd-kl:{folder}: the decoder weights do not fit {arch}: {exc}") from None
    return encoder, decoder.eval()


class LatentDecoderGenerator(TinyAutoencoderGenerator):
    """Round trip through a TAESD-family encoder and a decoder of our own (latents used as encoded)."""

    kind = "taesd-kl"
    default_batch_pixels = 2 * 512 * 512  # the SD-family decoder holds wider activations than TAESD's

    @staticmethod
    def load(folder: str | os.PathLike) -> tuple[nn.Module, nn.Module]:
        return load_latent_decoder(folder)

    @staticmethod
    def to_unit(y: torch.Tensor) -> torch.Tensor:
        return (y + 1) / 2
