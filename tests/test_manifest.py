"""Manifest rows, folder-layout readers, dedup and the JSONL round trip, on tiny trees built here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligngemini.data.manifest import (
    ManifestRow,
    dedup,
    describe_image,
    read_manifest,
    scan_folder,
    write_manifest,
)


def _img(path: Path, size=(24, 16), seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _by_name(rows):
    return {Path(r.path).name: r for r in rows}


def test_real_fake_layout(tmp_path):
    _img(tmp_path / "real" / "a.png", seed=1)
    _img(tmp_path / "fake" / "b.jpg", size=(40, 30), seed=2)
    rows = _by_name(scan_folder(tmp_path))
    assert set(rows) == {"a.png", "b.jpg"}
    assert rows["a.png"].label == "real" and rows["a.png"].generator is None
    assert rows["b.jpg"].label == "fake" and rows["b.jpg"].generator is None
    assert (rows["b.jpg"].width, rows["b.jpg"].height, rows["b.jpg"].format) == (40, 30, "JPEG")
    assert rows["a.png"].sha256 == hashlib.sha256((tmp_path / "real" / "a.png").read_bytes()).hexdigest()
    assert rows["a.png"].source == f"folder:{tmp_path.name}"
    assert Path(rows["a.png"].path).is_absolute()


def test_numbered_layout_with_generator_prefix(tmp_path):
    # CNNSpot/ForenSynths style: generator/category/0_real|1_fake
    _img(tmp_path / "progan" / "car" / "0_real" / "r.png", seed=1)
    _img(tmp_path / "progan" / "car" / "1_fake" / "f.png", seed=2)
    rows = _by_name(scan_folder(tmp_path))
    assert rows["r.png"].label == "real" and rows["r.png"].generator is None
    assert rows["f.png"].label == "fake" and rows["f.png"].generator == "progan/car"
    assert rows["r.png"].extra["subset"] == rows["f.png"].extra["subset"] == "progan/car"


def test_genimage_layout_splits_and_generator(tmp_path):
    _img(tmp_path / "sdv4" / "val" / "ai" / "x.png", seed=1)
    _img(tmp_path / "sdv4" / "val" / "nature" / "y.png", seed=2)
    _img(tmp_path / "midjourney" / "train" / "ai" / "z.png", seed=3)
    rows = _by_name(scan_folder(tmp_path))
    assert (
        rows["x.png"].generator == "sdv4" and rows["x.png"].split == "val" and rows["x.png"].label == "fake"
    )
    assert (
        rows["y.png"].label == "real"
        and rows["y.png"].split == "val"
        and rows["y.png"].extra["subset"] == "sdv4"
    )
    assert rows["z.png"].generator == "midjourney" and rows["z.png"].split == "train"


def test_per_generator_subfolders_under_fake_and_any_depth(tmp_path):
    _img(tmp_path / "bench" / "set1" / "fake" / "sdxl" / "a.png", seed=1)
    _img(tmp_path / "bench" / "set1" / "fake" / "flux" / "b.png", seed=2)
    _img(tmp_path / "bench" / "set1" / "real" / "c.png", seed=3)
    rows = _by_name(scan_folder(tmp_path / "bench"))
    assert rows["a.png"].generator == "set1/sdxl"
    assert rows["b.png"].generator == "set1/flux"
    assert rows["c.png"].label == "real" and rows["c.png"].generator is None
    rows2 = _by_name(scan_folder(tmp_path / "bench" / "set1" / "fake"))  # root is itself below nothing
    assert rows2 == {}  # no class folder below this root


def test_files_outside_class_folders_and_non_images_are_skipped(tmp_path, capsys):
    _img(tmp_path / "real" / "a.png", seed=1)
    _img(tmp_path / "misc" / "b.png", seed=2)
    (tmp_path / "real" / "notes.txt").write_text("not an image")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "broken.png").write_bytes(b"not a png")
    rows = scan_folder(tmp_path)
    assert [Path(r.path).name for r in rows] == ["a.png"]
    err = capsys.readouterr().err
    assert "1 image(s) outside any class folder" in err
    assert "broken.png" in err


def test_scan_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan_folder(tmp_path / "nope")


def test_dedup_keeps_first_and_reports_copies(tmp_path):
    a = _img(tmp_path / "real" / "a.png", seed=1)
    (tmp_path / "real" / "b_copy.png").write_bytes(a.read_bytes())
    _img(tmp_path / "fake" / "other.png", seed=9)
    kept, dropped = dedup(scan_folder(tmp_path))
    assert {Path(r.path).name for r in kept} == {"other.png", "a.png"}
    (copy,) = dropped
    assert Path(copy.path).name == "b_copy.png"
    assert copy.extra["duplicate_of"] == str(a.resolve())
    assert "label_conflict" not in copy.extra


def test_dedup_flags_label_conflicts_in_input_order(tmp_path):
    a = _img(tmp_path / "a.png", seed=1)
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    rows = [describe_image(b, "fake"), describe_image(a, "real")]
    kept, dropped = dedup(rows)
    assert [Path(r.path).name for r in kept] == ["b.png"]
    assert dropped[0].extra["label_conflict"] is True and dropped[0].label == "real"


def test_dedup_hashes_rows_without_sha(tmp_path):
    a = _img(tmp_path / "a.png", seed=1)
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    kept, dropped = dedup([ManifestRow(str(a), "real"), ManifestRow(str(b), "real")])
    assert len(kept) == 1 and len(dropped) == 1 and kept[0].sha256


def test_round_trip_relative_inside_absolute_outside(tmp_path):
    out = tmp_path / "corpus"
    inside = describe_image(_img(out / "real" / "x.png", seed=1), "real", source="s", license="MIT")
    outside = describe_image(
        _img(tmp_path / "elsewhere" / "y.webp", seed=2, fmt="WEBP"), "fake", generator="g"
    )
    outside.split, outside.group, outside.extra = "val", "pair-1", {"k": [1, 2]}
    path = write_manifest([inside, outside], out / "manifest.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["path"] == "real/x.png"
    assert lines[1]["path"] == str(tmp_path / "elsewhere" / "y.webp")
    back = read_manifest(path)
    assert [r.to_dict() for r in back] == [inside.to_dict(), outside.to_dict()]
    assert back[1].format == "WEBP" and back[1].extra == {"k": [1, 2]}
    assert not [p for p in out.iterdir() if p.name.startswith(".manifest")]  # no temp file left behind


def test_read_manifest_resolves_relative_to_manifest_not_cwd(tmp_path, monkeypatch):
    out = tmp_path / "m"
    write_manifest([describe_image(_img(out / "a.png"), "real")], out / "manifest.jsonl")
    monkeypatch.chdir(tmp_path)
    (row,) = read_manifest(Path("m") / "manifest.jsonl")
    assert row.path == str((out / "a.png").resolve())


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "manifest.jsonl"
    write_manifest([ManifestRow(str(tmp_path / "a.png"), "real")], target)
    before = target.read_text()

    class Boom(ManifestRow):
        def to_dict(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_manifest(
            [ManifestRow(str(tmp_path / "b.png"), "fake"), Boom(str(tmp_path / "c.png"), "fake")], target
        )
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]


def test_bad_rows_and_labels_are_named(tmp_path):
    with pytest.raises(ValueError, match="label"):
        ManifestRow("x.png", "maybe")
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({"path": "a.png", "label": "real"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_manifest(bad)


def test_unknown_fields_survive_in_extra(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"path": "a.png", "label": "fake", "quality": 90}) + "\n")
    (row,) = read_manifest(m)
    assert row.extra == {"quality": 90}


def test_describe_image_records_animation(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    row = describe_image(p, "fake")
    assert row.format == "GIF" and row.extra["n_frames"] == 2


def test_one_reader_resolves_data_home_names_and_says_how_to_make_a_missing_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aligngemini.branches.pixel.task import read_rows as pixel_rows
    from aligngemini.branches.semantic.clip_task import read_rows as clip_rows
    from aligngemini.branches.semantic.vlm_task import read_rows as vlm_rows
    from aligngemini.data.manifest import ManifestRow, read_manifest, write_manifest

    monkeypatch.setenv("ALIGNGEMINI_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "data" / "set" / "manifest.jsonl"
    write_manifest([ManifestRow(path="img/a.png", label="fake", split="train", group="g1")], target)
    for reader in (read_manifest, pixel_rows, clip_rows, vlm_rows):
        (row,) = reader("data:set/manifest.jsonl")
        path = row["path"] if isinstance(row, dict) else row.path
        assert Path(path) == target.parent / "img" / "a.png"
    with pytest.raises(FileNotFoundError, match="build it first"):
        read_manifest("data:missing/manifest.jsonl")


def test_tasks_train_on_the_sources_asked_for(tmp_path: Path) -> None:
    from aligngemini.branches.pixel.task import read_rows as pixel_rows
    from aligngemini.branches.semantic.clip_task import read_rows as clip_rows
    from aligngemini.data.manifest import ManifestRow, select_sources, write_manifest

    rows = [ManifestRow(path=f"{i}.png", label="real", source=src, split="train", group=str(i))
            for i, src in enumerate(["realorai", "wildmix:a", "wildmix:b", "deb:x=1"])]  # fmt: skip
    assert [r.source for r in select_sources(rows, ["wildmix:*"], ["wildmix:b"])] == ["wildmix:a"]
    assert [r.source for r in select_sources(rows, None, ["wildmix:*"])] == ["realorai", "deb:x=1"]
    path = write_manifest(rows, tmp_path / "m.jsonl")
    assert [p.path.name for p in pixel_rows(path, exclude_sources=["wildmix:*", "realorai"])] == ["3.png"]
    assert [p.path.name for p in clip_rows(path, sources=["realorai"])] == ["0.png"]


def test_recipes_can_name_several_splits_or_none() -> None:
    from aligngemini.data.manifest import ManifestData

    assert ManifestData.in_split("val", ["train", "val"]) and not ManifestData.in_split(
        "test", ["train", "val"]
    )
    assert ManifestData.in_split("train", "train") and not ManifestData.in_split("train", None)
    assert not ManifestData.in_split("val", [])
