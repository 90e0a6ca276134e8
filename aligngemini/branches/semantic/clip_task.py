"""The ``semantic-clip`` training task: a head (and optionally LoRA on the tower) on a semantic-set manifest.

Recipe sections read here (the trainer owns ``train``)::

    task: semantic-clip
    model:  {tower, tower_sha256, head_type, head_hidden, head_dropout, resize, lora}      (ClipModelConfig)
    data:   {manifest, train_split, val_split, cache_features, feature_batch_size, ...}  (ClipDataConfig)
    export: {threshold, head_name, tower_dir}                                           (ClipExportConfig)

Default (``lora: null``): the tower is frozen and only the head trains. Every image is embedded once,
up front, and the embedding is cached on disk under ``cache_dir("features")`` keyed by the image bytes'
sha256 and the tower's content identity, so an epoch is a few matrix products and a rerun embeds nothing.
With ``lora`` set, LoRA adapters on the tower's attention and MLP projections train with the head, items
are pixel tensors, and ``export`` merges the adapters into a tower saved beside the head.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from aligngemini.branches.precision import PRECISIONS
from aligngemini.branches.semantic.clip import (
    DEFAULT_RESIZE,
    FAMILY,
    FEATURES,
    HEAD_TYPES,
    LAYER_FEATURES,
    STARTER_TOWER,
    ClipTower,
    SemanticHead,
    load_tower,
    parse_view,
    save_head,
    view_tensor,
)
from aligngemini.branches.semantic.preprocess import RESIZE_MODES
from aligngemini.branches.semantic.tower_kernels import ATTENTION_KINDS
from aligngemini.config import ConfigError, from_dict
from aligngemini.data.manifest import ManifestData, label_value, read_manifest, select_sources
from aligngemini.decode import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from aligngemini.paths import cache_dir
from aligngemini.train.task import register_task, unwrap

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass
class ClipModelConfig:
    tower: str = STARTER_TOWER
    tower_sha256: str | None = None  # pin the tower file (the starter's is known and pinned by default)
    head_type: str = "linear"  # linear | mlp
    head_hidden: int = 256
    head_dropout: float = 0.0
    resize: str = DEFAULT_RESIZE  # squash | pad | crop | crop-start | crop-end (preprocess.RESIZE_MODES)
    features: str = "embed"  # embed | cls-layers (every layer's class token) | cls-mean-layers (+ mean patch)
    image_size: int | None = (
        None  # feed the tower this size instead of its own (e.g. 160: about half the cost)
    )
    views: list[str] | None = (
        None  # e.g. [squash, crop, squash+flip]: each a training item, averaged at inference
    )
    layers: int | None = None  # cls-layers from the first N transformer layers only (None: all of them)
    precision: str = "fp32"  # fp32 | bf16: the tower's arithmetic, at training and at inference alike
    merge_tokens: int = 0  # merge this many token pairs after each layer's attention (ToMe; 0: off)
    attention: str = "sdpa"  # sdpa (PyTorch's fused kernel) | eager (plain products: faster on a CPU)
    lora: dict[str, Any] | None = None  # {r, alpha, dropout, target_modules}; None: tower frozen

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise ConfigError(f"recipe model.head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"recipe model.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.features not in FEATURES:
            raise ConfigError(f"recipe model.features must be one of {FEATURES}, got {self.features!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"recipe model.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.merge_tokens < 0:
            raise ConfigError(
                f"recipe model.merge_tokens must be 0 (off) or a positive count, got {self.merge_tokens}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(
                f"recipe model.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}"
            )
        if self.layers is not None and (self.features not in LAYER_FEATURES or self.layers < 1):
            raise ConfigError(
                f"recipe model.layers (a positive count) needs model.features in {LAYER_FEATURES}"
            )
        for view in self.views or []:
            try:
                parse_view(view, where="recipe model.views")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.lora is not None and (self.features != "embed" or len(self.view_list) > 1):
            raise ConfigError(
                "recipe model.lora trains on one view of the embedding: leave features and views unset"
            )

    @property
    def view_list(self) -> list[str]:
        return list(self.views or [self.resize])
        unknown = sorted(set(self.lora or {}) - {"r", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ConfigError(
                f"recipe model.lora: unknown key(s) {unknown}; known: r, alpha, dropout, target_modules"
            )


@dataclass
class ClipDataConfig(ManifestData):
    cache_features: bool = True  # frozen tower only
    feature_batch_size: int = 32
    max_train: int | None = None  # keep at most this many rows per split (evenly spread); for quick runs


@dataclass
class ClipExportConfig:
    threshold: float = 0.5
    head_name: str = "semantic_head.safetensors"
    tower_dir: str = "semantic_tower"  # written only when the tower was tuned (LoRA merged)
    batch_size: int = 32


@dataclass(frozen=True)
class Row:
    path: Path
    label: float  # 1.0 = fake
    split: str


def read_rows(
    manifest: str | Path, sources: Sequence[str] | None = None, exclude_sources: Sequence[str] | None = None
) -> list[Row]:
    """Rows of a semantic-set manifest (``data:REL`` names one under the data home), paths absolute,
    narrowed to the given source globs."""
    chosen = select_sources(read_manifest(manifest), sources, exclude_sources)
    return [Row(Path(r.path), label_value(r.label, f"{manifest}: {r.path}"), str(r.split)) for r in chosen]


def _spread(rows: list[Row], limit: int | None) -> list[Row]:
    if limit is None or len(rows) <= limit:
        return rows
    keep = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in keep]


# --------------------------------------------------------------------------------------------------------
# Feature cache


class FeatureCache:
    """Raw (unnormalised) features on disk, one ``.npy`` per image: ``<root>/<sha[:2]>/<sha>.npy``.

    ``root`` is ``cache_dir("features", <tower identity>-<view><size>[-<features>][<variant>])``: a different
    tower, view, input size, feature kind, layer count or precision never reads another's; the image key is
    the sha256 of the file's bytes."""

    def __init__(
        self, tower: ClipTower, view: str, root: Path | None = None, features: str = "embed"
    ) -> None:
        name = f"{tower.identity}-{view}{tower.image_size}" + ("" if features == "embed" else f"-{features}")
        name += tower.variant
        self.root = root or cache_dir("features", name)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> np.ndarray | None:
        p = self.path(sha256)
        if not p.is_file():
            return None
        try:
            return np.load(p)
        except (OSError, ValueError):
            return None  # a torn write from a killed run: recomputed and replaced

    def put(self, sha256: str, vector: np.ndarray) -> None:
        p = self.path(sha256)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(vector, dtype=np.float32))
        os.replace(tmp, p)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.inference_mode()
