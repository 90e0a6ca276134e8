"""Tiny CLIP image towers for tests: a random ``CLIPVisionModelWithProjection`` saved as a checkpoint folder or
exported to ONNX (fp32, or dynamically quantized to INT8 as the starter tower is), and a bundle section."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
}


def tiny_clip(seed: int = 0) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)).eval()


def save_tiny_tower(folder: Path, seed: int = 0) -> Path:
    tiny_clip(seed).save_pretrained(str(folder), safe_serialization=True)
    return folder


class _Wrapped(torch.nn.Module):
    """The tower inside another module: weights and node names gain a ``model.`` prefix."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values)
        return out.image_embeds, out.last_hidden_state


def export_onnx(model: torch.nn.Module, path: Path, *, wrapped: bool = False) -> Path:
    """TorchScript-style export (scoped node names, ``onnx::MatMul_*`` weights), as the starter tower was made:
    the transformers model itself, outputs ``image_embeds`` and the last hidden state."""
    size = model.config.image_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(
            _Wrapped(model) if wrapped else model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["image_embeds", "last_hidden_state"],
            dynamic_axes={"pixel_values": {0: "batch"}},
            opset_version=14,
        )
    return path


def quantize_int8(fp32: Path, out: Path, *, matmul_only: bool = True) -> Path:
    """onnxruntime dynamic quantization, per output channel, int8 weights. ``matmul_only`` is the starter's
    pattern (MatMulInteger; conv and embeddings stay fp32); otherwise Conv and Gather are quantized too.
    ``reduce_range`` keeps weights in 7 bits so that no CPU's u8 x s8 kernel saturates: the test compares
    the import, not the runtime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing" notice
    quantize_dynamic(
        str(fp32),
        str(out),
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"] if matmul_only else None,
    )
    return out


def photo(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A smooth random colour image (gradients plus noise), non-square by default."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * rng.uniform(80, 200, size=3)
    arr = np.clip(base + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def tiny_semantic_section(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """A ``semantic-clip`` bundle section with a tiny tower saved inside the bundle and a random linear head."""
    from aligngemini.branches.semantic.clip import SemanticHead, save_head

    out_dir = Path(out_dir)
    save_tiny_tower(out_dir / "semantic_tower", seed)
    torch.manual_seed(seed + 1)
    head = SemanticHead(TINY["projection_dim"], "linear")
    with torch.no_grad():  # a head that responds to content, so scores spread over (0, 1)
        head.net[0].weight.normal_(0, 3.0)
    save_head(head, out_dir / "semantic_head.safetensors")
    return {
        "family": "semantic-clip",
        "tower": "semantic_tower",
        "head": "semantic_head.safetensors",
        "head_type": "linear",
        "threshold": 0.5,
        "resize": "squash",
        "image_size": TINY["image_size"],
        "embed_dim": TINY["projection_dim"],
    }
