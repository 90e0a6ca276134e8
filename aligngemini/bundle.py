"""A detector on disk: a folder (or one .zip/.tar.gz of it) holding

- ``config.json``: branches (family, model sources, preprocessing, thresholds), fusion, and the sha256 of
  every weight file under ``files``;
- weights as ``.safetensors`` (never pickles);
- ``MODEL_CARD.md``: training data, metrics and the commands that produced them.

Checksums are verified on every load; a mismatch names the file and stops.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligngemini.paths import cache_dir
from aligngemini.resolve import parse_source, resolve, sha256_file

FORMAT = "aligngemini-bundle"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
CARD_NAME = "MODEL_CARD.md"
BUNDLES_ROOT = Path(__file__).parent / "bundles"
WEIGHT_SUFFIXES = (".safetensors",)
MAX_UNPACKED_BYTES = 64 * 1024**3  # an archive declaring more is refused before anything is written
MAX_ARCHIVE_MEMBERS = 10_000


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong."""


@dataclass
class Bundle:
    dir: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.dir.name)

    @property
    def card(self) -> str:
        path = self.dir / CARD_NAME
        return path.read_text(encoding="utf-8") if path.exists() else ""

    @property
    def bundle_id(self) -> str:
        """Name plus a digest of the config (which holds the weights' checksums): a cache key."""
        blob = json.dumps(self.config, sort_keys=True).encode()
        return f"{self.name}@{hashlib.sha256(blob).hexdigest()[:12]}"

    def thresholds(self) -> dict[str, float]:
        return {
            role: float(sec.get("threshold", 0.5)) for role, sec in self.config.get("branches", {}).items()
        }

    def copy_with(
        self, out_dir: str | Path, updates: Mapping[str, Any], *, overwrite: bool = False
    ) -> Bundle:
        """A copy of this bundle in ``out_dir`` with ``updates`` deep-merged into its config."""
        out = Path(out_dir)
        if out.resolve() == self.dir.resolve():
            raise BundleError(f"{out}: refusing to write a bundle copy over its source")
        _prepare_out(out, overwrite)
        shutil.copytree(self.dir, out, dirs_exist_ok=True)
        config = _deep_merge(copy.deepcopy(self.config), updates)
        _write_json(out / CONFIG_NAME, config)
        return load_bundle(out)


def registered_bundles() -> dict[str, Path]:
    """Bundles shipped inside the package, by name (``starter``)."""
    if not BUNDLES_ROOT.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLES_ROOT.iterdir()) if (p / CONFIG_NAME).is_file()}


