"""A tiny Task for trainer tests: an MLP on synthetic features, importable in subprocesses.

Recipes select it with ``task: "_tiny_task:make_task"`` (the tests directory on ``PYTHONPATH``). Every
source of randomness a real task has is here on purpose, so an inexact resume shows up as different
weights: shuffled data, an augmentation drawing from torch, numpy and python ``random``, dropout, a
forward-time jitter drawing from numpy and python ``random``, and BatchNorm running statistics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from aligngemini.config import from_dict


@dataclass
class TinyConfig:
    n_train: int = 48
    n_val: int = 32
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.2
    augment: bool = True  # RNG-driven augmentation in __getitem__
    jitter: bool = True  # RNG-driven perturbation in forward (train mode only)
    batchnorm: bool = True
    own_loss: bool = False  # forward returns {"loss", "logits"} instead of logits
    data_seed: int = 1234


class TinyDataset(Dataset):
    """Two Gaussian classes in ``dim`` dimensions, labels alternating real (0) and fake (1)."""

    def __init__(self, n: int, dim: int, seed: int, augment: bool) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % 2
        centres = np.stack([-np.ones(dim), np.ones(dim)]) * 0.6
        self.x = (centres[self.labels] + rng.normal(size=(n, dim))).astype(np.float32)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(self.x[i].copy())
        if self.augment:
            x = x + 0.1 * torch.randn_like(x)  # torch
            x = x * float(np.random.uniform(0.9, 1.1))  # numpy
            if random.random() < 0.3:  # python
                x = x.flip(0)
        return {"x": x, "label": float(self.labels[i])}


class TinyModel(torch.nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Linear(cfg.dim, cfg.hidden)]
        if cfg.batchnorm:
            layers.append(torch.nn.BatchNorm1d(cfg.hidden))
        layers += [torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout)]
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(cfg.hidden, 1)
        self.frozen_scale = torch.nn.Parameter(torch.ones(()))  # not trainable: the task leaves it out
        self.cfg = cfg

    def forward(self, batch: dict[str, Any]) -> Any:
        h = self.body(batch["x"]) * self.frozen_scale
        if self.training and self.cfg.jitter:
            h = h * (1.0 + 0.05 * float(np.random.randn())) * (1.0 + 0.05 * random.random())
        logits = self.head(h).squeeze(-1)
        if self.cfg.own_loss:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
            return {"loss": loss, "logits": logits}
        return logits


class TinyTask:
    def __init__(self, recipe: dict[str, Any]) -> None:
        self.recipe = recipe
        self.cfg = from_dict(TinyConfig, recipe.get("tiny"), where="recipe tiny")

    def build_model(self) -> torch.nn.Module:
        return TinyModel(self.cfg)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        c = self.cfg
        train = TinyDataset(c.n_train, c.dim, c.data_seed, c.augment)
        val = TinyDataset(c.n_val, c.dim, c.data_seed + 1, augment=False) if c.n_val else None
        return train, val

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "x": torch.stack([it["x"] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.float32),
        }

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for n, p in model.named_parameters() if n != "frozen_scale"]

    def export(self, model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / "tiny.safetensors"))
        return {"family": "tiny", "weights": "tiny.safetensors"}


def make_task(recipe: dict[str, Any]) -> TinyTask:
    return TinyTask(recipe)
