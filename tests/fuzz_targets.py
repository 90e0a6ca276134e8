"""Fuzz targets: one function per untrusted-input parser, taking raw bytes, returning normally for any input
that the parser refuses with its own error, and raising ``AssertionError`` (or anything else) on a bug.

``benchmarks/fuzz.py`` drives them with atheris (coverage-guided); ``tests/test_fuzz_regressions.py`` replays
every input that once found a bug (``tests/fuzz_corpus/TARGET/``), so a fixed bug stays fixed.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

from PIL import Image

# -- decode_bytes -------------------------------------------------------------------------------------------
DECODE_MAX_PIXELS = 4_000_000


def fuzz_decode(data: bytes) -> None:
    """Any bytes: a decoded RGB image within the pixel limit, or ImageLoadError; Pillow's global untouched."""
    from aligngemini.decode import ImageLoadError, decode_bytes

    before = Image.MAX_IMAGE_PIXELS
    try:
        loaded = decode_bytes(data, "fuzz", max_pixels=DECODE_MAX_PIXELS)
    except ImageLoadError as exc:
        assert exc.reason and exc.source == "fuzz"
    else:
        w, h = loaded.image.size
        assert loaded.image.mode == "RGB" and 0 < w * h <= DECODE_MAX_PIXELS
    assert before == Image.MAX_IMAGE_PIXELS


# -- bundle loading -----------------------------------------------------------------------------------------
_TRICKY_NAMES = [
    "config.json", "b/config.json", "w.safetensors", "b/w.safetensors", "../escape.json", "../../etc/x",
    "/abs/config.json", "b/../../up.txt", "b/./MODEL_CARD.md", "weights.pth", "b/sub/deep.safetensors",
    "C:\\win\\x", "b/\x00nul", "", ".", "b", "b/w.bin",
]  # fmt: skip
_CONFIG_TEMPLATES = [
    {"format": "aligngemini-bundle", "version": 1, "branches": {"pixel": {"family": "pixel-timm"}},
     "files": {"w.safetensors": "0" * 64}},
    {"format": "aligngemini-bundle", "version": "2", "branches": [], "files": []},
    {"format": "aligngemini-bundle", "version": 1, "branches": {"pixel": {}}, "files": {"../../etc/passwd": "x"}},
    [1, 2, 3],
    "just a string",
    {"format": "aligngemini-bundle", "version": None, "branches": {"x": 1}, "files": {"a": 1}},
]  # fmt: skip


def _pick(data: io.BytesIO, n: int) -> int:
    b = data.read(1)
    return b[0] % n if b else 0


def _chunk(data: io.BytesIO, limit: int) -> bytes:
    b = data.read(2)
    size = struct.unpack("<H", b.ljust(2, b"\0"))[0] % (limit + 1)
    return data.read(size)


def _member_config(data: io.BytesIO) -> bytes:
    template = _CONFIG_TEMPLATES[_pick(data, len(_CONFIG_TEMPLATES))]
    raw = json.dumps(template).encode()
    if _pick(data, 3) == 0:  # mutate the text itself
        cut = _pick(data, max(1, len(raw)))
        raw = raw[:cut] + _chunk(data, 64) + raw[cut + 1 :]
    return raw


def build_archive(data: bytes, folder: Path) -> Path:
    """An archive (tar, tar.gz or zip) or a bare config.json folder whose members and config come from ``data``:
    names from a pool of path-traversal and pickle names, files, folders, symlinks and hard links."""
    stream = io.BytesIO(data)
    kind = _pick(stream, 4)
    members = []
    for _ in range(_pick(stream, 6) + 1):
        name = _TRICKY_NAMES[_pick(stream, len(_TRICKY_NAMES))]
        mtype = _pick(stream, 4)  # 0/1 file, 2 symlink, 3 hard link
        content = _member_config(stream) if name.endswith("config.json") else _chunk(stream, 256)
        target = _TRICKY_NAMES[_pick(stream, len(_TRICKY_NAMES))] if mtype >= 2 else ""
        members.append((name, mtype, content, target))
    if kind == 3:  # a folder with a config.json
        root = folder / "bundle"
        root.mkdir()
        (root / "config.json").write_bytes(_member_config(stream) + stream.read(64))
        return root
    if kind == 2:
        path = folder / "bundle.zip"
        with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate member names are part of the test
            for name, _, content, _ in members:
                if name:
                    zf.writestr(name, content)
        return path
    path = folder / ("bundle.tar.gz" if kind == 1 else "bundle.tar")
    with tarfile.open(path, "w:gz" if kind == 1 else "w") as tf:
        for name, mtype, content, target in members:
            info = tarfile.TarInfo(name or "x")
            if mtype == 2:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            elif mtype == 3:
                info.type, info.linkname = tarfile.LNKTYPE, target
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def fuzz_bundle(data: bytes) -> None:
    """A bundle built from ``data``: loads, or fails with BundleError; never writes outside its cache folder."""
    from aligngemini.bundle import BundleError, load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        home = root / "deep" / "er" / "home"  # so that "../.." escapes still land where we look
        source = root / "given"
        source.mkdir()
        bundle_path = build_archive(data, source)
        saved = os.environ.get("ALIGNGEMINI_HOME")
        os.environ["ALIGNGEMINI_HOME"] = str(home)
        try:
            load_bundle(bundle_path)
        except BundleError as exc:
            assert str(exc)
        finally:
            if saved is None:
                os.environ.pop("ALIGNGEMINI_HOME", None)
            else:
                os.environ["ALIGNGEMINI_HOME"] = saved
        cache = home / "cache" / "bundles"
        for p in root.rglob("*"):
            if p.is_dir() and not p.is_symlink() or p.is_relative_to(source):
                continue
            # every file written must sit inside one unpacked bundle's own folder in the cache
            assert p.is_relative_to(cache) and len(p.relative_to(cache).parts) >= 2, f"wrote {p}"