def embed_rows_cached(
    rows: Sequence[Row],
    tower: ClipTower,
    *,
    resize: str,
    cache: FeatureCache | None,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "embed",
    features: str = "embed",
) -> np.ndarray:
    """Raw features [N, D] of ``rows`` (unnormalised, fp32) for one view (``resize``: a view name such as
    ``squash`` or ``crop+flip``), from the cache where present."""
    from tqdm.auto import tqdm

    dim = tower.feature_dim(features)
    out = np.zeros((len(rows), dim), dtype=np.float32)
    todo: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        if not row.path.is_file():
            raise ImageLoadError(str(row.path), "no such file (listed in the training manifest)")
        sha = _file_sha256(row.path)
        hit = cache.get(sha) if cache is not None else None
        if hit is not None and hit.shape == (dim,):
            out[i] = hit
        else:
            todo.append((i, sha))
    if not todo:
        return out
    p = next(tower.parameters())
    bar = tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, mininterval=1.0)
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + batch_size]
        images = []
        for i, _ in chunk:
            try:
                images.append(load_image(rows[i].path, max_pixels=max_pixels).image)
            except ImageLoadError as exc:
                raise ImageLoadError(exc.source, f"{exc.reason} (listed in the training manifest)") from None
        x = torch.stack([view_tensor(tower, im, resize) for im in images]).to(p.device, p.dtype)
        emb = tower(x, features).float().cpu().numpy()
        for (i, sha), vec in zip(chunk, emb, strict=True):
            out[i] = vec
            if cache is not None:
                cache.put(sha, vec)
        bar.update(len(chunk))
    bar.close()
    return out


# --------------------------------------------------------------------------------------------------------
# Datasets and model


