"""What the one trainer needs from a branch's recipe: a *task*.

The trainer (``aligngemini.train.trainer``) is generic: it owns accelerate, the optimizer, schedule,
checkpoints, resume, validation metrics and logging. Each branch family contributes a Task, registered
by name and selected by a recipe's ``task:`` key, that builds the model and data and exports the result
as the branch of a bundle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset


class Task(Protocol):
    recipe: dict[str, Any]

    def build_model(self) -> torch.nn.Module:
        """A module whose ``forward(batch)`` returns fake-class logits of shape [B] (or a dict with
        ``loss`` when the task computes its own, e.g. a VLM's token loss)."""

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """Train and validation datasets; items are whatever ``collate`` accepts and must carry ``label``."""

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Batch items; the returned dict has ``label`` (float tensor [B]) plus model inputs."""

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]: ...

    def export(self, model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
        """Write this branch's weights (safetensors) into ``out_dir``; return its bundle config section."""


TaskFactory = Callable[[dict[str, Any]], Task]
_TASKS: dict[str, TaskFactory] = {}
TASK_ALIASES = {"pixel": "pixel-timm"}  # recipes written before task names became the family names


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    def deco(factory: TaskFactory) -> TaskFactory:
        _TASKS[name] = factory
        return factory

    return deco


def build_task(recipe: dict[str, Any]) -> Task:
    """The Task named by ``recipe["task"]``: a registered name, or an import path ``"module:factory"``
    (a callable taking the recipe), so tasks outside this package need no registration."""
    from aligngemini.branches.base import FAMILY_MODULES

    name = recipe.get("task")
    name = TASK_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in _TASKS and name in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[name][1])
    if name not in _TASKS and isinstance(name, str) and ":" in name:
        return _factory_from_path(name)(recipe)
    if name not in _TASKS:
        raise ValueError(
            f"recipe task {name!r} is unknown; known tasks: {sorted(set(_TASKS) | set(FAMILY_MODULES))}"
        )
    return _TASKS[name](recipe)


def unwrap(model: torch.nn.Module, cls: type) -> Any:
    """The task's own model inside the wrappers training adds (DDP's ``module``, torch.compile's ``_orig_mod``)."""
    while not isinstance(model, cls):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a {cls.__name__} (possibly wrapped), got {type(model).__name__}")
        model = inner
    return model


def _factory_from_path(spec: str) -> TaskFactory:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"recipe task {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"recipe task {spec!r}: module {module_name!r} has no callable {attr!r}")
    return factory
