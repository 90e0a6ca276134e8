"""A reader for ncnn models (``.param`` text graph + ``.bin`` weights) into PyTorch, for the layers that
image-to-image networks such as Real-ESRGAN use.

``.param`` is a text file: the magic number 7767517, the layer and blob counts, then one line per layer:
type, name, input and output counts, input blob names, output blob names and ``key=value`` parameters (a
negative key ``-23300 - k`` holds the array parameter ``k`` as ``count,v1,v2,...``). ``.bin`` holds the
weights of the layers that have any, in layer order: a convolution's kernel behind a 4-byte tag (0: float32,
0x01306B47: float16, padded to 4 bytes), then its bias as plain float32; a PReLU's slopes as plain float32.

Layer types: Input, Convolution (activations none / ReLU / leaky ReLU), Split, Concat, Eltwise, BinaryOp,
Interp (nearest / bilinear by a scale), PReLU, PixelShuffle. ``load_ncnn_model`` returns an ``NCNNModel``
that runs the graph on [B, C, H, W] tensors; a model with another layer type is refused with its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAGIC = 7767517
_FP16_TAG = 0x01306B47


class NCNNError(ValueError):
    """A .param or .bin file this reader cannot use; the message names the file and the layer."""


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, float | list[float]] = field(default_factory=dict)

    def get(self, key: int, default: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise NCNNError(f"layer {self.name}: parameter {key} is an array, expected a number")
        return value


def _number(text: str) -> float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: str | Path) -> list[Layer]:
    """The layers of a text ``.param`` file, in file order."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise NCNNError(f"{path}: cannot read the ncnn param file ({exc})") from exc
    if not lines or lines[0] != [str(MAGIC)]:
        raise NCNNError(f"{path}: not a text ncnn .param file (first line must be {MAGIC})")
    layers = []
    for row in lines[2:]:
        try:
            n_in, n_out = int(row[2]), int(row[3])
            layer = Layer(row[0], row[1], row[4 : 4 + n_in], row[4 + n_in : 4 + n_in + n_out])
            for item in row[4 + n_in + n_out :]:
                key_text, _, value = item.partition("=")
                key = int(key_text)
                if key <= -23300:
                    count, *values = value.split(",")
                    layer.params[-23300 - key] = [float(v) for v in values[: int(count)]]
                else:
                    layer.params[key] = _number(value)
        except (IndexError, ValueError) as exc:
            raise NCNNError(f"{path}: cannot parse the layer line {' '.join(row)!r} ({exc})") from exc
        layers.append(layer)
    if len(layers) != int(lines[1][0]):
        raise NCNNError(f"{path}: the header says {lines[1][0]} layers, the file has {len(layers)}")
    return layers


