"""benchmarks/recon_distance.py: where its crops land, which way its distances point, and a whole run on
made-up images with a stand-in autoencoder (a blur: it changes textured images more than smooth ones)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from PIL import Image, ImageFilter

rd = load_benchmark("recon_distance")


def test_crops_are_the_middle_rows_ends_on_the_16_pixel_grid() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    crops = rd.middle_row_crops(Image.fromarray(arr), 256)
    assert crops.shape == (2, 3, 256, 256)
    assert torch.equal(crops[0], x[:, 16:272, 0:256])  # top (300 - 256) // 2 = 22 -> 16 on the grid
    assert torch.equal(crops[1], x[:, 16:272, 240:496])  # the right end, 244 -> 240
    small = rd.middle_row_crops(Image.new("RGB", (120, 100)), 256)
    assert small.shape == (2, 3, 96, 96)  # no larger than the image, still a multiple of 16


def test_a_closer_reproduction_scores_higher() -> None:
    g = torch.Generator().manual_seed(0)
    crops = torch.rand(2, 3, 64, 64, generator=g)
    near = (crops + 0.01 * torch.randn(crops.shape, generator=g)).clamp(0, 1)
    far = (crops + 0.1 * torch.randn(crops.shape, generator=g)).clamp(0, 1)
    d_near, d_far = rd.distances(crops, near), rd.distances(crops, far)
    for name in rd.DISTANCES:
        assert d_near[name] > d_far[name], name


class BlurGenerator:
    """Stands in for an autoencoder: reproduces smooth images closely, textured ones poorly."""

    def reconstruct(self, images: list[Image.Image]) -> list[Image.Image]:
        return [im.filter(ImageFilter.GaussianBlur(1.5)) for im in images]


def test_a_run_ranks_smooth_images_as_closer_and_writes_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for fold in ("a", "b"):
        for i in range(6):
            fake = i % 2 == 1  # "fakes" are smooth gradients, "reals" are noise
            if fake:
                arr = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3))
            else:
                arr = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            path = tmp_path / f"{fold}{i}.png"
            Image.fromarray(arr).save(path)
            rows.append({"path": str(path), "fold": fold, "label": "fake" if fake else "real",
                         "semantic": f"{0.6 if fake else 0.4:.2f}", "pixel": f"{rng.uniform(0.2, 0.8):.3f}"})  # fmt: skip
    scores = tmp_path / "scores.csv"
    with open(scores, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    monkeypatch.setattr(rd, "build_generator", lambda spec, device=None: BlurGenerator())
    out = tmp_path / "rd"
    assert rd.main(["--scores", str(scores), "--generator", "blur:x", "--crop", "64", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["images"] == 12 and record["skipped"] == 0
    assert record["auc_by_fold"]["l2"] == {"a": 1.0, "b": 1.0}  # the blur changes noise, not gradients
    assert set(record["stack_by_fold"]) == {
        "semantic + pixel",
        f"semantic + pixel + {record['best_distance']}",
    }
    assert "| l2 | 1.000 | 1.000 | 1.000 |" in out.with_suffix(".md").read_text()
    with open(out.with_name("rd_scores.csv"), newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 12
    # the same analysis from the recorded distances, without the autoencoder
    monkeypatch.setattr(rd, "build_generator", None)
    again = tmp_path / "again"
    argv = ["--scores", str(scores), "--generator", "blur:x", "--distances", str(out.with_name("rd_scores.csv")),
            "--out", str(again)]  # fmt: skip
    assert rd.main(argv) == 0
    reread = json.loads(again.with_suffix(".json").read_text())
    assert (
        reread["auc_by_fold"] == record["auc_by_fold"] and reread["stack_by_fold"] == record["stack_by_fold"]
    )
    assert torch.is_grad_enabled()  # a run leaves the process's autograd as it found it


def test_a_scores_file_without_pixel_scores_is_refused(tmp_path: Path) -> None:
    scores = tmp_path / "scores.csv"
    scores.write_text("path,fold,label,semantic\nx.png,a,real,0.5\n")
    with pytest.raises(SystemExit, match="no rows with pixel scores"):
        rd.main(["--scores", str(scores), "--generator", "taesd:nowhere", "--out", str(tmp_path / "o")])
