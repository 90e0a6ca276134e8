"""The pure-pixel builder: alignment operations, pairing, resumability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import PatternGenerator, ResizingGenerator, Source, write_sources
from PIL import Image

from aligngemini.data import transforms as T
from aligngemini.data.build.common import BuildError
from aligngemini.data.build.pixel import PRESCALE_METHODS, PixelBuildConfig, build_pixel_set
from aligngemini.data.manifest import read_manifest
from aligngemini.decode import estimate_jpeg_quality

NO_OPS = dict(jpeg_align_prob=0.0, pixel_blend_prob=0.0, freq_blend_prob=0.0, resize_prob=0.0)


def _sources(tmp_path: Path, sources: list[Source]) -> tuple[list, Path]:
    manifest = write_sources(tmp_path / "src", sources)
    return read_manifest(manifest), manifest.parent


def _pairs(out: Path) -> dict[str, dict[str, object]]:
    pairs: dict[str, dict[str, object]] = {}
    for row in read_manifest(out / "manifest.jsonl"):
        pairs.setdefault(str(row.group), {})[row.label] = row
    return pairs


def test_jpeg_alignment_matches_the_real_quality(tmp_path: Path) -> None:
    rows, base = _sources(
        tmp_path,
        [
            Source("real", "cam", "train", "JPEG", 83, (200, 150)),
            Source("real", "cam", "val", "JPEG", 64, (160, 128)),
        ],
    )
    cfg = PixelBuildConfig(**{**NO_OPS, "jpeg_align_prob": 1.0})
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    pairs = _pairs(tmp_path / "out")
    assert len(pairs) == 2
    qualities = set()
    for pair in pairs.values():
        real, fake = pair["real"], pair["fake"]
        assert real.format == fake.format == "JPEG"
        q_real = estimate_jpeg_quality(Image.open(tmp_path / "out" / real.path))
        q_fake = estimate_jpeg_quality(Image.open(tmp_path / "out" / fake.path))
        assert q_real == q_fake == real.extra["source_jpeg_quality"] == fake.extra["ops"]["jpeg_quality"]
        qualities.add(q_real)
        assert (real.width, real.height) == (fake.width, fake.height)
        assert real.split == fake.split and real.source == fake.source == "cam"
        assert fake.generator == "fake-vae" and real.generator is None
    assert qualities == {83, 64}
    assert {p["real"].split for p in pairs.values()} == {"train", "val"}


def test_without_jpeg_alignment_both_are_png_and_the_real_is_the_exact_crop(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", "JPEG", 90, (300, 200))])
    cfg = PixelBuildConfig(**NO_OPS, crop_size=128)
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    (pair,) = _pairs(tmp_path / "out").values()
    real, fake = pair["real"], pair["fake"]
    assert real.format == fake.format == "PNG"
    assert (real.width, real.height) == (fake.width, fake.height) == (128, 128)
    left, top, right, bottom = real.extra["crop_box"]
    assert left % 16 == 0 and top % 16 == 0  # the source JPEG's block grid is kept
    source = Image.open(base / rows[0].path).convert("RGB").crop((left, top, right, bottom))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / real.path)), np.asarray(source))


def test_png_sources_are_never_jpeg_compressed(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "png", "train", "PNG", None, (96, 96))])
    cfg = PixelBuildConfig(**{**NO_OPS, "jpeg_align_prob": 1.0})
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    (pair,) = _pairs(tmp_path / "out").values()
    assert pair["real"].format == pair["fake"].format == "PNG"
    assert "jpeg_quality" not in pair["fake"].extra["ops"]


def test_resize_alignment_gives_both_images_the_same_new_size(tmp_path: Path) -> None:
    rows, base = _sources(
        tmp_path, [Source("real", "cam", "train", "JPEG", 80, (160, 112)) for _ in range(4)]
    )
    cfg = PixelBuildConfig(
        **{**NO_OPS, "resize_prob": 1.0, "jpeg_align_prob": 1.0, "resize_scale": (0.5, 0.75)}
    )
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    for pair in _pairs(tmp_path / "out").values():
        real, fake = pair["real"], pair["fake"]
        op = fake.extra["ops"]["resize"]
        assert (real.width, real.height) == (fake.width, fake.height) == tuple(op["size"])
        assert real.width < 160 and real.format == fake.format == "PNG"  # resized after JPEG: lossless
        assert real.extra["ops"] == fake.extra["ops"]


def test_pixel_and_frequency_blend_pull_the_fake_to_the_real(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", "PNG", None, (96, 96))])
    cfg = PixelBuildConfig(**{**NO_OPS, "pixel_blend_prob": 1.0, "pixel_blend_alpha": (1.0, 1.0)})
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "a", cfg, source_base=base, progress=False)
    (pair,) = _pairs(tmp_path / "a").values()
    real = np.asarray(Image.open(tmp_path / "a" / pair["real"].path), np.int16)
    fake = np.asarray(Image.open(tmp_path / "a" / pair["fake"].path), np.int16)
    assert np.array_equal(real, fake) and pair["fake"].extra["ops"]["pixel_blend"] == 1.0

    cfg = PixelBuildConfig(
        **{**NO_OPS, "freq_blend_prob": 1.0, "freq_blend_alpha": (1.0, 1.0), "freq_blend_low": 0.5}
    )
    build_pixel_set(
        rows, [PatternGenerator(amplitude=8)], tmp_path / "b", cfg, source_base=base, progress=False
    )
    (pair,) = _pairs(tmp_path / "b").values()
    real = np.asarray(Image.open(tmp_path / "b" / pair["real"].path), np.float64)
    fake = np.asarray(Image.open(tmp_path / "b" / pair["fake"].path), np.float64)
    # The checkerboard lives at the highest frequency: the blend replaced it with the real's band.
    assert np.abs(fake - real).mean() < 1.0


def test_pairing_and_split_inheritance(tmp_path: Path) -> None:
    rows, base = _sources(
        tmp_path,
        [
            Source("real", "a", "train", size=(64, 64)),
            Source("real", "b", "val", size=(64, 64)),
            Source("fake", "ai", "train", size=(64, 64)),  # not a source for pairs
        ],
    )
    gens = [PatternGenerator("g1"), PatternGenerator("g2")]
    res = build_pixel_set(
        rows, gens, tmp_path / "all", PixelBuildConfig(**NO_OPS), source_base=base, progress=False
    )
    assert res.counts == {"g1": 2, "g2": 2}
    by_source = {(r.source, r.split) for r in res.rows}
    assert by_source == {("a", "train"), ("b", "val")}
    cfg = PixelBuildConfig(**NO_OPS, pairing="round-robin")
    res = build_pixel_set(
        rows,
        [PatternGenerator("g1"), PatternGenerator("g2")],
        tmp_path / "rr",
        cfg,
        source_base=base,
        progress=False,
    )
    assert res.counts == {"g1": 1, "g2": 1}


def test_resume_does_no_work_and_redoes_only_missing_pairs(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", "JPEG", 85, (80, 64)) for _ in range(5)])
    cfg = PixelBuildConfig(batch_size=2)
    gen = PatternGenerator()
    first = build_pixel_set(rows, [gen], tmp_path / "out", cfg, source_base=base, workers=3, progress=False)
    assert first.stats.written == 5 and gen.images == 5
    manifest_before = (tmp_path / "out" / "manifest.jsonl").read_text()

    gen2 = PatternGenerator()
    second = build_pixel_set(rows, [gen2], tmp_path / "out", cfg, source_base=base, progress=False)
    assert gen2.calls == 0 and second.stats.written == 0 and second.stats.done_before == 5
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == manifest_before

    victim = next(r for r in second.rows if r.label == "fake")
    (tmp_path / "out" / victim.path).unlink()
    gen3 = PatternGenerator()
    third = build_pixel_set(rows, [gen3], tmp_path / "out", cfg, source_base=base, progress=False)
    assert gen3.images == 1 and third.stats.written == 1
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == manifest_before  # same bytes, same rows
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert report["pairs_done_before"] == 4 and report["generator_calls"] == 1


def test_results_do_not_depend_on_workers_or_batching(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", "JPEG", 75, (96, 80)) for _ in range(6)])
    cfg_a = PixelBuildConfig(crop="random", crop_size=64, batch_size=1)
    cfg_b = PixelBuildConfig(crop="random", crop_size=64, batch_size=4)
    a = build_pixel_set(
        rows, [PatternGenerator()], tmp_path / "a", cfg_a, source_base=base, workers=1, progress=False
    )
    b = build_pixel_set(
        rows, [PatternGenerator()], tmp_path / "b", cfg_b, source_base=base, workers=4, progress=False
    )

    def key(rows: list) -> list:
        return [(Path(r.path).name, r.sha256, r.extra["ops"]) for r in rows]

    assert key(a.rows) == key(b.rows)


def test_changed_config_is_refused_unless_overwrite(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", size=(64, 64))])
    build_pixel_set(
        rows, [PatternGenerator()], tmp_path / "out", PixelBuildConfig(), source_base=base, progress=False
    )
    with pytest.raises(BuildError, match="different pixel config"):
        build_pixel_set(
            rows,
            [PatternGenerator()],
            tmp_path / "out",
            PixelBuildConfig(seed=1),
            source_base=base,
            progress=False,
        )
    res = build_pixel_set(
        rows,
        [PatternGenerator()],
        tmp_path / "out",
        PixelBuildConfig(seed=1),
        source_base=base,
        overwrite=True,
        progress=False,
    )
    assert res.stats.written == 1


def test_bad_inputs_fail_or_skip_with_reasons(tmp_path: Path) -> None:
    rows, base = _sources(
        tmp_path,
        [Source("real", "cam", "train", size=(64, 64)), Source("real", "cam", "train", size=(40, 40))],
    )
    (base / rows[0].path).write_bytes(b"not an image")
    res = build_pixel_set(
        rows,
        [PatternGenerator()],
        tmp_path / "out",
        PixelBuildConfig(min_size=32),
        source_base=base,
        progress=False,
    )
    assert res.stats.skipped == {"unreadable": 1} and res.stats.written == 1
    with pytest.raises(BuildError, match="keep the input size"):
        build_pixel_set(
            rows[1:],
            [ResizingGenerator()],
            tmp_path / "bad",
            PixelBuildConfig(min_size=32),
            source_base=base,
            progress=False,
        )
    with pytest.raises(ValueError, match="probability"):
        PixelBuildConfig(jpeg_align_prob=1.5)


def test_limit_takes_a_nested_spread_out_subset(tmp_path: Path) -> None:
    from aligngemini.data.build.common import subsample

    rows, base = _sources(tmp_path, [Source("real", f"s{i % 3}", "train", size=(64, 64)) for i in range(12)])
    small, large = subsample(rows, 3), subsample(rows, 6)
    assert len(small) == 3 and len(large) == 6 and {r.path for r in small} <= {r.path for r in large}
    assert len({r.source for r in large}) > 1
    gen = PatternGenerator()
    res = build_pixel_set(
        rows, [gen], tmp_path / "out", PixelBuildConfig(), source_base=base, limit=3, progress=False
    )
    assert res.stats.written == 3
    res = build_pixel_set(
        rows, [gen], tmp_path / "out", PixelBuildConfig(), source_base=base, limit=6, progress=False
    )
    assert res.stats.done_before == 3 and res.stats.written == 3 and gen.images == 6


def test_low_frequency_alignment_removes_a_colour_drift_and_keeps_the_fine_trace(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", "PNG", None, (96, 96))])

    class DriftingGenerator(PatternGenerator):
        def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
            out = super().reconstruct(images)  # checkerboard: the finest-scale trace
            return [Image.fromarray(np.clip(np.asarray(o, np.int16) + [25, -10, 0], 0, 255).astype(np.uint8))
                    for o in out]  # fmt: skip

    cfg = PixelBuildConfig(**NO_OPS, lowfreq_align_prob=1.0)
    build_pixel_set(
        rows, [DriftingGenerator(amplitude=6)], tmp_path / "out", cfg, source_base=base, progress=False
    )
    (pair,) = _pairs(tmp_path / "out").values()
    real = np.asarray(Image.open(tmp_path / "out" / pair["real"].path), np.float64)
    fake = np.asarray(Image.open(tmp_path / "out" / pair["fake"].path), np.float64)
    diff = fake - real
    assert np.abs(diff.mean(axis=(0, 1))).max() < 1.0  # the colour drift is gone
    assert diff.std() > 4.0  # the checkerboard is still there
    assert pair["fake"].extra["ops"]["lowfreq_align"] == 0.25
    stamp = json.loads((tmp_path / "out" / "build.json").read_text())["config"]
    assert stamp["lowfreq_align_prob"] == 1.0 and stamp["lowfreq_band"] == "square"
    # Off (the default), the build stamp is the one sets made before the option existed carry.
    build_pixel_set(
        rows, [PatternGenerator()], tmp_path / "off", PixelBuildConfig(), source_base=base, progress=False
    )
    assert "lowfreq_align_prob" not in json.loads((tmp_path / "off" / "build.json").read_text())["config"]


def test_several_crops_per_image_give_distinct_pairs_of_one_scene(tmp_path: Path) -> None:
    rows, base = _sources(tmp_path, [Source("real", "cam", "train", size=(160, 128)) for _ in range(2)])
    cfg = PixelBuildConfig(**NO_OPS, crop_size=64, crops_per_image=3)
    res = build_pixel_set(
        rows, [PatternGenerator("g")], tmp_path / "x3", cfg, source_base=base, progress=False
    )
    assert res.counts == {"g": 6}
    pairs = _pairs(tmp_path / "x3")
    assert len(pairs) == 6
    by_scene: dict[str, set[tuple[int, ...]]] = {}
    for pair in pairs.values():
        real, fake = pair["real"], pair["fake"]
        assert real.extra["crop_box"] == fake.extra["crop_box"] and real.split == "train"
        by_scene.setdefault(real.extra["scene"], set()).add(tuple(real.extra["crop_box"]))
    assert len(by_scene) == 2 and all(len(boxes) == 3 for boxes in by_scene.values())
    # the first crop keeps the id (and the centre box) a one-crop build gives it, so such a set resumes
    one = build_pixel_set(rows, [PatternGenerator("g")], tmp_path / "x1", PixelBuildConfig(**NO_OPS, crop_size=64),
                          source_base=base, progress=False)  # fmt: skip
    assert {str(r.group) for r in one.rows} < set(pairs)
    with pytest.raises(ValueError, match="crops_per_image"):
        PixelBuildConfig(crops_per_image=0)


def test_prescale_shrinks_the_whole_photo_before_the_crop_and_records_it(tmp_path: Path) -> None:
    rows, base = _sources(
        tmp_path, [Source("real", "cam", "train", "JPEG", 90, (400, 300)) for _ in range(6)]
    )
    cfg = PixelBuildConfig(**NO_OPS, crop_size=64, prescale_prob=0.5, prescale_scale=(0.25, 0.5))
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    shrunk = 0
    for pair in _pairs(tmp_path / "out").values():
        real, fake = pair["real"], pair["fake"]
        assert (real.width, real.height) == (fake.width, fake.height) == (64, 64)
        assert real.extra["source_size"] == [400, 300]  # the file's own size, as before
        left, top, right, bottom = real.extra["crop_box"]
        prescale = fake.extra["ops"].get("prescale")
        if prescale is None:
            assert left % 16 == 0 and top % 16 == 0  # the JPEG grid is kept where nothing shrank the photo
            continue
        shrunk += 1
        assert 0.25 <= prescale["scale"] <= 0.5 and prescale["method"] in PRESCALE_METHODS
        size = (round(400 * prescale["scale"]), round(300 * prescale["scale"]))
        assert right <= size[0] and bottom <= size[1]
        # the real is a crop of the shrunk photo, pixel for pixel
        photo = Image.open(base / real.extra["source_path"]).convert("RGB")
        small = T.resize(photo, size=size, method=prescale["method"]).crop((left, top, right, bottom))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / real.path)), np.asarray(small))
    assert 0 < shrunk < 6  # about half of the six photos
    stamp = json.loads((tmp_path / "out" / "build.json").read_text())["config"]
    assert stamp["prescale_prob"] == 0.5 and stamp["prescale_scale"] == [0.25, 0.5]
    assert "prescale_methods" not in stamp  # the default filters: stamped as before the option existed
    # off (the default) it is not stamped, so sets made before the option existed still resume
    off = PixelBuildConfig(**NO_OPS)
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "off", off, source_base=base, progress=False)
    assert "prescale_prob" not in json.loads((tmp_path / "off" / "build.json").read_text())["config"]
    with pytest.raises(ValueError, match="prescale_prob"):
        PixelBuildConfig(prescale_prob=1.5)


def test_prescale_methods_give_every_real_one_chosen_shrink(tmp_path: Path) -> None:
    """A real shrunk 2x by area, as esrgan:...:shrink2 halves every fake, so that the last shrink carries no label."""
    rows, base = _sources(
        tmp_path, [Source("real", "cam", "train", "PNG", None, (200, 160)) for _ in range(4)]
    )
    cfg = PixelBuildConfig(**NO_OPS, crop_size=64, prescale_prob=1.0, prescale_scale=(0.5, 0.5),
                           prescale_methods=("box",))  # fmt: skip
    build_pixel_set(rows, [PatternGenerator()], tmp_path / "out", cfg, source_base=base, progress=False)
    pairs = _pairs(tmp_path / "out").values()
    assert len(pairs) == 4
    for pair in pairs:
        real, fake = pair["real"], pair["fake"]
        assert fake.extra["ops"]["prescale"] == {"scale": 0.5, "method": "box"}
        photo = np.asarray(Image.open(base / real.extra["source_path"]).convert("RGB"), dtype=np.float64)
        halved = photo.reshape(80, 2, 100, 2, 3).mean(axis=(1, 3))  # a 2x box shrink is the 2x2 cell mean
        left, top, right, bottom = real.extra["crop_box"]
        got = np.asarray(Image.open(tmp_path / "out" / real.path), dtype=np.float64)
        assert np.abs(got - halved[top:bottom, left:right]).max() <= 1.0
    stamp = json.loads((tmp_path / "out" / "build.json").read_text())["config"]
    assert stamp["prescale_methods"] == ["box"]
    with pytest.raises(ValueError, match="prescale_methods"):
        PixelBuildConfig(prescale_methods=("nearest",))
