"""benchmarks/energy_matched_pairs.py: fakes whose fine detail matches their photo's, in their pair's format."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from PIL import Image, ImageFilter

from aligngemini.data import transforms as T
from aligngemini.data.manifest import ManifestRow, read_manifest, write_manifest

em = load_benchmark("energy_matched_pairs")
EDGES = (0.25, 0.5, 0.75, 1.0, float("inf"))


def _texture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_a_soft_fake_gets_the_photo_s_fine_energy_and_keeps_its_coarse_scales() -> None:
    real = _texture(0)
    soft = real.filter(ImageFilter.GaussianBlur(1.0))
    band = (0.5, 0.75)
    assert T.high_frequency_energy(soft, band) < 0.2 * T.high_frequency_energy(real, band)
    matched = em.match_band_energy(real, soft, (0.25, 0.5, 0.75), max_gain=100.0)
    ratio = T.high_frequency_energy(matched, band) / T.high_frequency_energy(real, band)
    assert 0.8 < ratio < 1.25  # matched in grey energy; 8-bit rounding and clipping move it a little
    below = (0.0, 0.2)  # outside every ring: untouched up to rounding
    assert abs(T.high_frequency_energy(matched, below) / T.high_frequency_energy(soft, below) - 1) < 0.01
    capped = em.match_band_energy(real, soft, (0.5, 0.75), max_gain=1.5)
    gain = T.high_frequency_energy(capped, band) / T.high_frequency_energy(soft, band)
    assert 1.5**2 * 0.9 < gain < 1.5**2 * 1.1  # the gain stops at max_gain (energy: its square)
    with pytest.raises(ValueError, match="max_gain"):
        em.match_band_energy(real, soft, EDGES, max_gain=0.5)
    with pytest.raises(ValueError, match="edges"):
        em.match_band_energy(real, soft, (0.5, 0.25))
    with pytest.raises(ValueError, match="one size"):
        em.match_band_energy(real, soft.crop((0, 0, 32, 32)), EDGES)


def _pair(root, group: str, generator: str, jpeg: bool) -> list[ManifestRow]:
    real = _texture(len(group) + ord(group[0]))
    fake = real.filter(ImageFilter.GaussianBlur(1.2))
    ext, fmt = ("jpg", "JPEG") if jpeg else ("png", "PNG")
    rows = []
    for label, img in (("real", real), ("fake", fake)):
        path = root / label / f"{group}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if jpeg:
            img.save(path, quality=90, subsampling=0)
        else:
            img.save(path)
        ops = {"jpeg_quality": 90} if jpeg else {}
        rows.append(ManifestRow(path=str(path), label=label, generator=generator if label == "fake" else None,
                                source="s", format=fmt, group=group, extra={"ops": ops}))  # fmt: skip
    return rows


def test_the_set_keeps_each_pair_s_photo_and_format_and_only_the_chosen_generator(tmp_path) -> None:
    src = tmp_path / "src"
    rows = _pair(src, "a", "esrgan:medium:x2", jpeg=True) + _pair(src, "b", "esrgan:medium:x2", jpeg=False)
    rows += _pair(src, "c", "taesd:taef2", jpeg=False)
    write_manifest(rows, src / "manifest.jsonl")
    out = tmp_path / "out"
    assert em.main(["--src", str(src / "manifest.jsonl"), "--generator", "esrgan*", "--out", str(out)]) == 0
    new = read_manifest(out / "manifest.jsonl")
    assert [(r.group, r.label) for r in new] == [("a", "real"), ("a", "fake"), ("b", "real"), ("b", "fake")]
    by = {(r.group, r.label): r for r in new}
    assert by[("a", "real")].path == str(src / "real" / "a.jpg")  # the photo is the source set's own file
    jpeg_fake = Image.open(by[("a", "fake")].path)
    assert jpeg_fake.format == "JPEG" and T.jpeg_subsampling(jpeg_fake) == 0
    assert Image.open(by[("b", "fake")].path).format == "PNG"
    assert by[("b", "fake")].generator == "esrgan:medium:x2+match"
    assert by[("b", "fake")].extra["ops"]["band_energy_match"] == [0.25, 0.5, 0.75, 1.0]
    real_b, old_b = Image.open(src / "real" / "b.png"), Image.open(src / "fake" / "b.png")
    band = (0.5, 0.75)
    before = T.high_frequency_energy(old_b, band) / T.high_frequency_energy(real_b, band)
    after = T.high_frequency_energy(Image.open(by[("b", "fake")].path), band) / T.high_frequency_energy(
        real_b, band
    )
    assert before < 0.3 and abs(after - 1) < abs(before - 1)
    with pytest.raises(SystemExit, match="exists"):  # nothing is overwritten
        em.main(["--src", str(src / "manifest.jsonl"), "--generator", "esrgan*", "--out", str(out)])
    with pytest.raises(SystemExit, match="no pair"):
        em.main(["--src", str(src / "manifest.jsonl"), "--generator", "vae*", "--out", str(tmp_path / "o2")])
