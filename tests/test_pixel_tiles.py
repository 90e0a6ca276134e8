"""benchmarks/pixel_tiles.py: tile layout and the per-rule AUCs it reports."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load_benchmark

pt = load_benchmark("pixel_tiles")


def test_tiles_do_not_overlap_stay_inside_and_are_capped_per_side() -> None:
    tiles = pt.tile_corners(768, 1024, 96)
    assert len(tiles) == 8 * 10  # 8 rows fit; 10 of the 10 columns that fit
    assert all(t % 96 == 0 and x % 96 == 0 and t + 96 <= 768 and x + 96 <= 1024 for t, x in tiles)
    big = pt.tile_corners(4000, 3000, 96)
    assert len({t for t, _ in big}) == 12 and len({x for _, x in big}) == 12
    assert max(t for t, _ in big) == (4000 // 96 - 1) * 96  # the last row that fits is kept


def _image(label: int, fold: str, border: float, inside: float) -> dict:
    tiles = pt.tile_corners(384, 384, 96)  # 4 x 4: 12 border tiles, 4 interior
    inner = {(96, 96), (96, 192), (192, 96), (192, 192)}
    logits = [inside if t in inner else border for t in tiles]
    return {"fold": fold, "label": label, "h": 384, "w": 384, "size": 96, "own": [border, border],
            "tiles": tiles, "logits": logits, "texture": [1.0 if t in inner else 0.0 for t in tiles]}  # fmt: skip


def test_each_rule_scores_the_tiles_it_names() -> None:
    rng = np.random.default_rng(0)
    # the evidence is in the interior tiles only: fakes' interiors score higher; the border is noise
    images = [_image(y, "f", rng.normal(), rng.normal() + 3 * y) for y in (0, 1) for _ in range(40)]
    res = pt.measure(images)
    assert res["interior tiles"]["folds"]["f"]["auc"] > 0.95
    # the half with most texture holds the 4 interior tiles (and 4 border ones), the other half none of them
    assert res["most textured half"]["folds"]["f"]["auc"] > 0.8
    assert abs(res["least textured half"]["folds"]["f"]["auc"] - 0.5) < 0.2
    assert abs(res["border tiles"]["folds"]["f"]["auc"] - 0.5) < 0.2
    lo, hi = res["border tiles"]["folds"]["f"]["interval"]
    assert lo < res["border tiles"]["folds"]["f"]["auc"] < hi
    assert res["centre tile"]["folds"]["f"]["auc"] > 0.95
