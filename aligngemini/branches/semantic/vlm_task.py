"""Trainer task ``semantic-vlm``: LoRA SFT of an image-text-to-text model to answer one word.

The model sees each image with the branch's detection prompt (its own chat template) and learns to
answer the label's word. By default the loss is the cross-entropy of the answer's *first token* at the
read-out position, over the whole vocabulary: exactly the SFT loss with labels -100 everywhere except
that token, and exactly the position the branch reads at inference, so training and scoring agree.
With ``data.rationale: true`` rows that carry a ``rationale`` train on "word\\nrationale" (all of the
assistant turn), still with the answer first.

LoRA (peft) goes on the language model's attention and MLP projections only; the vision tower and
projector stay frozen unless ``lora.modules_to_save`` names them.

Recipe sections read here (the trainer reads ``train:``)::

    task: semantic-vlm
    model: {model, answer_words, min_pixels, max_pixels, prompt, system_prompt, dtype,
            attn_implementation, gradient_checkpointing}
    lora: {r, alpha, dropout, target_modules, modules_to_save}
    data: {manifest, train_split, val_split, rationale}
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from aligngemini.branches.precision import default_dtype, parse_dtype
from aligngemini.branches.semantic.prompts import DETECT_PROMPT, EXPLAIN_PROMPT, PromptSet, build_prompt_set
from aligngemini.branches.semantic.vlm import (
    FAMILY,
    bound_image,
    load_model,
    load_processor,
    set_pixel_bounds,
    use_grouped_vision_attention,
)
from aligngemini.config import ConfigError, from_dict
from aligngemini.data.manifest import ManifestData, label_value, manifest_path, read_manifest, select_sources
from aligngemini.decode import load_image
from aligngemini.train.task import register_task

log = logging.getLogger(__name__)

ADAPTER_DIR = "vlm_adapter"
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NON_INPUT_KEYS = frozenset({"label", "target_ids", "labels", "paths"})


@dataclass
class VlmModelSection:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    answer_words: list[str] = field(default_factory=lambda: ["real", "fake"])
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    prompt: str = DETECT_PROMPT
    explain_prompt: str = EXPLAIN_PROMPT
    system_prompt: str | None = None
    dtype: str | None = None  # default: bfloat16 on a GPU, float32 on the CPU
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    grouped_vision_attention: bool = True  # Qwen-VL towers: one SDPA call per window length (same outputs)
    device: str | None = None  # where to load the base model; default cuda when available


@dataclass
class VlmLoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLM_PROJECTIONS))
    modules_to_save: list[str] = field(default_factory=list)  # e.g. ["merger"] to train the projector too


@dataclass
class VlmDataSection(ManifestData):
    rationale: bool = False  # train on the rows' ``rationale`` text after the answer word


# --------------------------------------------------------------------------------------------------
# Data


def read_rows(manifest: str | Path, sources: Sequence[str] | None = None,
              exclude_sources: Sequence[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Manifest rows as dicts (``data:REL`` names one under the data home), paths absolute, narrowed to the
    given source globs."""
    return [dataclasses.asdict(r) for r in select_sources(read_manifest(manifest), sources, exclude_sources)]


class VlmImageDataset(Dataset):
    """Images of one manifest split, decoded safely and bounded to the recipe's pixel range."""

    def __init__(self, rows: Sequence[dict[str, Any]], base: Path, min_pixels: int, max_pixels: int,
                 with_rationale: bool = False):  # fmt: skip
        self.items: list[tuple[Path, float, str | None]] = []
        for i, row in enumerate(rows):
            path = Path(str(row["path"])).expanduser()
            path = path if path.is_absolute() else base / path
            label = label_value(row.get("label"), f"{base} row {i} ({row.get('path')})")
            self.items.append((path, label, row.get("rationale") if with_rationale else None))
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label, rationale = self.items[index]
        image = bound_image(load_image(path).image, self.min_pixels, self.max_pixels)
        return {"image": image, "label": label, "rationale": rationale, "path": str(path)}


# --------------------------------------------------------------------------------------------------
# Model


