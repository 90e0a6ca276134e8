"""benchmarks/decoder_detail.py: which way its numbers point, and a whole run on made-up photos with a real
(tiny, random) TAESD-family autoencoder written by the tests."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from benchmark_scripts import load_benchmark
from test_generators import _write_taesd, write_photos

from aligngemini.generators.train_vae import bicubic_down_up

dd = load_benchmark("decoder_detail")


def _photos(n: int = 4, size: int = 64) -> torch.Tensor:
    rng = np.random.default_rng(0)
    smooth = F.interpolate(torch.from_numpy(rng.random((n, 3, size // 8, size // 8))).float(), size=size)
    return (smooth * 0.7 + torch.from_numpy(rng.random((n, 3, size, size))).float() * 0.3).clamp(0, 1)


def test_the_photo_itself_keeps_all_detail_and_a_blur_keeps_less() -> None:
    x = _photos()
    same = dd.detail_scores(x, x)
    assert same["detail_ratio"] == 1 and same["band_energy_l1"] == 0
    soft = dd.detail_scores(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1), x)
    assert soft["detail_ratio"] < 0.5 and soft["band_energy_l1"] > 0.1 and soft["psnr"] < same["psnr"]
    noisy = dd.detail_scores((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x)
    assert noisy["detail_ratio"] > 1  # texture added, not lost
    floor = dd.detail_scores(bicubic_down_up(x), x)
    assert floor["detail_ratio"] < soft["detail_ratio"]


def test_a_whole_run_writes_a_row_per_generator(tmp_path) -> None:
    _write_taesd(tmp_path / "tae", latent=8)
    write_photos(tmp_path / "photos", 10, size=(80, 72))
    out = tmp_path / "detail"
    argv = ["--images", str(tmp_path / "photos"), "--generator", f"taesd:{tmp_path / 'tae'}", "--crop", "64"]
    assert dd.main([*argv, "--crops", "4", "--out", str(out)]) == 0
    record = json.loads(out.with_name("detail.json").read_text())
    # the folder as a reader can follow it (relative to the repository when it sits beside it)
    spec = dd.portable_spec(f"taesd:{tmp_path / 'tae'}")
    assert spec.startswith("taesd:") and spec.endswith("/tae")
    assert list(record["generators"]) == ["bicubic x8 (no decoder)", spec]
    assert record["crops"] == 4 and record["held_out_images"] == 1  # 10% of 10 photos, 4 crops of the one
    assert all(np.isfinite(v) for row in record["generators"].values() for v in row.values())
    assert "| `bicubic x8 (no decoder)` |" in out.with_name("detail.md").read_text()