class EmbeddingSet(Dataset):
    """Items ``{"embedding": [D] float32, "label": float}`` from precomputed embeddings."""

    def __init__(self, embeddings: np.ndarray, labels: Sequence[float]) -> None:
        if len(embeddings) != len(labels):
            raise ValueError(f"{len(embeddings)} embeddings for {len(labels)} labels")
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.labels = [float(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"embedding": self.embeddings[index], "label": self.labels[index]}


class PixelSet(Dataset):
    """Items ``{"pixel_values": [3,S,S], "label": float}``: the whole image resized for the tower."""

    def __init__(self, rows: Sequence[Row], tower: ClipTower, resize: str, max_pixels: int) -> None:
        self.rows, self.max_pixels, self.resize = list(rows), max_pixels, resize
        self.image_size, self.mean, self.std = tower.image_size, tower.mean, tower.std

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from aligngemini.branches.semantic.preprocess import preprocess_image

        row = self.rows[index]
        try:
            image = load_image(row.path, max_pixels=self.max_pixels).image
        except ImageLoadError as exc:
            raise ImageLoadError(exc.source, f"{exc.reason} (listed in the training manifest)") from None
        x = preprocess_image(image, self.image_size, mode=self.resize, mean=self.mean, std=self.std)
        return {"pixel_values": x, "label": row.label}


class ClipSemanticModel(nn.Module):
    """``forward(batch) -> [B]`` logits: head(embedding) for cached features, head(tower(pixels)) otherwise.

    The tower is a submodule only when it trains (LoRA), so a frozen-tower run checkpoints the head alone."""

    def __init__(self, head: SemanticHead, tower: ClipTower | None = None) -> None:
        super().__init__()
        self.head = head
        self.tower = tower

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "embedding" in batch:
            return self.head(batch["embedding"])
        if self.tower is None:
            raise ValueError("this model has a frozen tower and reads cached embeddings; the batch has none")
        return self.head(self.tower(batch["pixel_values"]))


class ClipTask:
    """Task protocol implementation for the semantic-clip branch (see the module doc)."""

    def __init__(self, recipe: Mapping[str, Any]) -> None:
        self.recipe = dict(recipe)
        self.model_cfg = from_dict(ClipModelConfig, recipe.get("model"), where="recipe model")
        self.data = from_dict(ClipDataConfig, recipe.get("data"), where="recipe data")
        self.export_cfg = from_dict(ClipExportConfig, recipe.get("export"), where="recipe export")
        self._tower: ClipTower | None = None

    @property
    def tunes_tower(self) -> bool:
        return self.model_cfg.lora is not None

    def tower(self) -> ClipTower:
        """The tower, loaded once (on a GPU when there is one and the tower is frozen: feature extraction)."""
        if self._tower is None:
            device = "cuda" if torch.cuda.is_available() and not self.tunes_tower else "cpu"
            cfg = self.model_cfg
            self._tower = load_tower(cfg.tower, sha256=cfg.tower_sha256, device=device).configure(
                image_size=cfg.image_size,
                layers=cfg.layers,
                precision=cfg.precision,
                merge_tokens=cfg.merge_tokens,
                attention=cfg.attention,
            )
        return self._tower

    def build_model(self) -> ClipSemanticModel:
        tower = self.tower()
        cfg = self.model_cfg
        head = SemanticHead(tower.feature_dim(cfg.features), cfg.head_type, cfg.head_hidden, cfg.head_dropout,
                            groups=tower.feature_groups(cfg.features))  # fmt: skip
        if not self.tunes_tower:
            for p in tower.parameters():
                p.requires_grad_(False)
            return ClipSemanticModel(head)
        from peft import LoraConfig, get_peft_model

        lora = dict(cfg.lora or {})
        r = int(lora.get("r", 8))
        peft_cfg = LoraConfig(
            r=r,
            lora_alpha=float(lora.get("alpha", 2 * r)),
            lora_dropout=float(lora.get("dropout", 0.0)),
            target_modules=list(lora.get("target_modules", LORA_TARGETS)),
        )
        tower.model = get_peft_model(tower.model, peft_cfg)
        return ClipSemanticModel(head, tower)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        if not self.data.manifest:
            raise ValueError("recipe data.manifest is not set; pass data.manifest=PATH/manifest.jsonl")
        rows = read_rows(self.data.manifest, self.data.sources, self.data.exclude_sources)
        train = _spread(
            [r for r in rows if self.data.in_split(r.split, self.data.train_split)], self.data.max_train
        )
        val = _spread(
            [r for r in rows if self.data.in_split(r.split, self.data.val_split)], self.data.max_val
        )
        if not train:
            splits = sorted({r.split for r in rows})
            raise ValueError(
                f"{self.data.manifest}: no rows in split {self.data.train_split!r}; splits present: {splits}"
            )
        if len({r.label for r in train}) < 2:
            raise ValueError(f"{self.data.manifest}: split {self.data.train_split!r} holds only one class")
        tower = self.tower()
        resize = self.model_cfg.resize
        if self.tunes_tower:
            pix_val = PixelSet(val, tower, resize, self.data.max_pixels) if val else None
            return PixelSet(train, tower, resize, self.data.max_pixels), pix_val
        cfg = self.model_cfg
        sets = []
        for name, split_rows in (("train", train), ("val", val)):
            if not split_rows:
                sets.append(None)
                continue
            per_view = []
            for view in cfg.view_list:  # every view of an image is an item of its own
                cache = FeatureCache(tower, view, features=cfg.features) if self.data.cache_features else None
                per_view.append(embed_rows_cached(
                    split_rows, tower, resize=view, cache=cache, batch_size=self.data.feature_batch_size,
                    max_pixels=self.data.max_pixels, desc=f"embed {name} {view}", features=cfg.features,
                ))  # fmt: skip
            labels = [r.label for r in split_rows] * len(per_view)
            sets.append(EmbeddingSet(np.concatenate(per_view), labels))
        return sets[0], sets[1]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        key = "embedding" if "embedding" in items[0] else "pixel_values"
        return {
            key: torch.stack([x[key] for x in items]),
            "label": torch.tensor([float(x["label"]) for x in items], dtype=torch.float32),
        }

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        inner = unwrap(model, ClipSemanticModel)
        params = list(inner.head.parameters())
        if inner.tower is not None:
            params += [p for n, p in inner.tower.named_parameters() if "lora_" in n]
        return params

    def export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """Write the head (and a LoRA-merged tower when it was tuned); return the bundle config section."""
        inner = unwrap(model, ClipSemanticModel)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_head(inner.head, out_dir / self.export_cfg.head_name)
        tower = self.tower()
        section: dict[str, Any] = {
            "family": FAMILY,
            "tower": self.model_cfg.tower,
            "head": self.export_cfg.head_name,
            "head_type": inner.head.head_type,
            "threshold": float(self.export_cfg.threshold),
            "resize": self.model_cfg.resize,
            "embed_dim": tower.feature_dim(self.model_cfg.features),
            "features": self.model_cfg.features,
            "views": self.model_cfg.view_list,
            "precision": self.model_cfg.precision,
            "batch_size": int(self.export_cfg.batch_size),
            **tower.preprocess_config(),
        }
        if self.model_cfg.layers is not None:
            section["layers"] = tower.n_layers
        if tower.merge_tokens:
            section["merge_tokens"] = tower.merge_tokens
        if tower.attention != "sdpa":
            section["attention"] = tower.attention
        if self.model_cfg.tower_sha256:
            section["tower_sha256"] = self.model_cfg.tower_sha256
        if inner.tower is not None:
            section.pop("tower_sha256", None)  # the tower is now the merged copy in the bundle
            section.update(self._export_tower(inner.tower, out_dir))
        return section

    def _export_tower(self, tower: ClipTower, out_dir: Path) -> dict[str, Any]:
        """Merge LoRA into a copy of the tower and save it (safetensors) as ``export.tower_dir``."""
        import copy

        model = tower.model
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        target = out_dir / self.export_cfg.tower_dir
        model.save_pretrained(str(target), safe_serialization=True)
        pre = {
            "image_mean": list(tower.mean),
            "image_std": list(tower.std),
            "size": {"height": tower.image_size, "width": tower.image_size},
        }
        (target / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
        return {"tower": self.export_cfg.tower_dir, "tower_base": self.model_cfg.tower, "lora_merged": True}


@register_task(FAMILY)
def make_clip_task(recipe: Mapping[str, Any]) -> ClipTask:
    return ClipTask(recipe)
