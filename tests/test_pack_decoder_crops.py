"""benchmarks/pack_decoder_crops.py: only the training photos are packed, as crops train-vae reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark
from PIL import Image

from aligngemini.generators.train_vae import TrainVAEConfig, split_by_image, train_vae

pk = load_benchmark("pack_decoder_crops")


def flat_photos(folder: Path, n: int) -> dict[Path, int]:
    """``n`` photos, each one flat grey level (10, 30, 50, ...), so that a crop tells which photo it came from."""
    folder.mkdir(parents=True)
    levels = {}
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.new("RGB", (72, 64), (10 + 20 * i,) * 3).save(path)
        levels[path] = 10 + 20 * i
    return levels


def test_held_out_photos_never_reach_the_pack_and_train_vae_reads_it(tmp_path: Path) -> None:
    levels = flat_photos(tmp_path / "photos", 10)
    out = tmp_path / "pack"
    argv = ["--images", str(tmp_path / "photos"), "--out", str(out), "--crop", "32", "--crops-per-image", "2"]
    assert pk.main([*argv, "--quality", "100"]) == 0
    train, held_out = split_by_image(sorted(levels), 0.1, 0)
    record = json.loads((out / "PACKED.json").read_text())
    assert record["training_photos"] == len(train) == 9 and record["held_out_photos_left_out"] == 1
    crops = sorted(out.glob("crop-*.jpg"))
    assert len(crops) == record["crops"] == 18
    seen = {int(round(float(np.asarray(Image.open(c)).mean()))) for c in crops}
    assert all(abs(s - levels[p]) > 3 for p in held_out for s in seen)  # nothing of the held-out photo
    assert all(min(abs(s - levels[p]) for s in seen) <= 3 for p in train)  # something of every other one
    assert all(Image.open(c).size == (32, 32) for c in crops)
    # the folder is a train-vae input as it is
    cfg = TrainVAEConfig(images=str(out), out=str(tmp_path / "vae"), steps=1, size=32, batch=2,
                         block_out_channels=(8, 8, 16, 16), crops_per_image=1, threads=1, device="cpu")  # fmt: skip
    result = train_vae(cfg)
    assert result.n_train_images + result.n_val_images == 18  # each crop is an image to it
    # a pack is never written over, and one over its size limit says so
    with pytest.raises(SystemExit, match="not empty"):
        pk.main(argv)
    with pytest.raises(SystemExit, match="over --max-mib"):
        pk.main(["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "big"), "--crop", "32",
                 "--max-mib", "0.00001"])  # fmt: skip
