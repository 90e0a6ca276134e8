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


@pytest.fixture(scope="session")
def starter_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An aligngemini home for tests of the shipped starter bundle: the package cache that the set-up
    command filled is linked in read-only use, everything the tests write (the converted CLIP tower)
    goes to a temporary folder. Fails, naming the fix, when the set-up command has not been run."""
    import os

    real = Path(os.environ.get("ALIGNGEMINI_REAL_HOME") or Path.home() / ".cache" / "aligngemini")
    packages = real / "cache" / "pypi"
    if not packages.is_dir():
        pytest.fail(f"the starter bundle's packages are not in {packages}: run `bash scripts/setup.sh` "
                    "(or `aligngemini fetch starter`) once before the tests")  # fmt: skip
    home = tmp_path_factory.mktemp("starter-home")
    (home / "cache").mkdir()
    (home / "cache" / "pypi").symlink_to(packages, target_is_directory=True)
    return home


@pytest.fixture
def starter_env(starter_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point this test at ``starter_home``, offline: a missing package is an error, never a download."""
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(starter_home))
    monkeypatch.setenv("ALIGNGEMINI_OFFLINE", "1")
    return starter_home