def language_lora_pattern(model: torch.nn.Module, names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex matching ``names`` inside the language model only (vision towers
    use the same projection names, e.g. Qwen-VL's vision MLP and CLIP's q/k/v)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((n for n, m in model.named_modules() if m is decoder and n), None)
    if prefix is None:
        prefix = next(
            (n for n, _ in model.named_modules() if n.endswith(("language_model", "text_model"))), None
        )
    if prefix is None:
        raise ValueError(f"{type(model).__name__}: cannot find its language model to put LoRA on")
    pattern = rf"{re.escape(prefix)}\..*\.(?:{'|'.join(re.escape(n) for n in names)})"
    hits = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)
    ]
    if not hits:
        raise ValueError(f"{type(model).__name__}: no linear layers named {list(names)} under {prefix!r}")
    return pattern


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing (newer transformers renamed the method and its kwarg)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class VlmSftModel(torch.nn.Module):
    """The peft-wrapped VLM; ``forward(batch)`` returns ``{"loss", "logits"}`` where ``logits`` is the
    fake-minus-real answer logit per image (its sigmoid is the branch's P(fake))."""

    def __init__(self, peft_model: torch.nn.Module, prompts: PromptSet):
        super().__init__()
        self.model = peft_model
        self.real_id, self.fake_id = prompts.answer_token_ids

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(p for p in self.model.parameters()).device
        dtype = next(
            p for p in self.model.parameters() if p.is_floating_point() and not p.requires_grad
        ).dtype
        inputs = {
            k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
            for k, v in batch.items()
            if k not in _NON_INPUT_KEYS and isinstance(v, torch.Tensor)
        }
        labels = batch.get("labels")
        if labels is None:  # answer token only: one logit row per image, at the read-out position
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
            last = out.logits[:, -1, :].float()
            loss = F.cross_entropy(last, batch["target_ids"].to(device))
        else:  # answer and rationale: the model's own token loss over the assistant turn
            labels = labels.to(device)
            out = self.model(**inputs, use_cache=False, labels=labels)
            loss = out.loss
            n_target = (labels != -100).sum(dim=1)  # targets are the rows' last tokens (left padding)
            pos = labels.shape[1] - n_target - 1  # position whose logits predict the first answer token
            last = out.logits[torch.arange(labels.shape[0], device=device), pos].float()
        return {"loss": loss, "logits": last[:, self.fake_id] - last[:, self.real_id]}


# --------------------------------------------------------------------------------------------------
# Task


