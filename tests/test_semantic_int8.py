"""benchmarks/semantic_int8.py: which of the tower's layers its variants put in int8, and that they still run."""

from __future__ import annotations

import torch
from benchmark_scripts import load_benchmark
from tiny_clip import tiny_clip
from torch import nn

si = load_benchmark("semantic_int8")


def test_only_the_named_encoder_layers_become_int8_and_the_rest_keeps_its_precision() -> None:
    model = tiny_clip()
    q = si.quantized(model, ("q_proj", "fc1"), rest_bf16=True)
    kinds = {name: type(m).__module__ + "." + type(m).__name__ for name, m in q.named_modules()}
    int8 = {n for n, k in kinds.items() if "quantized.dynamic" in k}
    assert int8 and all(n.endswith((".q_proj", ".fc1")) and ".encoder." in f".{n}" for n in int8)
    layers = len(model.vision_model.encoder.layers)
    assert len(int8) == 2 * layers
    plain = [m for m in q.modules() if type(m) is nn.Linear]
    assert plain and all(m.weight.dtype == torch.bfloat16 for m in plain)  # k/v/out_proj/fc2, projection
    assert all(
        type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear)
    )  # the original untouched
    x = torch.rand(2, 3, model.config.image_size, model.config.image_size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(pixel_values=x).image_embeds
    assert out.shape == (2, model.config.projection_dim) and torch.isfinite(out.float()).all()
