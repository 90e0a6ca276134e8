"""The ncnn reader (``aligngemini.generators.ncnn``) and the Real-ESRGAN networks it serves, on tiny models
written here: every layer type the Real-ESRGAN files use, float16 and float32 weight storage, and the
errors a wrong or truncated file gets. (The real files are checked against the wheel's own ncnn runtime by
``benchmarks/realesrgan_parity.py``, which fetches them; no test downloads anything.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aligngemini.generators.base import GeneratorSpecError
from aligngemini.generators.esrgan import ESRGANGenerator, parse_esrgan_spec
from aligngemini.generators.ncnn import NCNNError, load_ncnn_model, parse_param

FP16_TAG = (0x01306B47).to_bytes(4, "little")


def fp16_block(a: np.ndarray) -> bytes:
    raw = a.astype("<f2").tobytes()
    return FP16_TAG + raw + b"\0" * (-len(raw) % 4)


def write_model(folder: Path, rng: np.random.Generator) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A Real-ESRGAN-shaped toy: conv (leaky ReLU, float16 kernel) -> split -> conv (ReLU, float32 kernel)
    -> concat -> conv -> PReLU -> pixel shuffle x4, added to the nearest x4 input; a residual Eltwise sum
    with coefficients, and a scalar BinaryOp."""
    w = {
        "c1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "c2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 8).astype(np.float32),
        "c3": rng.normal(0, 0.3, (48, 16, 1, 1)).astype(np.float32),
        "b3": rng.normal(0, 0.1, 48).astype(np.float32),
        "slope": rng.uniform(0.05, 0.3, 48).astype(np.float32),
    }
    param = "\n".join(
        [
            "7767517",
            "12 15",
            "Input in.1 0 1 data",
            "Split sp0 1 2 data d0 d1",
            "Convolution conv.1 1 1 d0 a 0=8 1=3 4=1 5=1 6=216 9=2 -23310=1,2.000000e-01",
            "Split sp1 1 2 a a0 a1",
            "Convolution conv2 1 1 a0 b 0=8 1=3 4=1 5=1 6=576 9=1",
            "Eltwise res 2 1 b a1 c 0=1 -23301=2,5.000000e-01,1.000000e+00",
            "Concat cat 2 1 a1 c e",
            "Convolution conv3 1 1 e f 0=48 1=1 4=0 5=1 6=768",
            "PReLU pr 1 1 f g 0=48",
            "PixelShuffle ps 1 1 g h 0=4",
            "Interp up 1 1 d1 i 0=1 1=4.000000e+00 2=4.000000e+00",
            "BinaryOp add 2 1 h i out 0=0",
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.param").write_text(param + "\n")
    blob = (
        fp16_block(w["c1"]) + w["b1"].tobytes()
        + (0).to_bytes(4, "little") + w["c2"].tobytes() + w["b2"].tobytes()
        + fp16_block(w["c3"]) + w["b3"].tobytes()
        + w["slope"].tobytes()
    )  # fmt: skip
    (folder / "m.bin").write_bytes(blob)
    w["c1"] = w["c1"].astype(np.float16).astype(np.float32)  # what the reader sees of float16 storage
    w["c3"] = w["c3"].astype(np.float16).astype(np.float32)
    return folder / "m.param", folder / "m.bin", w


def reference(x: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    a = F.leaky_relu(F.conv2d(x, t["c1"], t["b1"], padding=1), 0.2)
    b = F.relu(F.conv2d(a, t["c2"], t["b2"], padding=1))
    c = 0.5 * b + a
    f = F.conv2d(torch.cat([a, c], 1), t["c3"], t["b3"])
    h = F.pixel_shuffle(F.prelu(f, t["slope"]), 4)
    return h + F.interpolate(x, scale_factor=4, mode="nearest")


def test_reader_runs_every_layer_type_as_pytorch_does(tmp_path):
    param, weights, w = write_model(tmp_path, np.random.default_rng(0))
    net = load_ncnn_model(param, weights)
    x = torch.rand(2, 3, 11, 7)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, 3, 44, 28)
    assert torch.allclose(y, reference(x, w), atol=1e-5)
    layers = parse_param(param)
    assert [la.type for la in layers][:3] == ["Input", "Split", "Convolution"]
    assert layers[2].params[10] == [0.2] and layers[5].params[1] == [0.5, 1.0]
    # each blob is dropped once, after its last reader: a1 feeds the Eltwise (5) and the Concat (6)
    freed = [b for frees in net.frees for b in frees]
    assert sorted(freed) == sorted({b for la in layers for b in la.inputs}) and "out" not in freed
    assert "a1" in net.frees[6] and "d1" in net.frees[10]


def test_reader_refuses_wrong_or_inconsistent_files_naming_what_is_wrong(tmp_path):
    param, weights, _ = write_model(tmp_path, np.random.default_rng(1))
    text = param.read_text()
    bad = tmp_path / "bad.param"
    bad.write_text(text.replace("7767517", "7767518", 1))
    with pytest.raises(NCNNError, match="not a text ncnn"):
        load_ncnn_model(bad, weights)
    bad.write_text(text.replace("PReLU pr", "Swish pr"))
    with pytest.raises(NCNNError, match="layer pr has type Swish"):
        load_ncnn_model(bad, weights)
    bad.write_text(
        text.replace("Interp up 1 1 d1 i 0=1", "Interp up 1 1 d1 i 0=3")
    )  # bicubic, as the x2 files
    with pytest.raises(NCNNError, match="layer up: only nearest and bilinear"):
        load_ncnn_model(bad, weights)
    bad.write_text(text.replace("12 15", "13 15"))
    with pytest.raises(NCNNError, match="says 13 layers"):
        load_ncnn_model(bad, weights)
    short = tmp_path / "short.bin"
    short.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(NCNNError, match="ends before the weights of layer pr"):
        load_ncnn_model(param, short)
    long = tmp_path / "long.bin"
    long.write_bytes(weights.read_bytes() + b"\0" * 4)
    with pytest.raises(NCNNError, match="4 bytes left"):
        load_ncnn_model(param, long)
    tagged = tmp_path / "int8.bin"
    tagged.write_bytes((0x000D4B38).to_bytes(4, "little") + weights.read_bytes()[4:])
    with pytest.raises(NCNNError, match="tag 0xd4b38"):
        load_ncnn_model(param, tagged)


def test_realesrgan_variants_parse_with_their_own_scale():
    assert parse_esrgan_spec("esrgan:realesrgan-x4plus:x4") == ("realesrgan-x4plus", 4, "area", 4)
    assert parse_esrgan_spec("esrgan:realesr-animevideov3:x4:bicubic") == (
        "realesr-animevideov3",
        4,
        "bicubic",
        4,
    )
    with pytest.raises(GeneratorSpecError, match="realesrgan-x4plus has x4"):
        parse_esrgan_spec("esrgan:realesrgan-x4plus:x2")


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("esrgan:realesrgan-x4plus:x4:shrink2", ("realesrgan-x4plus", 4, "area", 2)),
        ("esrgan:realesrgan-x4plus:x4:bicubic:shrink1", ("realesrgan-x4plus", 4, "bicubic", 1)),
        ("esrgan:medium:x2:shrink2", ("medium", 2, "area", 2)),
    ],
)
def test_a_shrink_smaller_than_the_scale_parses(spec, want):
    assert parse_esrgan_spec(spec) == want


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("esrgan:realesrgan-x4plus:x4:shrink8", "shrink must be 1 to the scale"),
        ("esrgan:realesrgan-x4plus:x4:shrink0", "shrink must be 1 to the scale"),
        ("esrgan:realesrgan-x4plus:x4:shrink2:bicubic", "in that order"),
        ("esrgan:realesrgan-x4plus:x4:half", "no down-scaling method"),
        ("esrgan:realesrgan-x4plus:x4:area:bicubic", "in that order"),
    ],
)
def test_bad_shrinks_name_the_grammar(spec, match):
    with pytest.raises(GeneratorSpecError, match=match):
        parse_esrgan_spec(spec)