class _Weights:
    """Sequential reader of a ``.bin`` file."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise NCNNError(f"{self.path}: ends before the weights of {what} (the .bin and .param disagree)")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = int.from_bytes(self._take(4, what), "little")
        if tag == 0:
            return np.frombuffer(self._take(4 * count, what), "<f4").astype(np.float32)
        if tag == _FP16_TAG:
            raw = self._take((2 * count + 3) // 4 * 4, what)
            return np.frombuffer(raw[: 2 * count], "<f2").astype(np.float32)
        raise NCNNError(f"{self.path}: {what}: weight storage tag {tag:#x} is not float32 or float16")

    def plain(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(4 * count, what), "<f4").astype(np.float32)


def _conv(layer: Layer, weights: _Weights, in_channels: int) -> nn.Conv2d:
    out_ch, k = int(layer.get(0, 0)), int(layer.get(1, 0))
    kh = int(layer.get(11, k))
    size = int(layer.get(6, 0))
    if out_ch <= 0 or k <= 0 or size % (out_ch * k * kh):
        raise NCNNError(f"layer {layer.name}: inconsistent convolution parameters {layer.params}")
    c_in = size // (out_ch * k * kh)
    if c_in != in_channels:
        raise NCNNError(f"layer {layer.name}: kernel for {c_in} input channels, its input has {in_channels}")
    pad_w, pad_h = int(layer.get(4, 0)), int(layer.get(14, layer.get(4, 0)))
    if min(pad_w, pad_h) < 0 or int(layer.get(15, pad_w)) != pad_w or int(layer.get(16, pad_h)) != pad_h:
        raise NCNNError(f"layer {layer.name}: only symmetric, explicit padding is supported")
    conv = nn.Conv2d(
        c_in, out_ch, (kh, k), stride=(int(layer.get(13, layer.get(3, 1))), int(layer.get(3, 1))),
        padding=(pad_h, pad_w), dilation=(int(layer.get(12, layer.get(2, 1))), int(layer.get(2, 1))),
        bias=bool(layer.get(5, 0)),
    )  # fmt: skip
    w = weights.tagged(size, f"layer {layer.name}").reshape(out_ch, c_in, kh, k)
    conv.weight.data = torch.from_numpy(w.copy())
    if conv.bias is not None:
        conv.bias.data = torch.from_numpy(weights.plain(out_ch, f"layer {layer.name} bias").copy())
    return conv


def _key(name: str) -> str:
    """A layer name as a module key (``nn.ModuleDict`` keys cannot hold dots)."""
    return name.replace(".", "_")


# a Convolution's fused activation (its parameter 9) -> f(output, parameter 10: the activation's arguments)
_ACTIVATIONS = {
    0: lambda y, args: y,
    1: lambda y, args: F.relu(y),
    2: lambda y, args: F.leaky_relu(y, float(args[0])),
}


class NCNNModel(nn.Module):
    """The graph of an ncnn model with one input blob, run in PyTorch."""

    def __init__(self, layers: list[Layer], modules: dict[str, nn.Module], output: str):
        super().__init__()
        self.layers, self.output = layers, output
        self.ops = nn.ModuleDict(modules)
        # the blobs each layer is the last reader of: dropped after it runs, so that a deep graph (RRDBNet's
        # hundreds of feature maps) holds only its live blobs, not every one it made
        last_reader = {b: i for i, layer in enumerate(layers) for b in layer.inputs}
        self.frees: list[list[str]] = [[] for _ in layers]
        for blob, i in last_reader.items():
            if blob != output:
                self.frees[i].append(blob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs: dict[str, torch.Tensor] = {}
        for layer, frees in zip(self.layers, self.frees, strict=True):
            ins = [blobs[b] for b in layer.inputs]
            for blob in frees:
                del blobs[blob]
            t, p = layer.type, layer.params
            if t == "Input":
                out = [x]
            elif t == "Split":
                out = [ins[0]] * len(layer.outputs)
            elif t == "Concat":
                out = [torch.cat(ins, dim=1)]
            elif t == "Convolution":
                y = self.ops[_key(layer.name)](ins[0])
                out = [_ACTIVATIONS[int(layer.get(9, 0))](y, p.get(10, [0.0]))]
            elif t == "PReLU":
                out = [self.ops[_key(layer.name)](ins[0])]
            elif t == "Eltwise":
                coeffs = p.get(1) or [1.0] * len(ins)
                out = [sum(float(c) * v for c, v in zip(coeffs, ins, strict=True))]  # type: ignore[arg-type]
            elif t == "BinaryOp":
                b = ins[1] if len(ins) > 1 else float(layer.get(2, 0.0))
                out = [(torch.add, torch.sub, torch.mul, torch.div)[int(layer.get(0, 0))](ins[0], b)]
            elif t == "Interp":
                mode = {1: "nearest", 2: "bilinear"}[int(layer.get(0, 1))]
                scale = (float(layer.get(1, 1.0)), float(layer.get(2, 1.0)))
                kw = {} if mode == "nearest" else {"align_corners": bool(layer.get(6, 0))}
                out = [F.interpolate(ins[0], scale_factor=scale, mode=mode, **kw)]
            else:  # PixelShuffle (checked at load time)
                out = [F.pixel_shuffle(ins[0], int(layer.get(0, 1)))]
            blobs.update(zip(layer.outputs, out, strict=True))
        return blobs[self.output]


_SUPPORTED = {
    "Input",
    "Split",
    "Concat",
    "Convolution",
    "PReLU",
    "Eltwise",
    "BinaryOp",
    "Interp",
    "PixelShuffle",
}


def load_ncnn_model(param: str | Path, weights: str | Path, in_channels: int = 3) -> NCNNModel:
    """Read a ``.param`` / ``.bin`` pair into an ``NCNNModel`` (float32, eval mode)."""
    param, weights = Path(param), Path(weights)
    layers = parse_param(param)
    try:
        reader = _Weights(weights)
    except OSError as exc:
        raise NCNNError(f"{weights}: cannot read the ncnn weights ({exc})") from exc
    channels: dict[str, int] = {}
    modules: dict[str, nn.Module] = {}
    for layer in layers:
        t = layer.type
        if t not in _SUPPORTED:
            raise NCNNError(f"{param}: layer {layer.name} has type {t}, which this reader does not run")
        if t == "Input":
            outs = [in_channels]
        elif t == "Convolution":
            if int(layer.get(9, 0)) not in _ACTIVATIONS or int(layer.get(8, 0)):
                raise NCNNError(f"{param}: layer {layer.name}: unsupported activation or int8 convolution")
            modules[_key(layer.name)] = _conv(layer, reader, channels[layer.inputs[0]])
            outs = [int(layer.get(0, 0))]
        elif t == "PReLU":
            n = int(layer.get(0, 1))
            prelu = nn.PReLU(n)
            prelu.weight.data = torch.from_numpy(reader.plain(n, f"layer {layer.name}").copy())
            modules[_key(layer.name)] = prelu
            outs = [channels[layer.inputs[0]]]
        elif t == "Concat":
            if int(layer.get(0, 0)) != 0:
                raise NCNNError(f"{param}: layer {layer.name}: only channel concatenation is supported")
            outs = [sum(channels[b] for b in layer.inputs)]
        elif t == "Interp" and (
            int(layer.get(0, 1)) not in (1, 2) or any(int(layer.get(k, 0)) for k in (3, 4, 5))
        ):
            raise NCNNError(
                f"{param}: layer {layer.name}: only nearest and bilinear interpolation by a scale"
            )
        elif t == "Eltwise" and int(layer.get(0, 1)) != 1:
            raise NCNNError(f"{param}: layer {layer.name}: only Eltwise sum is supported")
        elif t == "BinaryOp" and int(layer.get(0, 0)) not in (0, 1, 2, 3):
            raise NCNNError(f"{param}: layer {layer.name}: only add, sub, mul and div are supported")
        elif t == "PixelShuffle" and int(layer.get(1, 0)) != 0:
            raise NCNNError(f"{param}: layer {layer.name}: only PyTorch-order pixel shuffle is supported")
        if t == "PixelShuffle":
            outs = [channels[layer.inputs[0]] // int(layer.get(0, 1)) ** 2]
        elif t in ("Split", "Eltwise", "BinaryOp", "Interp"):
            outs = [channels[layer.inputs[0]]] * len(layer.outputs)
        channels.update(zip(layer.outputs, outs, strict=True))
    if reader.pos != len(reader.data):
        raise NCNNError(
            f"{weights}: {len(reader.data) - reader.pos} bytes left after the last layer's weights"
        )
    produced = {b for layer in layers for b in layer.outputs}
    consumed = {b for layer in layers for b in layer.inputs}
    ends = sorted(produced - consumed)
    if len(ends) != 1:
        raise NCNNError(f"{param}: expected one output blob, found {ends}")
    return NCNNModel(layers, modules, ends[0]).eval()
