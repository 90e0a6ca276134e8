"""Where aligngemini keeps its cache and data: one place, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """Root of everything aligngemini writes: ``$ALIGNGEMINI_HOME`` or ``$XDG_CACHE_HOME/aligngemini``."""
    explicit = os.environ.get("ALIGNGEMINI_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "aligngemini"


def cache_dir(*parts: str) -> Path:
    """Downloaded and converted model files (``home/cache/...``); created on demand."""
    path = home_dir().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(*parts: str) -> Path:
    """Datasets built by the ``data`` commands (``home/data/...``); created on demand."""
    path = home_dir().joinpath("data", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
