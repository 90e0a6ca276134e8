"""Shared fixtures: an isolated aligngemini home per test, and tiny bundles from the real branch families."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never write into the user's cache (the starter backbone cache is read through
    ``real_cache_home`` by the few tests that need it)."""
    real = Path.home() / ".cache" / "aligngemini"
    monkeypatch.setenv("ALIGNGEMINI_REAL_HOME", str(real))
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-branch tiny bundle (pixel-timm + semantic-clip), built once per session."""
    from tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny").dir


@pytest.fixture(scope="session")
def tiny_pixel_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with the pixel branch only."""
    from tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny-pixel", semantic=False).dir
