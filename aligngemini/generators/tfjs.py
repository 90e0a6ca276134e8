"""A reader for TensorFlow.js *layers* models (``model.json`` + binary weight shards) into PyTorch.

``model.json`` holds a Keras model topology and a weights manifest; the shards hold the weights, in manifest
order, as little-endian float32/int32 or quantized uint8/uint16 (``value = q * scale + min``) or float16.
``load_tfjs_model`` reads both and returns a ``TFJSModel``: a small interpreter that runs the Keras layer graph
with PyTorch modules. It works in NCHW (PyTorch's layout): inputs are [B, C, H, W], so Keras' channel axis -1
becomes 1; Conv2D kernels [kh, kw, in, out] become [out, in, kh, kw]; ``depth_to_space`` keeps TF's channel
order (not ``pixel_shuffle``'s, which differs).

Layer classes: InputLayer, Conv2D, Dense, Activation, ReLU, LeakyReLU, PReLU, BatchNormalization, Add, Subtract,
Multiply, Average, Maximum, Minimum, Concatenate, UpSampling2D, ZeroPadding2D, and the custom layers of the
upscalerjs ESRGAN models (``MultiplyBeta``, ``PixelShuffle<N>x``). Others can be passed as ``custom_layers``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TFJSError(ValueError):
    """A model.json or weight shard this reader cannot use; the message names the file and the layer."""


# ------------------------------------------------------------------------------------------- weights

_PLAIN = {"float32": "<f4", "int32": "<i4", "bool": "u1"}
_QUANT = {"uint8": "u1", "uint16": "<u2", "float16": "<f2"}


def read_model_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TFJSError(f"{path}: cannot read model.json ({exc})") from exc
    if "modelTopology" not in data or "weightsManifest" not in data:
        raise TFJSError(f"{path}: not a TF.js layers model (needs modelTopology and weightsManifest)")
    if data.get("format") not in (None, "layers-model"):
        raise TFJSError(
            f"{path}: format {data.get('format')!r}; only 'layers-model' is supported (not graph models)"
        )
    return data


def read_weights(model: dict[str, Any], base_dir: str | Path) -> dict[str, np.ndarray]:
    """Every weight of the manifest by name, as float32 (or int32/bool) arrays of their declared shapes."""
    base = Path(base_dir).resolve()
    out: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        chunks = []
        for rel in group["paths"]:
            shard = (base / rel).resolve()
            if base not in shard.parents:
                raise TFJSError(f"{base}: weight shard path {rel!r} leaves the model folder")
            try:
                chunks.append(shard.read_bytes())
            except OSError as exc:
                raise TFJSError(f"{shard}: missing weight shard ({exc})") from exc
        buf = b"".join(chunks)
        offset = 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], [int(d) for d in spec["shape"]], spec["dtype"]
            count = math.prod(shape)
            quant = spec.get("quantization")
            if quant:
                qdtype = quant.get("dtype")
                if qdtype not in _QUANT:
                    raise TFJSError(f"{name}: unknown quantization dtype {qdtype!r} (uint8, uint16, float16)")
                raw, offset = _take(buf, offset, _QUANT[qdtype], count, name)
                if qdtype == "float16":
                    values = raw.astype(np.float32)
                else:
                    if "scale" not in quant or "min" not in quant:
                        raise TFJSError(f"{name}: {qdtype} quantization without 'scale' and 'min'")
                    values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
                    values = (
                        np.round(values).astype(np.int32) if dtype == "int32" else values.astype(np.float32)
                    )
            elif dtype in _PLAIN:
                values, offset = _take(buf, offset, _PLAIN[dtype], count, name)
            else:
                raise TFJSError(f"{name}: unsupported weight dtype {dtype!r}")
            out[name] = values.reshape(shape)
        if offset != len(buf):
            warnings.warn(f"{base}: {len(buf) - offset} bytes left over after the last weight", stacklevel=2)
    return out


def _take(buf: bytes, offset: int, np_dtype: str, count: int, name: str) -> tuple[np.ndarray, int]:
    itemsize = np.dtype(np_dtype).itemsize
    end = offset + count * itemsize
    if end > len(buf):
        raise TFJSError(
            f"{name}: weight shards end at byte {len(buf)}, this weight needs bytes {offset}..{end}"
        )
    return np.frombuffer(buf, dtype=np_dtype, count=count, offset=offset).copy(), end


# --------------------------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class Node:
    name: str
    class_name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]  # names of the layers whose (single) output this layer reads


def _history(obj: Any) -> list[list[Any]]:
    """Keras 3 serialises inbound tensors as {"config": {"keras_history": [layer, node, tensor]}}."""
    found: list[list[Any]] = []
    if isinstance(obj, dict):
        if "keras_history" in obj:
            found.append(obj["keras_history"])
        else:
            for v in obj.values():
                found.extend(_history(v))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_history(v))
    return found


def _inbound(layer: dict[str, Any]) -> tuple[str, ...]:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise TFJSError(
            f"layer {layer['name']!r} is called {len(nodes)} times (shared layers are not supported)"
        )
    if not nodes:
        return ()
    node = nodes[0]
    entries = _history(node.get("args", [])) if isinstance(node, dict) else node
    names = []
    for entry in entries:
        if entry[1] != 0 or entry[2] != 0:
            raise TFJSError(f"layer {layer['name']!r} reads output {entry[1:3]} of {entry[0]!r}; only single-output "
                            "layers called once are supported")  # fmt: skip
        names.append(entry[0])
    return tuple(names)


def parse_topology(model: dict[str, Any]) -> tuple[list[Node], list[str], list[str]]:
    """Layers in execution order, the input layer names and the output layer names."""
    topo = model["modelTopology"]
    mc = topo.get("model_config", topo)
    cls, cfg = mc.get("class_name"), mc.get("config")
    if cls == "Sequential":
        layers = cfg if isinstance(cfg, list) else cfg["layers"]
        nodes: list[Node] = []
        prev: str | None = None
        for layer in layers:
            lcfg = layer["config"]
            if prev is None and layer["class_name"] != "InputLayer":
                nodes.append(Node("input", "InputLayer", {}, ()))
                prev = "input"
            nodes.append(Node(lcfg["name"], layer["class_name"], lcfg, (prev,) if prev else ()))
            prev = lcfg["name"]
        return nodes, [nodes[0].name], [nodes[-1].name]
    if cls not in ("Functional", "Model"):
        raise TFJSError(f"model class {cls!r}: expected Functional, Model or Sequential")
    nodes = [
        Node(layer["name"], layer["class_name"], layer["config"], _inbound(layer)) for layer in cfg["layers"]
    ]
    inputs = [entry[0] for entry in cfg["input_layers"]]
    outputs = [entry[0] for entry in cfg["output_layers"]]
    return _toposort(nodes, outputs), inputs, outputs


def _toposort(nodes: list[Node], outputs: list[str]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    order: list[Node] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for name in by_name:
        stack: list[tuple[str, bool]] = [(name, False)]
        while stack:
            cur, expanded = stack.pop()
            if expanded:
                state[cur] = 2
                order.append(by_name[cur])
                continue
            if state.get(cur) == 2:
                continue
            if state.get(cur) == 1:
                raise TFJSError(f"layer graph has a cycle through {cur!r}")
            if cur not in by_name:
                raise TFJSError(f"a layer reads {cur!r}, which the model does not define")
            state[cur] = 1
            stack.append((cur, True))
            stack.extend((dep, False) for dep in by_name[cur].inputs if state.get(dep) != 2)
    for name in outputs:
        if name not in by_name:
            raise TFJSError(f"output layer {name!r} is not defined")
    return order


# -------------------------------------------------------------------------------------------- layers

WeightGetter = Callable[[str], torch.Tensor]
LayerBuilder = Callable[[dict[str, Any], WeightGetter], nn.Module]


def _channel_axis(axis: int, rank: int = 4) -> int:
    """Keras NHWC axis -> NCHW axis."""
    axis = axis % rank
    return {0: 0, rank - 1: 1}.get(axis, axis + 1)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,
    "softmax": lambda x: torch.softmax(x, dim=1 if x.dim() == 4 else -1),
}


def _activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    name = name or "linear"
    if isinstance(name, dict):  # Keras 3 may serialise {"class_name": ..., "config": {"name": ...}}
        name = name.get("config", {}).get("name", name.get("class_name", ""))
    if name not in _ACTIVATIONS:
        raise TFJSError(f"activation {name!r} is not supported ({', '.join(sorted(_ACTIVATIONS))})")
    return _ACTIVATIONS[name]


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF 'same' padding: the extra pixel, when the total is odd, goes after (bottom/right)."""
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


