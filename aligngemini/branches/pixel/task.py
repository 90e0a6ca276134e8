"""The ``pixel`` training task: a PixelModel trained on a pure-pixel pair manifest by the one trainer.

Recipe sections read here (the trainer owns ``train``)::

    task: pixel-timm
    model:   {backbone, backbone_kwargs, weights, normalize, finetune, lora, freeze_groups, ...}  (ModelConfig)
    crop:    {size, pad_mode, pad_value, inference, max_crops, combine, grid, phases}            (CropConfig)
    augment: {jpeg_p, hflip_p, ..., resize_p, ...}                                               (AugmentConfig)
    data:    {manifest, paired, train_split, val_split, max_pixels, max_val}                     (PixelDataConfig)
    export:  {threshold, batch_size, weights_name}                                               (PixelExportConfig)

Training items: with ``data.paired`` each item is one pair (group) of the manifest, a real and one of its
fakes, given the *same* augmentation plan and the *same* crop location, so the two images differ only where
the generator changed pixels; a batch of N items holds 2N images. Without it, each item is one image.
Augmentation, then pad-if-small and a random crop; never a resize except the resize alignment.

Validation items: one centre crop per image (padded if small), no augmentation.

Randomness comes from numpy's global generator, which the trainer seeds per item from
``(seed, epoch, index)`` (``aligngemini.train.sampling.SeededItems``), so a resumed run redraws the same
augmentations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from aligngemini.branches.pixel.augment import AugmentConfig, apply_plan, sample_plan
from aligngemini.branches.pixel.branch import FAMILY
from aligngemini.branches.pixel.crops import (
    CropConfig,
    as_array,
    crop,
    inference_boxes,
    pad_to_min,
    random_offset,
    to_tensor,
)
from aligngemini.branches.pixel.model import ModelConfig, PixelModel
from aligngemini.config import from_dict, to_dict
from aligngemini.data.manifest import ManifestData, label_value, read_manifest, select_sources
from aligngemini.decode import ImageLoadError, load_image
from aligngemini.train.task import register_task, unwrap

JPEG_GRID = 16  # pre-crop windows start on the 16-pixel MCU grid so JPEG block phase is kept


@dataclass
class PixelDataConfig(ManifestData):
    manifest: str | list[str] = ""  # one pair set's manifest.jsonl, or several (pairs of several builds)
    paired: bool = (
        True  # a training item is a pair (a real and one of its reconstructions), same crop for both
    )


@dataclass
class PixelExportConfig:
    threshold: float = 0.5
    batch_size: int = 32  # crops per forward pass at inference
    weights_name: str = "pixel.safetensors"


@dataclass(frozen=True)
class Row:
    path: Path
    label: float  # 1.0 = fake
    split: str
    group: str


def read_rows(manifest: str | Path | Sequence[str | Path], sources: Sequence[str] | None = None,
              exclude_sources: Sequence[str] | None = None) -> list[Row]:  # fmt: skip
    """Rows of one pair manifest or several (``data:REL`` names one under the data home), paths absolute,
    narrowed to the given source globs. With several, each manifest's groups stay its own: a group name
    two builds happen to share never pairs one build's real with the other's fake."""
    several = not isinstance(manifest, str | Path)
    manifests = list(manifest) if several else [manifest]
    if several and not manifests:
        raise ValueError("recipe data.manifest is an empty list; name at least one manifest.jsonl")
    rows = []
    for i, one in enumerate(manifests):
        prefix = f"{i}:" if several else ""
        rows.extend(
            Row(
                Path(r.path),
                label_value(r.label, f"{one}: {r.path}"),
                str(r.split or ""),
                prefix + str(r.group or r.path),  # no group: a pair of its own
            )
            for r in select_sources(read_manifest(one), sources, exclude_sources)
        )
    return rows


def pair_units(rows: Sequence[Row]) -> list[tuple[list[Row], list[Row]]]:
    """(reals, fakes) per group that has both; rows of incomplete groups become single-image units."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[r.group].append(r)
    units = []
    for g in sorted(groups):
        reals = [r for r in groups[g] if r.label == 0.0]
        fakes = [r for r in groups[g] if r.label == 1.0]
        if reals and fakes:
            units.append((reals, fakes))
        else:
            units.extend(([r], []) if r.label == 0.0 else ([], [r]) for r in groups[g])
    return units


