"""The branch protocol and the family registry.

A branch turns decoded images into P(fake). ``prepare`` runs per image (CPU, may be in a worker),
``score`` runs per batch on the model's device. A *family* is a factory registered by name
(``pixel-timm``, ``semantic-clip``, ``semantic-vlm``...) that builds a branch from its section of a
bundle's ``config.json`` and the bundle directory holding its weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from aligngemini.config import COMPILE_MODES
from aligngemini.decode import LoadedImage


@runtime_checkable
class Branch(Protocol):
    name: str  # "pixel" or "semantic": the role it plays in fusion
    threshold: float  # p_fake at or above which this branch calls an image fake

    @property
    def arithmetic(self) -> str:
        """Where and in what the branch computes, e.g. "cpu:bfloat16" (``precision.arithmetic``): scores
        computed in other arithmetic differ, and the score cache keeps them apart."""

    def prepare(self, image: LoadedImage) -> Any:
        """Per-image model input (e.g. a [V, C, H, W] tensor of crops). Must not touch the GPU."""

    def score(self, prepared: Sequence[Any]) -> np.ndarray:
        """P(fake) for each prepared image, float64 in [0, 1], shape [len(prepared)]."""

    @property
    def can_explain(self) -> bool: ...

    def explain(self, image: LoadedImage) -> str:
        """A short rationale in words; raises NotImplementedError where the branch cannot explain."""


def compile_branch(branch: Branch, mode: str) -> bool:
    """``torch.compile`` the branch's network where its family offers it (a ``compile(mode)`` method);
    False, and the branch stays eager, where it does not."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, not {mode!r}")
    hook = getattr(branch, "compile", None)
    if hook is None:
        return False
    hook(mode)
    return True


BranchFactory = Callable[..., Branch]
_FAMILIES: dict[str, BranchFactory] = {}
# Every family by name: the module that builds its branch for inference and the module of the training task
# that makes one (``aligngemini train``'s recipes say ``task: <family>``). Both register themselves on import,
# which happens only when the family is used (they import heavy libraries).
FAMILY_MODULES: dict[str, tuple[str, str]] = {
    "pixel-timm": ("aligngemini.branches.pixel.branch", "aligngemini.branches.pixel.task"),
    "semantic-clip": ("aligngemini.branches.semantic.clip", "aligngemini.branches.semantic.clip_task"),
    "semantic-vlm": ("aligngemini.branches.semantic.vlm", "aligngemini.branches.semantic.vlm_task"),
}


def register_family(name: str) -> Callable[[BranchFactory], BranchFactory]:
    def deco(factory: BranchFactory) -> BranchFactory:
        _FAMILIES[name] = factory
        return factory

    return deco


def available_families() -> list[str]:
    return sorted(set(_FAMILIES) | set(FAMILY_MODULES))


def build_branch(
    role: str,
    cfg: dict[str, Any],
    bundle_dir: Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Branch:
    """Build the branch playing ``role`` from its config section (``family`` names the factory)."""
    family = cfg.get("family")
    if not family:
        raise ValueError(f"branch {role!r}: config has no 'family'; known: {available_families()}")
    if family not in _FAMILIES and family in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[family][0])
    if family not in _FAMILIES:
        raise ValueError(f"branch {role!r}: unknown family {family!r}; known: {available_families()}")
    return _FAMILIES[family](role=role, cfg=cfg, bundle_dir=bundle_dir, device=device, dtype=dtype)