class Conv2D(nn.Module):
    def __init__(self, cfg: dict[str, Any], w: WeightGetter):
        super().__init__()
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise TFJSError(f"{cfg['name']}: data_format {cfg['data_format']!r} (only channels_last)")
        kernel = w("kernel")  # [kh, kw, in/groups, out]
        self.conv = nn.Conv2d(
            kernel.shape[2] * int(cfg.get("groups", 1)),
            kernel.shape[3],
            kernel_size=tuple(kernel.shape[:2]),
            stride=tuple(cfg.get("strides", (1, 1))),
            dilation=tuple(cfg.get("dilation_rate", (1, 1))),
            groups=int(cfg.get("groups", 1)),
            bias=bool(cfg.get("use_bias", True)),
        )
        with torch.no_grad():
            self.conv.weight.copy_(kernel.permute(3, 2, 0, 1))
            if self.conv.bias is not None:
                self.conv.bias.copy_(w("bias"))
        self.padding = cfg.get("padding", "valid")
        if self.padding not in ("same", "valid"):
            raise TFJSError(f"{cfg['name']}: padding {self.padding!r} (only same/valid)")
        self.act = _activation(cfg.get("activation"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            (kh, kw), (sh, sw), (dh, dw) = self.conv.kernel_size, self.conv.stride, self.conv.dilation
            top, bottom = _same_pad(x.shape[2], kh, sh, dh)
            left, right = _same_pad(x.shape[3], kw, sw, dw)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return self.act(self.conv(x))


class Dense(nn.Module):
    def __init__(self, cfg: dict[str, Any], w: WeightGetter):
        super().__init__()
        kernel = w("kernel")  # [in, out]
        self.linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=bool(cfg.get("use_bias", True)))
        with torch.no_grad():
            self.linear.weight.copy_(kernel.T)
            if self.linear.bias is not None:
                self.linear.bias.copy_(w("bias"))
        self.act = _activation(cfg.get("activation"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # Keras applies Dense to the last (channel) axis
            return self.act(self.linear(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.act(self.linear(x))


class Lambda(nn.Module):
    """A parameter-free layer given by a function of its inputs."""

    def __init__(self, fn: Callable[..., torch.Tensor], label: str = ""):
        super().__init__()
        self.fn = fn
        self.label = label

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)

    def extra_repr(self) -> str:
        return self.label


class PReLU(nn.Module):
    def __init__(self, cfg: dict[str, Any], w: WeightGetter):
        super().__init__()
        alpha = w("alpha")  # input shape without batch, NHWC, shared axes set to 1
        if alpha.dim() == 3:
            alpha = alpha.permute(2, 0, 1)
        self.alpha = nn.Parameter(alpha.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.alpha)


class BatchNorm(nn.Module):
    def __init__(self, cfg: dict[str, Any], w: WeightGetter):
        super().__init__()
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) else axis
        if axis not in (-1, 3):
            raise TFJSError(f"{cfg['name']}: BatchNormalization over axis {axis} (only the channel axis)")
        mean, var = w("moving_mean"), w("moving_variance")
        gamma = w("gamma") if cfg.get("scale", True) else torch.ones_like(mean)
        beta = w("beta") if cfg.get("center", True) else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + float(cfg.get("epsilon", 1e-3)))
        self.register_buffer("scale", scale)
        self.register_buffer("shift", beta - mean * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        return x * self.scale.view(shape) + self.shift.view(shape)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TF ``depth_to_space`` (NHWC channel k = (i*block + j)*C + c) on an NCHW tensor."""
    b, c, h, w = x.shape
    if c % (block * block):
        raise TFJSError(f"depth_to_space: {c} channels not divisible by {block}x{block}")
    out_c = c // (block * block)
    x = x.view(b, block, block, out_c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, out_c, h * block, w * block)


def _upsampling(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise TFJSError(f"{cfg['name']}: data_format {cfg['data_format']!r} (only channels_last)")
    sh, sw = cfg.get("size", (2, 2))
    mode = cfg.get("interpolation", "nearest")
    if mode == "nearest":
        return Lambda(
            lambda x: F.interpolate(x, scale_factor=(sh, sw), mode="nearest"), f"nearest x{sh},{sw}"
        )
    if mode == "bilinear":  # TF2 Keras semantics (half-pixel centres)
        return Lambda(
            lambda x: F.interpolate(x, scale_factor=(sh, sw), mode="bilinear", align_corners=False),
            f"bilinear x{sh},{sw}",
        )
    raise TFJSError(f"{cfg['name']}: UpSampling2D interpolation {mode!r} (nearest, bilinear)")


def _zero_padding(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    pad = cfg.get("padding", 1)
    if isinstance(pad, int):
        (top, bottom), (left, right) = (pad, pad), (pad, pad)
    elif isinstance(pad[0], int):
        (top, bottom), (left, right) = (pad[0], pad[0]), (pad[1], pad[1])
    else:
        (top, bottom), (left, right) = pad
    return Lambda(lambda x: F.pad(x, (left, right, top, bottom)), f"pad {top},{bottom},{left},{right}")


def _relu(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    max_value = cfg.get("max_value")
    slope = float(cfg.get("negative_slope", 0.0) or 0.0)
    threshold = float(cfg.get("threshold", 0.0) or 0.0)

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x >= threshold, x, slope * (x - threshold))
        return y.clamp(max=float(max_value)) if max_value is not None else y

    return Lambda(fn, f"relu max={max_value} slope={slope} threshold={threshold}")


def _leaky_relu(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    slope = float(cfg.get("alpha", cfg.get("negative_slope", 0.3)))
    return Lambda(lambda x: F.leaky_relu(x, slope), f"slope={slope}")


def _concatenate(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    axis = int(cfg.get("axis", -1))
    return Lambda(lambda *xs: torch.cat(xs, dim=_channel_axis(axis, xs[0].dim())), f"axis={axis}")


def _merge(fn: Callable[..., torch.Tensor], label: str) -> LayerBuilder:
    return lambda cfg, w: Lambda(fn, label)


def _reduce(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def fn(*xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = op(out, x)
        return out

    return fn


def _lambda_layer(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    raise TFJSError(
        f"{cfg.get('name')}: a Keras Lambda layer holds Python code that cannot be read from model.json; "
        "pass its PyTorch equivalent in custom_layers={'Lambda': builder}"
    )


def _multiply_beta(cfg: dict[str, Any], w: WeightGetter) -> nn.Module:
    beta = float(cfg.get("beta", 0.2))  # upscalerjs' MultiplyBeta: x * 0.2 (the RRDB residual scaling)
    return Lambda(lambda x: x * beta, f"beta={beta}")


def _pixel_shuffle(cfg: dict[str, Any], w: WeightGetter, class_name: str = "") -> nn.Module:
    scale = cfg.get("scale")
    if scale is None:
        match = re.fullmatch(r"PixelShuffle(\d+)x", class_name)
        if not match:
            raise TFJSError(f"{cfg.get('name')}: pixel shuffle without a scale")
        scale = int(match.group(1))
    block = int(scale)
    return Lambda(lambda x: depth_to_space(x, block), f"depth_to_space {block}")


LAYERS: dict[str, LayerBuilder] = {
    "Conv2D": Conv2D,
    "Dense": Dense,
    "PReLU": PReLU,
    "BatchNormalization": BatchNorm,
    "Activation": lambda cfg, w: Lambda(_activation(cfg.get("activation")), str(cfg.get("activation"))),
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "UpSampling2D": _upsampling,
    "ZeroPadding2D": _zero_padding,
    "Concatenate": _concatenate,
    "Add": _merge(_reduce(torch.add), "add"),
    "Subtract": _merge(lambda a, b: a - b, "subtract"),
    "Multiply": _merge(_reduce(torch.mul), "multiply"),
    "Maximum": _merge(_reduce(torch.maximum), "maximum"),
    "Minimum": _merge(_reduce(torch.minimum), "minimum"),
    "Average": _merge(lambda *xs: torch.stack(xs).mean(0), "average"),
    "Dropout": _merge(lambda x: x, "identity (inference)"),
    "Lambda": _lambda_layer,
    "MultiplyBeta": _multiply_beta,
    "DepthToSpace": _pixel_shuffle,
}
_PATTERN_LAYERS: list[tuple[re.Pattern[str], Callable[..., nn.Module]]] = [
    (re.compile(r"PixelShuffle\d+x"), _pixel_shuffle),
]


# --------------------------------------------------------------------------------------------- model


def _module_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class TFJSModel(nn.Module):
    """The Keras layer graph of a TF.js model, run with PyTorch modules. Takes and returns NCHW tensors
    (one per model input/output; a single output is returned bare)."""

    def __init__(
        self, nodes: list[Node], inputs: list[str], outputs: list[str], layers: dict[str, nn.Module]
    ):
        super().__init__()
        self.nodes = nodes
        self.input_names = inputs
        self.output_names = outputs
        self.layers = nn.ModuleDict({_module_key(k): v for k, v in layers.items()})
        self._keys = {k: _module_key(k) for k in layers}
        # the last node reading each tensor, so intermediate maps are freed as soon as possible
        last_use: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for dep in node.inputs:
                last_use[dep] = i
        self._last_use = last_use

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(xs) != len(self.input_names):
            raise TFJSError(f"model takes {len(self.input_names)} input(s) {self.input_names}, got {len(xs)}")
        values: dict[str, torch.Tensor] = dict(zip(self.input_names, xs, strict=True))
        keep = set(self.output_names)
        for i, node in enumerate(self.nodes):
            if node.class_name == "InputLayer" or node.name in values:
                continue
            args = [values[d] for d in node.inputs]
            values[node.name] = self.layers[self._keys[node.name]](*args)
            for dep in node.inputs:
                if self._last_use.get(dep) == i and dep not in keep:
                    values.pop(dep, None)
        outs = tuple(values[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def build_model(
    model: dict[str, Any],
    weights: dict[str, np.ndarray],
    *,
    custom_layers: dict[str, LayerBuilder] | None = None,
    source: str = "model.json",
) -> TFJSModel:
    nodes, inputs, outputs = parse_topology(model)
    registry = {**LAYERS, **(custom_layers or {})}
    used: set[str] = set()
    layers: dict[str, nn.Module] = {}
    for node in nodes:
        if node.class_name == "InputLayer":
            continue

        def getter(wname: str, layer: str = node.name) -> torch.Tensor:
            key = f"{layer}/{wname}"
            if key not in weights:
                matches = [k for k in weights if k.endswith(f"/{key}")]
                if len(matches) != 1:
                    raise TFJSError(f"{source}: layer {layer!r} needs weight {key!r}, not in the manifest")
                key = matches[0]
            used.add(key)
            return torch.from_numpy(np.ascontiguousarray(weights[key])).float()

        builder = registry.get(node.class_name)
        if builder is None:
            for pattern, fn in _PATTERN_LAYERS:
                if pattern.fullmatch(node.class_name):
                    builder = lambda cfg, w, fn=fn, cls=node.class_name: fn(cfg, w, cls)  # noqa: E731
                    break
        if builder is None:
            raise TFJSError(
                f"{source}: layer {node.name!r} has class {node.class_name!r}, which this reader does not implement; "
                "pass custom_layers={class_name: builder}"
            )
        layers[node.name] = builder(node.config, getter)
    unused = sorted(set(weights) - used)
    if unused:
        raise TFJSError(f"{source}: {len(unused)} weights were not used by any layer (first: {unused[:3]})")
    return TFJSModel(nodes, inputs, outputs, layers).eval().requires_grad_(False)


def load_tfjs_model(
    model_json: str | Path, *, custom_layers: dict[str, LayerBuilder] | None = None
) -> TFJSModel:
    """Read ``model.json`` and its shards (beside it) into a ``TFJSModel``."""
    path = Path(model_json)
    model = read_model_json(path)
    return build_model(model, read_weights(model, path.parent), custom_layers=custom_layers, source=str(path))
