"""The VLM semantic branch: any Hugging Face image-text-to-text model as a real/fake judge.

The score is a *logit read-out*: the model sees the image and a one-word question in its own chat
template, and P(fake) is the softmax over the logits of the first tokens of the two answer words at the
position where the answer would begin. One forward pass per batch (left padding), no generation, so the
score is deterministic and never depends on sampled text. Explanations are a separate generation with
their own prompt, on request.

Loads through ``AutoModelForImageTextToText`` + ``AutoProcessor`` (Qwen2.5-VL, Qwen2-VL, Qwen3-VL,
SmolVLM/Idefics3, LLaVA-family...), from a local folder or a hub id, with an optional LoRA adapter from
the bundle (peft, safetensors).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from aligngemini.branches.base import register_family
from aligngemini.branches.precision import arithmetic, parse_dtype
from aligngemini.branches.semantic.prompts import DETECT_PROMPT, EXPLAIN_PROMPT, PromptSet, build_prompt_set
from aligngemini.config import from_dict
from aligngemini.decode import LoadedImage

log = logging.getLogger(__name__)

FAMILY = "semantic-vlm"
MAX_ASPECT = 50.0  # Qwen-VL processors refuse aspect ratios over 200; strips this thin carry no scene anyway


class VlmLoadError(RuntimeError):
    """A model or adapter that cannot be loaded; the message names it and says how to pass a local copy."""


@dataclass
class VlmBranchConfig:
    """The ``semantic`` section of a bundle's config.json for family ``semantic-vlm``."""

    family: str = FAMILY
    model: str = ""  # local folder (absolute or relative to the bundle) or hub id
    adapter: str | None = None  # LoRA adapter folder (peft, safetensors), relative to the bundle
    answer_words: list[str] = field(default_factory=lambda: ["real", "fake"])
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    threshold: float = 0.5
    prompt: str = DETECT_PROMPT  # may use {real} and {fake}
    explain_prompt: str = EXPLAIN_PROMPT
    system_prompt: str | None = None
    max_new_tokens: int = 96  # explanation length
    do_sample: bool = False  # explanations are greedy unless asked otherwise
    temperature: float = 0.7  # used only when do_sample
    batch_size: int = 8
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"; None: transformers' default
    dtype: str | None = None  # overrides the detector's dtype ("bfloat16", "float16", "float32")
    merge_adapter: bool = True  # fold the LoRA weights into the base for inference speed
    # Qwen-VL towers: one SDPA call per window length (same logits; 34 -> 57 images/s read-out on an H100)
    grouped_vision_attention: bool = True
    revision: str | None = None  # hub revision, when ``model`` is a hub id


# --------------------------------------------------------------------------------------------------
# Loading


def _hub_offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0", "false", "False")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ALIGNGEMINI_OFFLINE"))  # fmt: skip


def resolve_model_ref(ref: str, bundle_dir: Path | None = None) -> tuple[str, bool]:
    """``(path_or_hub_id, is_local)``: a folder relative to the bundle, an existing folder, or a hub id."""
    if not ref:
        raise VlmLoadError(
            "semantic-vlm: config has no 'model'; set it to a local model folder or a hub id "
            "(e.g. model: /models/Qwen2.5-VL-7B-Instruct)"
        )
    ref = ref.removeprefix("hf:")
    if bundle_dir is not None and not os.path.isabs(ref) and (Path(bundle_dir) / ref).is_dir():
        return str(Path(bundle_dir) / ref), True
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path), True
    if ref.startswith(("/", ".", "~")) or path.exists():
        raise VlmLoadError(f"semantic-vlm: model folder {ref!r} does not exist (or is not a folder)")
    return ref, False


def _load_error(ref: str, exc: Exception) -> VlmLoadError:
    how = (
        f"download it where the hub is reachable (e.g. `hf download {ref} --local-dir DIR`) and pass DIR "
        "as the branch's model (bundle config branches.semantic.model, or a recipe's model.model)"
    )
    if _hub_offline():
        why = "it is not a local folder and hub access is off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE/ALIGNGEMINI_OFFLINE)"
    else:
        why = "it is not a local folder and the hub did not provide it"
    return VlmLoadError(
        f"semantic-vlm: cannot load model {ref!r}: {why} ({type(exc).__name__}: {exc}); {how}"
    )