class VlmSftTask:
    """``task: semantic-vlm`` (see the module docstring for the recipe sections)."""

    def __init__(self, recipe: dict[str, Any]):
        self.recipe = recipe
        self.model_cfg = from_dict(VlmModelSection, recipe.get("model"), "recipe model (semantic-vlm)")
        self.lora_cfg = from_dict(VlmLoraSection, recipe.get("lora"), "recipe lora (semantic-vlm)")
        self.data_cfg = from_dict(VlmDataSection, recipe.get("data"), "recipe data (semantic-vlm)")
        self._processor: Any = None
        self._prompts: PromptSet | None = None

    # -- shared pieces -----------------------------------------------------------------------------
    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._processor = load_processor(self.model_cfg.model)
            set_pixel_bounds(self._processor, self.model_cfg.min_pixels, self.model_cfg.max_pixels)
        return self._processor

    @property
    def prompts(self) -> PromptSet:
        if self._prompts is None:
            c = self.model_cfg
            self._prompts = build_prompt_set(self.processor, answer_words=c.answer_words, prompt=c.prompt,
                                             explain_prompt=c.explain_prompt, system_prompt=c.system_prompt)  # fmt: skip
        return self._prompts

    def _device(self) -> torch.device:
        if self.model_cfg.device:
            return torch.device(self.model_cfg.device)
        if torch.cuda.is_available():  # the trainer's accelerator has set this process's GPU already
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # -- Task protocol -----------------------------------------------------------------------------
    def build_model(self) -> VlmSftModel:
        from peft import LoraConfig, get_peft_model

        device = self._device()
        dtype = parse_dtype(self.model_cfg.dtype, default_dtype(device))
        base = load_model(self.model_cfg.model, device=device, dtype=dtype,
                          attn_implementation=self.model_cfg.attn_implementation)  # fmt: skip
        base.config.use_cache = False
        if self.model_cfg.grouped_vision_attention and not use_grouped_vision_attention(base):
            log.info(
                "grouped_vision_attention: %s has no Qwen-VL vision tower; not applied", type(base).__name__
            )
        if self.model_cfg.gradient_checkpointing:
            enable_checkpointing(base)
        lc = self.lora_cfg
        config = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=language_lora_pattern(base, lc.target_modules),
            modules_to_save=list(lc.modules_to_save) or None,
            bias="none",
        )
        peft_model = get_peft_model(base, config)
        peft_model.train()
        return VlmSftModel(peft_model, self.prompts)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        if not self.data_cfg.manifest:
            raise ConfigError(
                "recipe data.manifest (semantic-vlm): set it to the pure-semantic set's manifest.jsonl"
            )
        manifest = manifest_path(self.data_cfg.manifest)
        rows = read_rows(manifest, self.data_cfg.sources, self.data_cfg.exclude_sources)
        c = self.model_cfg

        def split(name: str | list[str] | None) -> VlmImageDataset:
            chosen = [r for r in rows if self.data_cfg.in_split(str(r.get("split") or "train"), name)]
            return VlmImageDataset(
                chosen, manifest.parent, c.min_pixels, c.max_pixels, self.data_cfg.rationale
            )

        train = split(self.data_cfg.train_split)
        if len(train) == 0:
            raise ValueError(f"{manifest}: no rows with split {self.data_cfg.train_split!r}")
        val = split(self.data_cfg.val_split) if self.data_cfg.val_split else None
        return train, (val if val is not None and len(val) else None)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_vlm(self.processor, self.prompts, items)

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def export(self, model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
        """Save the LoRA adapter as ``out_dir/vlm_adapter`` (safetensors) and return the branch section."""
        inner = getattr(model, "module", model)  # unwrap DDP
        peft_model = inner.model if isinstance(inner, VlmSftModel) else inner
        target = Path(out_dir) / ADAPTER_DIR
        target.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(target), safe_serialization=True)
        c = self.model_cfg
        section: dict[str, Any] = {
            "family": FAMILY,
            "model": c.model,
            "adapter": ADAPTER_DIR,
            "answer_words": list(self.prompts.answer_words),
            "min_pixels": c.min_pixels,
            "max_pixels": c.max_pixels,
            "threshold": 0.5,
            "prompt": c.prompt,
            "explain_prompt": c.explain_prompt,
        }
        if c.system_prompt:
            section["system_prompt"] = c.system_prompt
        if c.attn_implementation:
            section["attn_implementation"] = c.attn_implementation
        section["grouped_vision_attention"] = c.grouped_vision_attention
        return section


def collate_vlm(processor: Any, prompts: PromptSet, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat-template batch, left padded: model inputs plus ``label`` [B], ``target_ids`` [B] (the answer's
    first token) and, when any item carries a rationale, ``labels`` [B, T] (-100 outside the answer)."""
    images: list[Image.Image] = [it["image"] for it in items]
    label = torch.tensor([float(it["label"]) for it in items], dtype=torch.float32)
    target_ids = torch.where(label > 0.5, prompts.fake_id, prompts.real_id).long()
    with_rationale = any(it.get("rationale") for it in items)
    if not with_rationale:
        texts = [prompts.detect_text] * len(items)
    else:
        conts = [prompts.continuation_for(it["label"] > 0.5, it.get("rationale")) for it in items]
        texts = [prompts.detect_text + c for c in conts]
    batch = processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
    out: dict[str, Any] = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    out["label"], out["target_ids"] = label, target_ids
    if with_rationale:
        tok = processor.tokenizer
        labels = torch.full_like(out["input_ids"], -100)
        n_prompt = len(tok(prompts.detect_text)["input_ids"])
        for i, cont in enumerate(conts):
            n_total = len(tok(prompts.detect_text + cont)["input_ids"])
            n = n_total - n_prompt
            labels[i, -n:] = out["input_ids"][i, -n:]
            if labels[i, -n] != target_ids[i]:
                raise ValueError(
                    f"the rationale target of {items[i].get('path')} does not start with the answer token "
                    f"(tokenizer merges the answer word with what follows); use answer-only training"
                )
        out["labels"] = labels
    return out


@register_task(FAMILY)
def build_vlm_task(recipe: dict[str, Any]) -> VlmSftTask:
    return VlmSftTask(recipe)