# -- multipart parsing --------------------------------------------------------------------------------------
def fuzz_multipart(data: bytes) -> None:
    """Any body and content type: uploads within every limit, or an ApiError with a 4xx status."""
    from aligngemini.serve.limits import ApiError, Limits
    from aligngemini.serve.uploads import parse_multipart

    limits = Limits(max_file_bytes=512, max_request_bytes=4096, max_pixels=10_000, max_images=3)
    stream = io.BytesIO(data)
    boundary = _chunk(stream, 40) if _pick(stream, 4) == 0 else b"XyZ"
    ctype = b"multipart/form-data; boundary=" + boundary
    body = stream.read()
    try:
        uploads = parse_multipart(body, ctype.decode("latin-1"), limits, max_images=limits.max_images)
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert len(uploads) <= limits.max_images
    for up in uploads:
        assert len(up.data) <= limits.max_file_bytes
        assert "/" not in up.name and "\\" not in up.name and 0 < len(up.name) <= 255


# -- read_provenance -----------------------------------------------------------------------------------------
def fuzz_provenance(data: bytes) -> None:
    """Any bytes: a bounded, JSON-serialisable Provenance; never an exception, never an unsigned "signed"."""
    from aligngemini.provenance import Provenance, read_provenance
    from aligngemini.provenance.model import MAX_ITEMS, MAX_TEXT

    prov = read_provenance(data)
    assert isinstance(prov, Provenance)
    record = prov.to_dict()
    json.dumps(record, allow_nan=False)
    assert len(prov.evidence) <= MAX_ITEMS and len(prov.warnings) <= MAX_ITEMS
    assert all(isinstance(s, str) and len(s) <= MAX_TEXT for s in prov.evidence + prov.warnings)
    assert record["declared_ai"] in (True, False, None)
    assert not record["signed"] or (
        prov.c2pa is not None and prov.c2pa["validation_state"] in ("Valid", "Trusted")
    )


TARGETS = {
    "decode": fuzz_decode,
    "bundle": fuzz_bundle,
    "multipart": fuzz_multipart,
    "provenance": fuzz_provenance,
}


def seed_inputs(target: str) -> list[bytes]:
    """Valid and near-valid starting inputs, so that the fuzzer begins past the first byte checks."""
    if target == "decode":
        out = []
        img = Image.new("RGB", (24, 16), (200, 40, 10))
        for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            out.append(buf.getvalue())
        return out
    if target == "provenance":
        from provenance_files import (
            A1111,
            AI_TYPE,
            COMFY_PROMPT,
            c2pa_signed,
            jpeg,
            make_credentials,
            png,
            xmp_packet,
        )

        signed = c2pa_signed(jpeg(seed=1), make_credentials())[0]
        return [signed, png({"parameters": A1111}), png({"prompt": json.dumps(COMFY_PROMPT)}),
                jpeg(xmp=xmp_packet(AI_TYPE)), c2pa_signed(png(seed=2), make_credentials(), mime="image/png")[0]]  # fmt: skip
    if target == "multipart":
        part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n\x89PNG data\r\n--XyZ--\r\n")  # fmt: skip
        return [b"\x01" + part, b"\x00\x03\x00XyZ" + part]
    return [bytes([k, 2, 0, 0, 1, 0]) + bytes(range(40)) for k in range(4)]