def load_processor(ref: str, bundle_dir: Path | None = None, *, revision: str | None = None) -> Any:
    from transformers import AutoProcessor

    path, local = resolve_model_ref(ref, bundle_dir)
    try:
        processor = AutoProcessor.from_pretrained(
            path, local_files_only=local or _hub_offline(), revision=None if local else revision
        )
    except (OSError, ValueError) as exc:
        if local:
            raise VlmLoadError(f"semantic-vlm: {path}: cannot load its processor: {exc}") from exc
        raise _load_error(ref, exc) from exc
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise VlmLoadError(
            f"semantic-vlm: {ref!r} loads a {type(processor).__name__}, not an image-text processor"
        )
    processor.tokenizer.padding_side = "left"  # the read-out position must be the last one in every row
    if getattr(processor.tokenizer, "pad_token_id", None) is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def set_pixel_bounds(processor: Any, min_pixels: int, max_pixels: int) -> None:
    """Apply min/max pixels to Qwen-VL style image processors (``size`` with shortest/longest edge in
    pixels); other processors resize to their own fixed size and are left alone."""
    ip = processor.image_processor
    size = getattr(ip, "size", None)
    keys = set(size.keys()) if hasattr(size, "keys") else set()
    if {"shortest_edge", "longest_edge"} <= keys and hasattr(ip, "merge_size"):
        ip.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(ip, attr):  # older transformers keep these as attributes as well
            setattr(ip, attr, int(value))


def load_model(
    ref: str,
    bundle_dir: Path | None = None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    path, local = resolve_model_ref(ref, bundle_dir)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local or _hub_offline()}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if not local and revision:
        kwargs["revision"] = revision
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index if device.index is not None else 0}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if local:
            raise VlmLoadError(
                f"semantic-vlm: {path}: cannot load it as an image-text-to-text model: {exc}"
            ) from exc
        raise _load_error(ref, exc) from exc
    if device.type != "cuda":
        model = model.to(device)
    return model.eval()


def attach_adapter(model: torch.nn.Module, adapter_dir: Path, *, merge: bool) -> torch.nn.Module:
    """Load a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) onto ``model``."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise VlmLoadError(f"semantic-vlm: adapter folder {adapter_dir} has no adapter_config.json")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise VlmLoadError(
            f"semantic-vlm: adapter folder {adapter_dir} has no adapter_model.safetensors (only safetensors "
            "adapters are loaded); re-save it with save_pretrained(..., safe_serialization=True)"
        )
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return (peft_model.merge_and_unload() if merge else peft_model).eval()


# --------------------------------------------------------------------------------------------------
# Speed: one attention call per window size in Qwen-VL vision towers

# Qwen-VL vision towers attend within windows (and, in a few layers, within images). With SDPA,
# transformers runs one attention call per window: at 448 px and batch 32 that is 512 tiny calls per
# layer, and the vision tower takes most of the forward time. Registered under a name containing
# "flash", the tower hands the whole packed sequence and its boundaries (``cu_seq_lens_q``) to this
# function instead, which stacks equal-length windows and runs SDPA once per distinct length. Same
# arithmetic per window, so the outputs agree up to kernel rounding.
GROUPED_VISION_ATTENTION = "aligngemini_grouped_flash_sdpa"


def _grouped_varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over packed sequences ``[1, H, S, D]`` split at ``cu_seq_lens_q``; returns ``[1, S, H, D]``."""
    import torch.nn.functional as F

    if cu_seq_lens_q is None:  # a caller that splits chunks itself: plain SDPA on what it was given
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
        )
        return out.transpose(1, 2).contiguous(), None
    q, k, v = query[0], key[0], value[0]  # [H, S, D]
    heads, seq, dim = q.shape
    lengths = cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    distinct = torch.unique(lengths).tolist()
    if len(distinct) == 1:  # all windows alike (the usual case): a view, no gather
        n, length = lengths.numel(), int(distinct[0])

        def stack(t: torch.Tensor) -> torch.Tensor:
            return t.view(heads, n, length, dim).transpose(0, 1)

        out = F.scaled_dot_product_attention(stack(q), stack(k), stack(v), dropout_p=dropout, scale=scaling)
        return out.permute(0, 2, 1, 3).reshape(1, seq, heads, dim), None
    out = q.new_empty(seq, heads, dim)
    starts = cu_seq_lens_q[:-1]
    for length in distinct:
        first = starts[lengths == length]
        idx = (first[:, None] + torch.arange(length, device=q.device)).reshape(-1)

        def gather(t: torch.Tensor, idx: torch.Tensor = idx, length: int = length) -> torch.Tensor:
            return t[:, idx].view(heads, -1, length, dim).transpose(0, 1)

        o = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), dropout_p=dropout, scale=scaling)
        out[idx] = o.permute(0, 2, 1, 3).reshape(-1, heads, dim)
    return out.unsqueeze(0), None


