"""PixelModel: a timm backbone, a linear head on its pooled feature, one fake-class logit.

Inputs are float images in [0, 1] ([B, 3, H, W]); the backbone's normalisation (mean/std) is applied
inside the model, so crops go in exactly as ``pixel / 255``.

Fine-tuning modes (``finetune`` in the model config):

- ``lora``: LoRA adapters (peft) on the linear layers whose last name is in ``lora.targets`` (paper:
  ``qkv, proj, fc1, fc2`` of a ViT; the patch embedding's conv ``proj`` is not a target); the backbone's
  own weights are frozen;
- ``full``: every backbone weight trains, except the first ``freeze_groups`` parameter groups in timm's
  coarse grouping (stem = group 0, then the blocks/stages) and any parameter under ``freeze_prefixes``;
  BatchNorm layers inside frozen parts keep their running statistics (they stay in eval mode);
- ``head``: only the linear head trains (a linear probe).

:meth:`PixelModel.export_state_dict` returns plain timm keys: LoRA deltas are merged into the base weights,
so a bundle needs neither peft nor the LoRA settings to load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from aligngemini.branches.pixel.backbones import build_backbone, create_backbone, normalization
from aligngemini.config import from_dict

FINETUNE_MODES = ("lora", "full", "head")
DEFAULT_LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 8.0  # scale = alpha / r
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # last component of nn.Linear module names
    exclude: tuple[str, ...] = ()  # regexes of full module names to leave alone

    def __post_init__(self) -> None:
        self.targets, self.exclude = tuple(self.targets), tuple(self.exclude)
        if int(self.r) < 1:
            raise ValueError(f"model.lora.r must be at least 1, got {self.r}")
        if not self.targets:
            raise ValueError("model.lora.targets must name at least one module, e.g. [qkv, proj, fc1, fc2]")


@dataclass
class ModelConfig:
    backbone: str = "vit_large_patch14_dinov2"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # see aligngemini.branches.pixel.backbones
    normalize: dict[str, list[float]] | None = None  # {mean: [...], std: [...]}; default from the weights
    finetune: str = "lora"  # lora | full | head
    lora: dict[str, Any] = field(default_factory=dict)  # LoraSettings fields
    freeze_groups: int = 0  # full: freeze timm's first N coarse parameter groups (0 = stem)
    freeze_prefixes: list[str] = field(default_factory=list)  # full: also freeze parameters under these names
    head_dropout: float = 0.0
    channels_last: bool = True  # NHWC memory format: 2-4x faster depthwise convs on CPU (oneDNN)
    input_filter: str = "none"  # none | npr (see neighbouring_pixel_residual)

    def __post_init__(self) -> None:
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"model.finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        check_input_filter(self.input_filter, "model.input_filter")
        self.backbone_kwargs = dict(self.backbone_kwargs or {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelConfig:
        return from_dict(cls, data, where="model")

    def lora_settings(self) -> LoraSettings:
        return from_dict(LoraSettings, self.lora, where="model.lora")


def lora_target_names(module: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the nn.Linear modules that get LoRA adapters."""
    excl = [re.compile(p) for p in settings.exclude]
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
        and name.rsplit(".", 1)[-1] in settings.targets
        and not any(p.search(name) for p in excl)
    ]


INPUT_FILTERS = ("none", "npr")


def check_input_filter(name: str, where: str) -> None:
    if name not in INPUT_FILTERS:
        raise ValueError(f"{where} must be one of {INPUT_FILTERS}, got {name!r}")


def neighbouring_pixel_residual(x: torch.Tensor) -> torch.Tensor:
    """Each pixel minus the top-left pixel of its 2x2 cell (NPR, Tan et al., CVPR 2024): what is left is how
    neighbours relate inside a cell, the trace a generator's x2 up-sampling layers leave, with the scene's
    content mostly cancelled. Odd trailing rows and columns are dropped by the down-sampling and re-padded."""
    h, w = x.shape[-2:]
    cells = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return x - cells[..., :h, :w]


class PixelModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        head_dropout: float = 0.0,
        channels_last: bool = True,
        input_filter: str = "none",
    ) -> None:
        super().__init__()
        check_input_filter(input_filter, "input_filter")
        self.input_filter = input_filter
        self.channels_last = channels_last
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.head_dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.head = nn.Linear(int(backbone.num_features), 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.lora_names: list[str] = []
        self._frozen_bn: list[nn.Module] = []

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: ModelConfig | Mapping[str, Any], *, load_weights: bool = True) -> PixelModel:
        """Build from a recipe's ``model`` section: backbone, weights, normalisation, fine-tuning mode."""
        cfg = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg)
        if load_weights:
            backbone = build_backbone(cfg.backbone, cfg.backbone_kwargs, cfg.weights)
        else:
            backbone = create_backbone(cfg.backbone, cfg.backbone_kwargs)
        mean, std = normalization(backbone, cfg.weights, cfg.normalize)
        model = cls(backbone, mean, std, cfg.head_dropout, cfg.channels_last, cfg.input_filter)
        model.configure_finetuning(cfg)
        return model

    def configure_finetuning(self, cfg: ModelConfig) -> None:
        if cfg.finetune == "lora":
            self.add_lora(cfg.lora_settings())
        elif cfg.finetune == "head":
            self.backbone.requires_grad_(False)
            self._frozen_bn = list(self.backbone.modules())
        else:
            self.freeze(cfg.freeze_groups, cfg.freeze_prefixes)

    def add_lora(self, settings: LoraSettings) -> list[str]:
        """Inject LoRA adapters into the backbone; freezes every backbone weight except the adapters."""
        from peft import LoraConfig, inject_adapter_in_model

        names = lora_target_names(self.backbone, settings)
        if not names:
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in self.backbone.named_modules() if isinstance(m, nn.Linear)}
            )
            raise ValueError(
                f"model.lora.targets {list(settings.targets)} match no nn.Linear in {type(self.backbone).__name__}; "
                f"its linear layers are named {linear[:12]}"
            )
        config = LoraConfig(
            r=int(settings.r),
            lora_alpha=float(settings.alpha),
            lora_dropout=float(settings.dropout),
            target_modules=names,
        )
        inject_adapter_in_model(config, self.backbone)
        for n, p in self.backbone.named_parameters():
            p.requires_grad_(".lora_" in n)
        self.lora_names = names
        return names

    def freeze(self, groups: int = 0, prefixes: Sequence[str] = ()) -> list[str]:
        """Freeze timm's first ``groups`` coarse parameter groups and names under ``prefixes``."""
        frozen: set[str] = set()
        if groups > 0:
            from timm.models._manipulate import group_parameters

            matcher = getattr(self.backbone, "group_matcher", None)
            if matcher is None:
                raise ValueError(
                    f"{type(self.backbone).__name__} has no group_matcher; use model.freeze_prefixes"
                )
            grouped = group_parameters(self.backbone, matcher(coarse=True))
            for gid in sorted(grouped)[:groups]:
                frozen.update(grouped[gid])
        for prefix in prefixes:
            frozen.update(
                n for n, _ in self.backbone.named_parameters() if n == prefix or n.startswith(prefix + ".")
            )
        for n, p in self.backbone.named_parameters():
            p.requires_grad_(n not in frozen)
        self._frozen_bn = [
            m
            for name, m in self.backbone.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(f"{name}.{k}" in frozen for k, _ in m.named_parameters(recurse=False))
        ]
        return sorted(frozen)

    # -- running ------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> PixelModel:
        super().train(mode)
        for m in self._frozen_bn:  # frozen BatchNorm layers keep their ImageNet statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = (pixel_values.float() - self.mean.float()) / self.std.float()
        if self.input_filter == "npr":
            x = neighbouring_pixel_residual(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        param = next(self.backbone.parameters())
        return self.backbone(x.to(param.dtype))

    def forward(self, batch: torch.Tensor | Mapping[str, Any]) -> torch.Tensor:
        """Fake-class logits [B] for images in [0, 1] (a tensor, or a batch dict with ``pixel_values``)."""
        pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
        feats = self.features(pixel_values)
        return self.head(self.head_dropout(feats).to(self.head.weight.dtype)).squeeze(-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- export ---------------------------------------------------------------------------------------

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """``backbone.*`` in plain timm keys (LoRA merged) and ``head.*``, detached CPU tensors."""
        from peft.tuners.lora import LoraLayer

        deltas: dict[str, torch.Tensor] = {}
        for name, m in self.backbone.named_modules():
            if isinstance(m, LoraLayer):
                delta = None
                for adapter in m.active_adapters:
                    if adapter in m.lora_A:
                        d = m.get_delta_weight(adapter)
                        delta = d if delta is None else delta + d
                if delta is not None and not m.merged:
                    deltas[f"{name}.weight"] = delta
        out: dict[str, torch.Tensor] = {}
        for key, value in self.backbone.state_dict().items():
            if ".lora_" in key:
                continue
            plain = key.replace(".base_layer.", ".")
            value = value.detach()
            if plain in deltas:
                value = value + deltas[plain].to(value.dtype)
            out[f"backbone.{plain}"] = value.cpu().contiguous()
        for key, value in self.head.state_dict().items():
            out[f"head.{key}"] = value.detach().cpu().contiguous()
        return out


def load_exported(
    backbone: str,
    backbone_kwargs: Mapping[str, Any] | None,
    state: Mapping[str, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    where: str = "weights",
    input_filter: str = "none",
) -> PixelModel:
    """A PixelModel from an exported state dict (plain timm backbone keys + head)."""
    model = PixelModel(create_backbone(backbone, backbone_kwargs), mean, std, input_filter=input_filter)
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{where}: does not fit backbone {backbone!r} {dict(backbone_kwargs or {})}: "
            f"missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    return model.eval()
