"""Safe image loading: every listed format, orientation, modes, bounds, and per-file errors."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligngemini.decode import (
    ImageLoadError,
    decode_bytes,
    estimate_jpeg_quality,
    iter_image_paths,
    load_image,
)


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_each_format_decodes_to_rgb(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_encode(_photo(), fmt))
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (64, 48)
    assert loaded.facts.format == fmt
    assert loaded.facts.source == str(path)
    assert len(loaded.facts.sha256) == 64


def test_gif_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    loaded = decode_bytes(buf.getvalue(), "anim.gif")
    assert loaded.facts.n_frames == 2
    r, g, b = loaded.image.getpixel((5, 5))
    assert r > 200 and b < 50


@pytest.mark.parametrize("quality", [30, 60, 75, 90, 95])
def test_jpeg_quality_estimate(quality: int) -> None:
    data = _encode(_photo(), "JPEG", quality=quality)
    loaded = decode_bytes(data, "q.jpg")
    assert abs(loaded.facts.jpeg_quality - quality) <= 1
    assert estimate_jpeg_quality(Image.open(io.BytesIO(data))) == loaded.facts.jpeg_quality


def test_exif_orientation_applied() -> None:
    img = _photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    loaded = decode_bytes(_encode(img, "JPEG", exif=exif), "rot.jpg")
    assert loaded.image.size == (20, 40)
    assert (loaded.facts.width, loaded.facts.height) == (40, 20)  # facts keep the stored size


@pytest.mark.parametrize(
    "mode,value",
    [
        ("P", None),
        ("RGBA", (255, 0, 0, 0)),
        ("LA", (0, 255)),
        ("CMYK", (0, 0, 0, 0)),
        ("L", 128),
        ("I;16", 65535),
    ],
)
def test_modes_convert_consistently(mode: str, value) -> None:
    img = _photo(16, 16).convert("P") if mode == "P" else Image.new(mode, (16, 16), value)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    loaded = decode_bytes(_encode(img, fmt), f"m.{fmt.lower()}")
    assert loaded.image.mode == "RGB"
    assert loaded.facts.mode == mode
    px = loaded.image.getpixel((3, 3))
    if mode == "RGBA":  # fully transparent composites onto white
        assert px == (255, 255, 255)
    if mode == "CMYK":  # no ink is white
        assert px == (255, 255, 255)
    if mode == "I;16":  # 16-bit full scale maps to 8-bit full scale
        assert px == (255, 255, 255)
    if mode == "L":
        assert px == (128, 128, 128)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that *declares* w x h but carries one tiny IDAT: a bomb's header without the payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_before_decoding() -> None:
    # over twice Pillow's own limit: Pillow refuses on open, and we say it in our words with our limit
    with pytest.raises(
        ImageLoadError, match="30000x30000 = 900000000 decoded pixels exceeds the limit of 64000000"
    ):
        decode_bytes(_png_header_only(30000, 30000), "bomb.png")
    # under Pillow's limit, over ours: refused from the header, before any pixel is decoded
    with pytest.raises(
        ImageLoadError, match="9000x8000 = 72000000 decoded pixels exceeds the limit of 64000000"
    ):
        decode_bytes(_png_header_only(9000, 8000), "bomb.png")


def test_bomb_guard_holds_in_16_threads() -> None:
    """Decoding never touches Pillow's process-wide limit, so no interleaving of threads can switch it off:
    every bomb is refused in our words, every good image decodes, every corrupt one is reported."""
    good = _encode(_photo(), "JPEG")
    cases = [
        (good, None),
        (_encode(_photo(20, 20), "PNG"), None),
        (_png_header_only(30000, 30000), "900000000 decoded pixels exceeds the limit of 64000000"),
        (_png_header_only(9000, 8000), "72000000 decoded pixels exceeds the limit of 64000000"),
        (good[: len(good) // 2], "corrupt or truncated"),
        (b"not an image at all", "not a recognised image format"),
    ]
    limit_before = Image.MAX_IMAGE_PIXELS

    def decode(i: int) -> tuple[int, str | None]:
        data, _ = cases[i % len(cases)]
        try:
            decode_bytes(data, f"case{i}")
        except ImageLoadError as exc:
            return i, exc.reason
        return i, None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(decode, range(600)))
    for i, reason in results:
        expected = cases[i % len(cases)][1]
        if expected is None:
            assert reason is None, (i, reason)
        else:
            assert reason is not None and expected in reason, (i, reason)
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_pixel_limit_configurable() -> None:
    data = _encode(_photo(100, 100), "PNG")
    assert decode_bytes(data, "ok.png", max_pixels=10_000).image.size == (100, 100)
    with pytest.raises(ImageLoadError, match="exceeds the limit of 9999"):
        decode_bytes(data, "big.png", max_pixels=9_999)


def test_bad_inputs_name_the_file_and_reason(tmp_path: Path) -> None:
    good = _encode(_photo(), "JPEG")
    cases = {
        "truncated.jpg": (good[: len(good) // 2], "corrupt or truncated"),
        "text.jpg": (b"hello, I am not an image\n", "not a recognised image format"),
        "empty.png": (b"", "empty file"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.source == str(path)
        assert reason in info.value.reason
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="directory|regular file"):
        load_image(tmp_path)


def test_arrays_pil_and_bytes() -> None:
    arr = (np.random.default_rng(1).random((10, 12, 3))).astype(np.float32)
    assert load_image(arr).image.size == (12, 10)
    assert load_image((arr * 255).astype(np.uint8)[..., 0]).image.mode == "RGB"
    with pytest.raises(ImageLoadError, match="array must be"):
        load_image(np.zeros((2, 2, 7), np.uint8))
    pil = _photo().convert("RGBA")
    assert load_image(pil).image.mode == "RGB"
    assert load_image(_encode(_photo(), "PNG")).facts.format == "PNG"


def test_iter_image_paths_folders_globs_and_named_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    image = _encode(_photo(), "PNG")
    for rel in ("a/1.jpg", "a/b/2.PNG", "a/b/9e107d9d372bb6826bd81d3542a419d6", "c.webp"):
        (tmp_path / rel).write_bytes(image)
    (tmp_path / "a/b/notes.txt").write_text("a note")
    (tmp_path / "a/b/fake.jpg").write_text("not an image, whatever its name")
    skipped: list[tuple[str, str]] = []
    found = iter_image_paths([tmp_path / "a"], on_skip=lambda p, why: skipped.append((p.name, why)))
    # by content: the hash-named image is found, the text files are reported to on_skip with the reason
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/1.jpg", "a/b/2.PNG", "a/b/9e107d9d372bb6826bd81d3542a419d6"
    ]  # fmt: skip
    assert sorted(name for name, _ in skipped) == ["fake.jpg", "notes.txt"]
    assert all("not an image" in why for _, why in skipped)
    assert [p.name for p in iter_image_paths([str(tmp_path / "*.webp")])] == ["c.webp"]
    # a file named explicitly is always yielded so that it gets reported, whatever its content
    assert [p.name for p in iter_image_paths([tmp_path / "a/b/notes.txt"])] == ["notes.txt"]