def use_grouped_vision_attention(model: torch.nn.Module) -> bool:
    """Route a Qwen-VL family vision tower through ``_grouped_varlen_sdpa``; False (and nothing changed)
    for other families. The language model keeps its own attention implementation."""
    vision_cfg = getattr(getattr(model, "config", None), "vision_config", None)
    if vision_cfg is None or not str(getattr(vision_cfg, "model_type", "")).startswith("qwen"):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_VISION_ATTENTION, _grouped_varlen_sdpa)
    configs = {id(vision_cfg): vision_cfg}
    for module in model.modules():  # towers may hold their own copy of the vision config
        cfg = getattr(module, "config", None)
        if cfg is not None and getattr(cfg, "model_type", None) == vision_cfg.model_type:
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg._attn_implementation_internal = GROUPED_VISION_ATTENTION
    return True


# --------------------------------------------------------------------------------------------------
# Inputs


def bound_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """RGB copy whose area lies in [min_pixels, max_pixels] (aspect kept; extreme strips centre-cropped to
    1:MAX_ASPECT), so every processor sees a bounded input whatever the original size."""
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    img = image.convert("RGB") if image.mode != "RGB" else image
    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        if w > h:
            nw = int(MAX_ASPECT * h)
            left = (w - nw) // 2
            img = img.crop((left, 0, left + nw, h))
        else:
            nh = int(MAX_ASPECT * w)
            top = (h - nh) // 2
            img = img.crop((0, top, w, top + nh))
        w, h = img.size
    area = w * h
    if area > max_pixels or area < min_pixels:
        scale = math.sqrt((max_pixels if area > max_pixels else min_pixels) / area)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        while nw * nh > max_pixels:  # rounding may overshoot by a row
            nw, nh = (nw - 1, nh) if nw >= nh else (nw, nh - 1)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    return img


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def model_inputs(
    processor: Any,
    texts: Sequence[str],
    images: Sequence[Image.Image],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Processor output for one image per text, left padded, on ``device`` (floating tensors in ``dtype``)."""
    batch = processor(text=list(texts), images=[[im] for im in images], padding=True, return_tensors="pt")
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return out


# --------------------------------------------------------------------------------------------------
# The branch


class VlmSemanticBranch:
    """Semantic branch over any image-text-to-text model: logit read-out scores, generated explanations."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        cfg: VlmBranchConfig,
        *,
        name: str = "semantic",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.processor = processor
        self.cfg = cfg
        self.name = name
        self.threshold = float(cfg.threshold)
        params = next(model.parameters())
        self.device = device or params.device
        self.dtype = dtype or params.dtype
        set_pixel_bounds(processor, cfg.min_pixels, cfg.max_pixels)
        self.prompts: PromptSet = build_prompt_set(
            processor,
            answer_words=cfg.answer_words,
            prompt=cfg.prompt,
            explain_prompt=cfg.explain_prompt,
            system_prompt=cfg.system_prompt,
        )
        vocab = model.get_output_embeddings().weight.shape[0]
        if max(self.prompts.answer_token_ids) >= vocab:
            raise ValueError(
                f"answer token ids {self.prompts.answer_token_ids} exceed the model's vocabulary ({vocab})"
            )
        self._keep_last = _accepts(model.forward, "logits_to_keep")

    # -- Branch protocol ---------------------------------------------------------------------------
    @property
    def arithmetic(self) -> str:
        """Where and in what the model computes (part of the score cache's key)."""
        return arithmetic(self.device, self.dtype)

    @property
    def can_explain(self) -> bool:
        return True

    def prepare(self, image: LoadedImage) -> Image.Image:
        return bound_image(image.image, self.cfg.min_pixels, self.cfg.max_pixels)

    def score(self, prepared: Sequence[Image.Image]) -> np.ndarray:
        """P(fake) per image: softmax over the two answer-token logits."""
        pair = self.answer_logits(prepared)
        if len(pair) == 0:
            return np.zeros(0, dtype=np.float64)
        return torch.softmax(torch.from_numpy(pair), dim=-1)[:, 1].numpy().astype(np.float64)

    def explain(self, image: LoadedImage) -> str:
        return self.explain_images([self.prepare(image)])[0]

    # -- read-out ----------------------------------------------------------------------------------
    def answer_logits(self, prepared: Sequence[Image.Image]) -> np.ndarray:
        """[N, 2] float64 logits of the (real, fake) answer tokens, in input order. Images are batched by
        similar area (less padding) and returned in the original order."""
        n = len(prepared)
        out = np.zeros((n, 2), dtype=np.float64)
        order = sorted(range(n), key=lambda i: prepared[i].size[0] * prepared[i].size[1])
        bs = max(1, int(self.cfg.batch_size))
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            out[idx] = self._forward_pair([prepared[i] for i in idx])
        return out

    @torch.inference_mode()
    def _forward_pair(self, images: Sequence[Image.Image]) -> np.ndarray:
        inputs = model_inputs(
            self.processor, [self.prompts.detect_text] * len(images), images, self.device, self.dtype
        )
        kwargs: dict[str, Any] = {"use_cache": False}
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        logits = self.model(**inputs, **kwargs).logits[:, -1, :]
        ids = torch.tensor(self.prompts.answer_token_ids, device=logits.device)
        return logits.index_select(-1, ids).float().cpu().numpy().astype(np.float64)

    # -- explanations ------------------------------------------------------------------------------
    def _generation_config(self) -> Any:
        gen = copy.deepcopy(self.model.generation_config)
        gen.max_new_tokens = int(self.cfg.max_new_tokens)
        gen.do_sample = bool(self.cfg.do_sample)
        if gen.do_sample:
            gen.temperature = float(self.cfg.temperature)
        else:  # greedy: drop sampling knobs the checkpoint may ship, they only produce warnings
            gen.temperature, gen.top_p, gen.top_k = None, None, None
        tok = self.processor.tokenizer
        if gen.pad_token_id is None:
            gen.pad_token_id = tok.pad_token_id
        return gen

    @torch.inference_mode()
    def explain_images(self, prepared: Sequence[Image.Image]) -> list[str]:
        """Generated rationales for bounded images, batched; independent of ``score``."""
        texts: list[str] = []
        bs = max(1, int(self.cfg.batch_size))
        gen = self._generation_config()
        for start in range(0, len(prepared), bs):
            chunk = list(prepared[start : start + bs])
            inputs = model_inputs(
                self.processor, [self.prompts.explain_text] * len(chunk), chunk, self.device, self.dtype
            )
            out = self.model.generate(**inputs, generation_config=gen)
            new = out[:, inputs["input_ids"].shape[1] :]
            texts += [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]
        return texts


def load_vlm_branch(
    cfg: VlmBranchConfig,
    bundle_dir: Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    role: str = "semantic",
) -> VlmSemanticBranch:
    """Model + processor (+ adapter) from ``cfg``, wrapped as a branch."""
    dtype = parse_dtype(cfg.dtype, dtype)
    processor = load_processor(cfg.model, bundle_dir, revision=cfg.revision)
    model = load_model(
        cfg.model, bundle_dir, device=device, dtype=dtype,
        attn_implementation=cfg.attn_implementation, revision=cfg.revision,
    )  # fmt: skip
    if cfg.adapter:
        adapter_dir = Path(cfg.adapter)
        if not adapter_dir.is_absolute() and bundle_dir is not None:
            adapter_dir = Path(bundle_dir) / adapter_dir
        model = attach_adapter(model, adapter_dir, merge=cfg.merge_adapter)
    if cfg.grouped_vision_attention and not use_grouped_vision_attention(model):
        log.info(
            "grouped_vision_attention: %s has no Qwen-VL vision tower; not applied", type(model).__name__
        )
    return VlmSemanticBranch(model, processor, cfg, name=role, device=device, dtype=dtype)


@register_family(FAMILY)
def build_vlm_branch(
    *, role: str, cfg: dict[str, Any], bundle_dir: Path | None, device: torch.device, dtype: torch.dtype
) -> VlmSemanticBranch:
    """Branch factory for ``family: semantic-vlm`` (see VlmBranchConfig for the keys)."""
    conf = from_dict(VlmBranchConfig, cfg, where=f"branches.{role} (semantic-vlm)")
    return load_vlm_branch(conf, bundle_dir, device=device, dtype=dtype, role=role)