def test_shrink_runs_the_network_on_a_larger_input_and_brings_its_output_back(tmp_path):
    """x4 from a 2x-shrunk image, then the output halved: what an up-scaled AI image goes through."""
    param, weights, _ = write_model(tmp_path, np.random.default_rng(3))
    net = load_ncnn_model(param, weights)
    gen = ESRGANGenerator("realesr-animevideov3", 4, device="cpu", network=net, tile=None, shrink=2)
    assert gen.name == "esrgan:realesr-animevideov3:x4:shrink2"
    x = torch.rand(1, 3, 30, 26)
    expected = F.avg_pool2d(gen.upscale(F.avg_pool2d(x, 2)), 2)
    assert torch.allclose(gen.roundtrip(x), expected, atol=1e-5)
    odd = torch.rand(2, 3, 31, 27)  # padded to the shrink's multiple, cropped back
    assert gen.roundtrip(odd).shape == odd.shape
    full = ESRGANGenerator("realesr-animevideov3", 4, device="cpu", network=net, tile=None)
    assert full.name == "esrgan:realesr-animevideov3:x4"  # the default shrink is the scale: names unchanged
    assert torch.allclose(full.roundtrip(x[..., :28, :24]), full.upscale(F.avg_pool2d(x[..., :28, :24], 4)))
    with pytest.raises(GeneratorSpecError, match="shrink 5"):
        ESRGANGenerator("realesr-animevideov3", 4, device="cpu", network=net, shrink=5)


def test_realesrgan_generator_reflect_pads_the_low_resolution_input_as_the_wheel_does(tmp_path):
    param, weights, w = write_model(tmp_path, np.random.default_rng(2))
    net = load_ncnn_model(param, weights)
    gen = ESRGANGenerator("realesr-animevideov3", 4, device="cpu", network=net, tile=None)
    assert gen.name == "esrgan:realesr-animevideov3:x4"
    low = torch.rand(1, 3, 14, 12)
    # the low-resolution input padded by reflection, the output cropped by 10 * 4 on each side
    padded = F.pad(low, (10, 10, 10, 10), mode="reflect")
    expected = reference(padded, w).clamp(0, 1)
    q = 10 * 4
    got = gen.upscale(low)
    assert torch.allclose(
        got, expected[..., q : expected.shape[-2] - q, q : expected.shape[-1] - q], atol=1e-5
    )
    tiny = torch.rand(1, 3, 6, 6)  # too small to reflect 10 pixels: run unpadded rather than fail
    assert torch.allclose(gen.upscale(tiny), reference(tiny, w).clamp(0, 1), atol=1e-5)
