"""Pinned npm packages: fetched once with ``npm pack`` (or from ``$ALIGNGEMINI_NPM_DIR`` offline), checked
against the registry's sha512 integrity when given, unpacked safely into ``cache_dir("npm")``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from aligngemini.paths import cache_dir

Fetcher = Callable[
    [str, Path], Path
]  # (npm spec, empty folder) -> path of the package tarball it wrote there


class NpmFetchError(RuntimeError):
    """An npm package that cannot be fetched or unpacked; the message says how to provide it by hand."""


_NPM_SPEC = re.compile(
    r"^(?P<name>(@[a-z0-9][\w.~-]*/)?[a-z0-9][\w.~-]*)@(?P<version>\d+\.\d+\.\d+[\w.+-]*)$"
)


def _tarball_name(spec: str) -> str:
    """The file name ``npm pack`` gives a spec: ``@scope/name@1.0.0`` -> ``scope-name-1.0.0.tgz``."""
    m = _NPM_SPEC.match(spec)
    assert m is not None
    return f"{m['name'].lstrip('@').replace('/', '-')}-{m['version']}.tgz"


def npm_pack(spec: str, dest: Path) -> Path:
    """The default fetcher: a tarball from ``$ALIGNGEMINI_NPM_DIR`` when it holds one, else ``npm pack``."""
    local_dir = os.environ.get("ALIGNGEMINI_NPM_DIR")
    if local_dir:
        candidate = Path(local_dir).expanduser() / _tarball_name(spec)
        if candidate.is_file():
            return candidate
    npm = shutil.which("npm")
    if npm is None:
        raise NpmFetchError(f"{spec}: the npm client is not installed (needed once to fetch the package)")
    cmd = [npm, "pack", spec, "--pack-destination", str(dest), "--silent"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NpmFetchError(f"{spec}: npm pack timed out") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise NpmFetchError(f"{spec}: npm pack failed: {' / '.join(tail)}")
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise NpmFetchError(f"{spec}: npm pack wrote {len(tarballs)} tarballs to {dest}, expected one")
    return tarballs[0]


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _safe_extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise NpmFetchError(f"{tarball}: unsafe member path {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise NpmFetchError(f"{tarball}: member {member.name!r} is neither a file nor a folder")
        tar.extractall(dest, filter="data")


def fetch_npm(
    spec: str,
    *,
    integrity: str | None = None,
    fetcher: Fetcher | None = None,
    cache: Path | None = None,
) -> Path:
    """The unpacked folder of a pinned npm package (``NAME@X.Y.Z``), fetched once into ``cache_dir("npm")``.

    ``integrity`` (``sha512-<base64>``, as the registry's ``dist.integrity``) is checked when given;
    ``fetcher`` replaces ``npm pack`` (tests, mirrors)."""
    m = _NPM_SPEC.match(spec)
    if m is None:
        raise NpmFetchError(f"{spec!r}: pin an exact version, e.g. @upscalerjs/esrgan-medium@1.0.0")
    root = cache or cache_dir("npm")
    target = root / re.sub(r"[^\w.@-]", "_", spec.lstrip("@").replace("/", "__"))
    record = target / "FETCHED.json"
    if record.is_file():
        package = target / "package"
        if package.is_dir():
            return package
    fetcher = fetcher or npm_pack
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "dl").mkdir()
        try:
            tarball = fetcher(spec, tmp / "dl")
        except NpmFetchError as exc:
            raise NpmFetchError(
                f"{exc}\nWithout network, run `npm pack {spec}` where the npm registry is reachable, put the "
                f"{_tarball_name(spec)} it writes into a folder and set ALIGNGEMINI_NPM_DIR to that folder."
            ) from exc
        got = _integrity(tarball)
        if integrity is not None and got != integrity:
            raise NpmFetchError(
                f"{tarball}: integrity {got[:30]}... does not match the pinned {integrity[:30]}..."
            )
        unpacked = tmp / "unpacked"
        _safe_extract(tarball, unpacked)
        if not (unpacked / "package").is_dir():
            raise NpmFetchError(f"{tarball}: no package/ folder inside; not an npm package tarball")
        (unpacked / "FETCHED.json").write_text(
            json.dumps({"spec": spec, "integrity": got, "tarball": tarball.name}, indent=1)
        )
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target / "package"