def _deep_merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BundleError(f"{out}: folder exists and is not empty; choose another or pass overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _check_members(archive: Path, sizes: list[int]) -> None:
    if len(sizes) > MAX_ARCHIVE_MEMBERS:
        raise BundleError(f"{archive}: {len(sizes)} members, over the limit of {MAX_ARCHIVE_MEMBERS}")
    if sum(sizes) > MAX_UNPACKED_BYTES:
        raise BundleError(f"{archive}: unpacks to {sum(sizes)} bytes, over the limit of {MAX_UNPACKED_BYTES}")


def _extract(archive: Path, staging: Path) -> None:
    """Unpack into ``staging``, refusing members that would land outside it or are not plain files or folders
    (links), and archives that declare more bytes or members than the limits."""
    root = staging.resolve()
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_members(archive, [i.file_size for i in infos])
            for info in infos:
                if not (root / info.filename).resolve().is_relative_to(root):
                    raise BundleError(f"{archive}: member {info.filename!r} escapes the bundle folder")
            zf.extractall(staging)
    else:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            _check_members(archive, [m.size for m in members])
            for m in members:  # a bundle is files and folders: links (and link loops) are never needed
                if not (m.isfile() or m.isdir()):
                    raise BundleError(f"{archive}: member {m.name!r} is not a plain file or folder")
            tf.extractall(staging, members=members, filter="data")


def _unpack_archive(archive: Path) -> Path:
    digest = sha256_file(archive)
    dest = cache_dir("bundles", digest[:16])
    if (dest / CONFIG_NAME).exists():
        return dest
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            _extract(archive, staging)
        except BundleError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as exc:
            # tarfile's data filter refusals (links, absolute or escaping paths) are TarErrors too
            raise BundleError(f"{archive}: cannot unpack the archive: {exc}") from None
        inner = list(staging.iterdir())
        top = inner[0] if len(inner) == 1 and inner[0].is_dir() else staging
        if not (top / CONFIG_NAME).is_file():
            raise BundleError(f"{archive}: no {CONFIG_NAME} at the archive's top level")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(top, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def locate_bundle(src: str | os.PathLike) -> Path:
    """Folder of the bundle named by ``src``: a registered name, a folder, an archive, or a hub id."""
    text = str(src)
    registered = registered_bundles()
    if text in registered:
        return registered[text]
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.name == CONFIG_NAME:
            return path.parent
        if path.suffix == ".zip" or path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _unpack_archive(path)
        raise BundleError(f"{path}: not a bundle folder or archive (.zip, .tar.gz)")
    try:
        parse_source(text)
    except Exception:  # noqa: BLE001
        raise BundleError(
            f"{text!r}: no such bundle; registered: {sorted(registered) or 'none'}; "
            "otherwise pass a bundle folder, a .zip/.tar.gz of one, or a hub id"
        ) from None
    return resolve(text)


def load_bundle(src: str | os.PathLike, *, verify: bool = True) -> Bundle:
    folder = locate_bundle(src)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise BundleError(f"{folder}: no {CONFIG_NAME}; is this a bundle folder?")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{cfg_path}: invalid JSON: {exc}") from None
    except OSError as exc:
        raise BundleError(f"{cfg_path}: cannot read: {exc}") from None
    _check_config(config, cfg_path)
    bundle = Bundle(folder, config)
    if verify:
        verify_bundle(bundle)
    return bundle


def _check_config(config: Any, cfg_path: Path) -> None:
    """The config's shape, before anything reads it: a clear error instead of a crash deep in a loader."""
    if not isinstance(config, dict):
        raise BundleError(f"{cfg_path}: the config must be a JSON object, not {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise BundleError(f"{cfg_path}: not an aligngemini bundle (format is {config.get('format')!r})")
    version = config.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{cfg_path}: version must be an integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{cfg_path}: bundle version {version} is newer than this aligngemini reads")
    branches = config.get("branches")
    if not branches:
        raise BundleError(f"{cfg_path}: no branches configured")
    if not isinstance(branches, dict) or not all(isinstance(v, dict) for v in branches.values()):
        raise BundleError(f"{cfg_path}: branches must map each role to an object")
    files = config.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise BundleError(f"{cfg_path}: files must map each file name to its sha256 (strings)")


def verify_bundle(bundle: Bundle) -> None:
    """Check every recorded file's sha256, and that no weight file goes unrecorded."""
    files: dict[str, str] = bundle.config.get("files", {})
    for rel, expected in files.items():
        path = _inside(bundle.dir, rel)
        if not path.is_file():
            raise BundleError(f"{path}: listed in {CONFIG_NAME} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{path}: sha256 mismatch (config says {expected[:16]}..., file is {actual[:16]}...); "
                "the file was changed or corrupted: restore it or re-export the bundle"
            )
    for path in bundle.dir.rglob("*"):
        if (
            path.is_file()
            and path.suffix in WEIGHT_SUFFIXES
            and str(path.relative_to(bundle.dir)) not in files
        ):
            raise BundleError(f"{path}: a weight file with no checksum in {CONFIG_NAME}")
        if path.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"):
            raise BundleError(f"{path}: pickle-format weights are refused; convert them to .safetensors")


def _inside(folder: Path, rel: str) -> Path:
    try:
        path = (folder / rel).resolve()
    except (ValueError, OSError) as exc:  # an embedded NUL, a symlink loop
        raise BundleError(f"{rel!r}: not a usable file path inside the bundle: {exc}") from None
    if not path.is_relative_to(folder.resolve()):
        raise BundleError(f"{rel!r}: a bundle file path must stay inside the bundle folder")
    return path


def save_bundle(
    out_dir: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    files: Mapping[str, str | os.PathLike] | None = None,
    card: str = "",
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle: ``files`` maps a name inside the bundle to a file to copy there (weights, adapters).
    Files already in ``out_dir`` (written by a task's export) are kept. Checksums are recomputed."""
    out = Path(out_dir)
    if files:
        _prepare_out(out, overwrite)
    else:
        out.mkdir(parents=True, exist_ok=True)
        if (out / CONFIG_NAME).exists() and not overwrite:
            raise BundleError(f"{out}: already holds a bundle; pass overwrite to replace it")
    for rel, src in (files or {}).items():
        dst = _inside(out, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    cfg = copy.deepcopy(dict(config))
    cfg["format"] = FORMAT
    cfg["version"] = FORMAT_VERSION
    cfg.setdefault("fusion", {"rule": "or", "uncertain_band": None})
    cfg["files"] = {
        str(p.relative_to(out)): sha256_file(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    }
    _write_json(out / CONFIG_NAME, cfg)
    if card:
        (out / CARD_NAME).write_text(card, encoding="utf-8")
    return load_bundle(out)


def archive_bundle(bundle: Bundle, out_file: str | os.PathLike) -> Path:
    """One ``.tar.gz`` of the bundle folder, for shipping."""
    out = Path(out_file)
    with tarfile.open(out, "w:gz") as tf:
        tf.add(bundle.dir, arcname=bundle.name)
    return out
