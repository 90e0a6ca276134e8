"""benchmarks/pixel_history.py: the history AUC, and one run over a tiny pixel bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from PIL import Image

ph = load_benchmark("pixel_history")


def test_history_auc_reads_which_copies_score_higher() -> None:
    native = np.array([0.0, 0.1, 0.2, 0.3])
    assert ph.history_auc(native, native + 1.0) == 1.0  # every shrunk copy looks more generated
    assert ph.history_auc(native, native - 1.0) == 0.0
    assert ph.history_auc(native, native[::-1].copy()) == 0.5  # the same scores: blind to the shrink


def test_probe_scores_each_photo_as_is_and_per_shrink(tmp_path: Path, tiny_pixel_bundle_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not a photo")  # ignored: only image files are read
    out = tmp_path / "rec" / "history"
    assert ph.main(["--bundle", str(tiny_pixel_bundle_dir), "--images", str(photos), "--out", str(out)]) == 0
    record = json.loads(out.with_name("history.json").read_text())
    assert record["n_images"] == 4 and record["benchmark"] == "pixel_history"
    (res,) = record["experts"].values()
    assert list(res["shrinks"]) == [label for label, _, _ in ph.SHRINKS]
    for s in res["shrinks"].values():
        assert 0.0 <= s["history_auc"] <= 1.0 and np.isfinite(s["mean_logit_change"])
    assert "| bundle " in out.with_name("history.md").read_text()


def test_probe_reads_a_training_free_distance_the_same_way(tmp_path: Path) -> None:
    from test_generators import _write_taesd

    _write_taesd(tmp_path / "tae", latent=8)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "history"
    assert (
        ph.main(["--distance", f"taesd:{tmp_path / 'tae'}", "--images", str(photos), "--out", str(out)]) == 0
    )
    record = json.loads(out.with_name("history.json").read_text())
    (name,) = record["experts"]
    assert name.startswith("hp_ratio through taesd:")
    # one row per shrink, each an AUC and a finite mean change
    for s in record["experts"][name]["shrinks"].values():
        assert 0.0 <= s["history_auc"] <= 1.0 and np.isfinite(s["mean_logit_change"])


def test_probe_needs_an_expert_and_photos(tmp_path: Path, tiny_pixel_bundle_dir: Path) -> None:
    with pytest.raises(SystemExit):
        ph.parse_args(["--images", str(tmp_path)])
    with pytest.raises(SystemExit, match="readable photos"):
        ph.main(["--bundle", str(tiny_pixel_bundle_dir), "--images", str(tmp_path)])
