"""The ``pixel-timm`` branch family: a bundle's pixel expert, built from its config section.

Config section (written by :meth:`aligngemini.branches.pixel.task.PixelTask.export`)::

    {"family": "pixel-timm",
     "weights": "pixel.safetensors",            # in the bundle folder: backbone.* (plain timm keys) + head.*
     "backbone": {"name": "efficientnet_lite0", "kwargs": {}},
     "crop": {"size": 192, "pad_mode": "reflect", "inference": "grid", "max_crops": 9, "combine": "mean"},
     "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
     "input_filter": "npr",                     # optional: what the backbone sees (model.input_filter)
     "threshold": 0.5,
     "precision": "bf16",                       # optional, default fp32: see aligngemini.branches.precision
     "batch_size": 32}                          # crops per forward pass (optional)

A model trained with LoRA is exported with its adapters merged into the base weights, so loading needs
only timm: the bundle holds plain timm weights plus the linear head.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aligngemini.branches.base import register_family
from aligngemini.branches.pixel.crops import CropConfig, combine_scores, inference_views_uint8
from aligngemini.branches.pixel.fold_bn import fold_checked
from aligngemini.branches.pixel.model import PixelModel, load_exported
from aligngemini.branches.precision import arithmetic, check_precision, native_bf16
from aligngemini.config import from_dict
from aligngemini.decode import LoadedImage

FAMILY = "pixel-timm"
log = logging.getLogger(__name__)
_KNOWN_KEYS = {
    "family",
    "weights",
    "backbone",
    "crop",
    "normalize",
    "input_filter",
    "threshold",
    "precision",
    "batch_size",
    "lora_merged",
    "notes",
}


# Crops per forward pass on a CPU: 8 to 16 crops of 160 px run about 20% faster than 32 or more (activations
# stay in cache; measured with EfficientNet-Lite0 on the 2-core dev box); a GPU takes the bundle's batch size.
CPU_CROPS_PER_BATCH = 16


class PixelBranch:
    """Scores images by cropping them at native resolution and combining the per-crop P(fake)."""

    can_explain = False

    def __init__(
        self,
        model: PixelModel,
        crop: CropConfig,
        *,
        name: str = "pixel",
        threshold: float = 0.5,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        self.name = name
        self.threshold = float(threshold)
        self.crop = crop
        self.device = torch.device(device)
        self.precision = check_precision(precision, f"branch {name!r}")
        if precision == "bf16" and dtype == torch.float32:  # an fp32 load keeps what the bundle asks for
            if native_bf16(self.device.type):
                dtype = torch.bfloat16
            else:
                log.info("no native bf16 on %s: the %s network computes in fp32", self.device, name)
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        probe = torch.rand(2, 3, crop.size, crop.size, generator=torch.Generator().manual_seed(0))
        model, self.folded_bn = fold_checked(model.float().eval(), probe)  # in fp32, before any cast
        self.model = model.to(device=self.device, dtype=dtype).eval()

    @property
    def arithmetic(self) -> str:
        """Where and in what the network computes (part of the score cache's key)."""
        return arithmetic(self.device, self.dtype)

    def compile(self, mode: str) -> None:
        """torch.compile the network: each new batch shape pays a compilation on first use."""
        self.model = torch.compile(self.model, mode=mode)

    def prepare(self, image: LoadedImage) -> torch.Tensor:
        """[V, 3, size, size] uint8 crops at native resolution; CPU only (pinned when the model is on a GPU, so
        the copy to it can overlap)."""
        views = inference_views_uint8(image.image, self.crop)
        return views.pin_memory() if self.device.type == "cuda" else views

    @torch.inference_mode()
    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """Per-crop logits for a [N, 3, size, size] stack (uint8 pixels, or floats in [0, 1]), in chunks of
        ``batch_size``; uint8 becomes float32 / 255 on the model's device."""
        out = []
        batch = min(self.batch_size, CPU_CROPS_PER_BATCH) if self.device.type == "cpu" else self.batch_size
        for chunk in views.split(batch):
            x = chunk.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            out.append(self.model(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def score(self, prepared: Sequence[torch.Tensor]) -> np.ndarray:
        """P(fake) per image: sigmoid of each crop's logit, combined per image by ``crop.combine``."""
        if len(prepared) == 0:
            return np.zeros(0, dtype=np.float64)
        counts = [int(v.shape[0]) for v in prepared]
        probs = torch.sigmoid(self.logits(torch.cat(list(prepared)))).double().numpy()
        scores, start = [], 0
        for n in counts:
            scores.append(combine_scores(probs[start : start + n], self.crop.combine))
            start += n
        return np.asarray(scores, dtype=np.float64)

    def explain(self, image: LoadedImage) -> str:
        raise NotImplementedError("the pixel branch gives a score, not a rationale")


def _backbone_spec(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    spec = cfg.get("backbone")
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or not spec.get("name"):
        raise ValueError(
            f"pixel branch config: 'backbone' must be {{name: TIMM_NAME, kwargs: {{...}}}}, got {spec!r}"
        )
    return str(spec["name"]), dict(spec.get("kwargs") or {})


def check_section(cfg: Mapping[str, Any]) -> CropConfig:
    """Refuse a section with an unknown key, crop setting or precision (before any file is read); returns
    its crop settings."""
    unknown = sorted(set(cfg) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"pixel branch config: unknown key(s) {unknown}; known: {sorted(_KNOWN_KEYS)}")
    check_precision(str(cfg.get("precision", "fp32")), "pixel branch config")
    return from_dict(CropConfig, cfg.get("crop") or {}, where="pixel branch crop")


def build_pixel_branch(
    *,
    role: str,
    cfg: Mapping[str, Any],
    bundle_dir: Path | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PixelBranch:
    """Build a :class:`PixelBranch` from its bundle config section and the bundle folder."""
    from safetensors.torch import load_file

    crop = check_section(cfg)
    weights = cfg.get("weights")
    if not weights:
        raise ValueError("pixel branch config: 'weights' (a .safetensors file in the bundle) is required")
    path = Path(weights)
    if not path.is_absolute():
        if bundle_dir is None:
            raise ValueError(f"pixel branch config: relative weights {weights!r} need a bundle folder")
        path = Path(bundle_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pixel branch weights not found")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: pixel branch weights must be safetensors")
    name, kwargs = _backbone_spec(cfg)
    norm = cfg.get("normalize") or {}
    if "mean" not in norm or "std" not in norm:
        raise ValueError("pixel branch config: 'normalize' must give mean and std")
    input_filter = str(cfg.get("input_filter", "none"))  # PixelModel refuses an unknown one
    model = load_exported(
        name,
        kwargs,
        load_file(str(path)),
        norm["mean"],
        norm["std"],
        where=str(path),
        input_filter=input_filter,
    )
    return PixelBranch(
        model,
        crop,
        name=role,
        threshold=float(cfg.get("threshold", 0.5)),
        device=device,
        dtype=dtype,
        batch_size=int(cfg.get("batch_size", 32)),
        precision=str(cfg.get("precision", "fp32")),
    )


register_family(FAMILY)(build_pixel_branch)