def _load(path: Path, max_pixels: int) -> Image.Image:
    try:
        return load_image(path, max_pixels=max_pixels).image
    except ImageLoadError as exc:
        raise ImageLoadError(exc.source, f"{exc.reason} (listed in the training manifest)") from None


def _global_rng() -> np.random.Generator:
    """A generator drawn from numpy's global state (seeded per item by the trainer)."""
    return np.random.default_rng(np.random.randint(0, 2**32, size=4, dtype=np.uint64))


def augment_and_crop(
    images: Sequence[Image.Image], aug: AugmentConfig, cfg: CropConfig, rng: np.random.Generator
) -> list[torch.Tensor]:
    """One augmentation plan and one crop location for all ``images`` (a pair shares both when sizes agree).

    Large images are first cut to a window (on the JPEG grid) big enough for the crop after the resize
    alignment, so augmentations cost the same on a 4000 px photo as on a small one."""
    plan = sample_plan(aug, rng)
    same = len({im.size for im in images}) == 1
    scale = plan.resize[0] if plan.resize else 1.0
    need = math.ceil((cfg.size + 2 * JPEG_GRID) / scale)
    w, h = images[0].size
    if same and (w > need or h > need):
        step = math.lcm(JPEG_GRID, cfg.grid)  # the window keeps both the JPEG blocks' and the crops' phase
        left = step * int(rng.integers(0, max(0, w - need) // step + 1)) if w > need else 0
        top = step * int(rng.integers(0, max(0, h - need) // step + 1)) if h > need else 0
        images = [im.crop((left, top, min(w, left + need), min(h, top + need))) for im in images]
    arrays = [
        pad_to_min(as_array(apply_plan(im, plan, aug)), cfg.size, cfg.pad_mode, cfg.pad_value)
        for im in images
    ]
    offset = random_offset(arrays[0].shape[0], arrays[0].shape[1], cfg.size, rng, cfg.grid)
    out = []
    for arr in arrays:
        if arr.shape != arrays[0].shape:
            offset = random_offset(arr.shape[0], arr.shape[1], cfg.size, rng, cfg.grid)
        out.append(to_tensor(crop(arr, offset[0], offset[1], cfg.size)))
    return out


class PixelTrainSet(Dataset):
    """Training items: a list of ``{"pixel_values", "label"}`` (two for a pair, one for a single image)."""

    def __init__(
        self,
        units: Sequence[tuple[list[Row], list[Row]]],
        crop_cfg: CropConfig,
        aug: AugmentConfig,
        max_pixels: int,
    ) -> None:
        if not units:
            raise ValueError("the training split is empty")
        self.units, self.crop, self.aug, self.max_pixels = list(units), crop_cfg, aug, max_pixels

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        rng = _global_rng()
        reals, fakes = self.units[index]
        chosen = [r[int(rng.integers(len(r)))] for r in (reals, fakes) if r]
        tensors = augment_and_crop([_load(r.path, self.max_pixels) for r in chosen], self.aug, self.crop, rng)
        return [{"pixel_values": t, "label": r.label} for t, r in zip(tensors, chosen, strict=True)]


class PixelEvalSet(Dataset):
    """Validation items: one centre crop per image, no augmentation."""

    def __init__(self, rows: Sequence[Row], crop_cfg: CropConfig, max_pixels: int) -> None:
        self.rows, self.crop, self.max_pixels = list(rows), crop_cfg, max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        arr = pad_to_min(
            as_array(_load(row.path, self.max_pixels)),
            self.crop.size,
            self.crop.pad_mode,
            self.crop.pad_value,
        )
        center = CropConfig(**{**to_dict(self.crop), "inference": "center"})
        top, left = inference_boxes(arr.shape[0], arr.shape[1], center)[0]
        return {"pixel_values": to_tensor(crop(arr, top, left, self.crop.size)), "label": row.label}


class PixelTask:
    """Task protocol implementation for the pixel branch (see the module doc)."""

    def __init__(self, recipe: Mapping[str, Any]) -> None:
        self.recipe = dict(recipe)
        self.model_cfg = ModelConfig.from_dict(recipe.get("model"))
        self.crop = from_dict(CropConfig, recipe.get("crop"), where="crop")
        self.augment = AugmentConfig.from_dict(recipe.get("augment"))
        self.data = from_dict(PixelDataConfig, recipe.get("data"), where="data")
        self.export_cfg = from_dict(PixelExportConfig, recipe.get("export"), where="export")

    def build_model(self) -> PixelModel:
        return PixelModel.from_config(self.model_cfg)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        if not self.data.manifest:
            raise ValueError("recipe data.manifest is not set; pass data.manifest=PATH/manifest.jsonl")
        rows = read_rows(self.data.manifest, self.data.sources, self.data.exclude_sources)
        train = [r for r in rows if self.data.in_split(r.split, self.data.train_split)]
        val = [r for r in rows if self.data.in_split(r.split, self.data.val_split)]
        if not train:
            splits = sorted({r.split for r in rows})
            raise ValueError(
                f"{self.data.manifest}: no rows in split {self.data.train_split!r}; splits present: {splits}"
            )
        units = (
            pair_units(train)
            if self.data.paired
            else [([r], []) if r.label == 0.0 else ([], [r]) for r in train]
        )
        if self.data.max_val is not None and len(val) > self.data.max_val:
            keep = np.linspace(0, len(val) - 1, self.data.max_val).round().astype(int)
            val = [val[i] for i in keep]
        train_set = PixelTrainSet(units, self.crop, self.augment, self.data.max_pixels)
        return train_set, (PixelEvalSet(val, self.crop, self.data.max_pixels) if val else None)

    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        flat: list[dict[str, Any]] = []
        for item in items:
            flat.extend(item if isinstance(item, list) else [item])
        return {
            "pixel_values": torch.stack([x["pixel_values"] for x in flat]),
            "label": torch.tensor([float(x["label"]) for x in flat], dtype=torch.float32),
        }

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return unwrap(model, PixelModel).trainable_parameters()

    def export(self, model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
        """Write ``pixel.safetensors`` (LoRA merged: plain timm keys + head) and return the config section."""
        from safetensors.torch import save_file

        pixel = unwrap(model, PixelModel)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = pixel.export_state_dict()
        save_file(
            state,
            str(out_dir / self.export_cfg.weights_name),
            metadata={
                "family": FAMILY,
                "backbone": self.model_cfg.backbone,
                "lora_merged": str(bool(pixel.lora_names)).lower(),
            },
        )
        section = {
            "family": FAMILY,
            "weights": self.export_cfg.weights_name,
            "backbone": {"name": self.model_cfg.backbone, "kwargs": dict(self.model_cfg.backbone_kwargs)},
            "crop": to_dict(self.crop),
            "normalize": {"mean": pixel.mean.flatten().tolist(), "std": pixel.std.flatten().tolist()},
            "threshold": float(self.export_cfg.threshold),
            "batch_size": int(self.export_cfg.batch_size),
            "lora_merged": bool(pixel.lora_names),
        }
        for key in ("grid", "phases", "flips"):  # as input_filter below: written only when used
            if section["crop"][key] == 1:
                del section["crop"][key]
        if pixel.input_filter != "none":  # written only when used: older readers reject unknown keys
            section["input_filter"] = pixel.input_filter
        return section


@register_task(FAMILY)
def make_pixel_task(recipe: Mapping[str, Any]) -> PixelTask:
    return PixelTask(recipe)
