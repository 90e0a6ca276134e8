"""Crop policy: native-resolution crops, never resized; grid layout; padding; score combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligngemini.branches.pixel.crops import (
    CropConfig,
    combine_scores,
    grid_counts,
    inference_boxes,
    inference_views,
    inference_views_uint8,
    pad_to_min,
    random_offset,
    train_crop,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grid_crops_of_a_large_image_are_its_own_pixels():
    arr = _image(700, 1000)  # H=700, W=1000
    cfg = CropConfig(size=336, inference="grid", max_crops=9)
    views = inference_views(arr, cfg)
    assert views.shape == (9, 3, 336, 336) and views.dtype == torch.float32
    boxes = inference_boxes(700, 1000, cfg)
    assert boxes[0] == (0, 0) and boxes[-1] == (700 - 336, 1000 - 336)  # corners are covered
    for view, (top, left) in zip(views, boxes, strict=True):
        original = arr[top : top + 336, left : left + 336]
        restored = (view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(restored, original)
        assert torch.equal(view, torch.from_numpy(original.copy()).permute(2, 0, 1).float() / 255)


def test_grid_respects_max_crops_and_center_mode():
    assert grid_counts(700, 1000, 336, 9) == (3, 3)
    assert grid_counts(700, 1000, 336, 4) == (2, 2)
    assert grid_counts(4000, 3000, 336, 12) in {(4, 3), (3, 4)}
    assert grid_counts(200, 200, 336, 9) == (1, 1)
    arr = _image(700, 1000)
    v = inference_views(arr, CropConfig(size=336, inference="grid", max_crops=4))
    assert v.shape[0] == 4
    c = inference_views(arr, CropConfig(size=336, inference="center"))
    assert c.shape == (1, 3, 336, 336)
    top, left = (700 - 336) // 2, (1000 - 336) // 2
    assert torch.equal(
        c[0], torch.from_numpy(arr[top : top + 336, left : left + 336].copy()).permute(2, 0, 1).float() / 255
    )


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge"])
def test_small_images_are_padded_not_resized(mode):
    arr = _image(50, 80)
    cfg = CropConfig(size=64, pad_mode=mode, pad_value=7, inference="center")
    views = inference_views(arr, cfg)
    assert views.shape == (1, 3, 64, 64)
    restored = (views[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    # 50 -> 64 pads 7 rows above; 80 > 64 crops 8 columns from the left
    assert np.array_equal(restored[7 : 7 + 50], arr[:, 8 : 8 + 64])
    if mode == "constant":
        assert (restored[:7] == 7).all()
    if mode == "reflect":
        assert np.array_equal(restored[6], arr[1, 8 : 8 + 64])


def test_pad_handles_tiny_images():
    for h, w in [(1, 1), (1, 5), (3, 2)]:
        out = pad_to_min(_image(h, w), 16, "reflect")
        assert out.shape == (16, 16, 3)


def test_train_crop_is_random_but_reproducible_and_exact():
    arr = _image(300, 400)
    cfg = CropConfig(size=128)
    a = train_crop(arr, cfg, np.random.default_rng(1))
    b = train_crop(arr, cfg, np.random.default_rng(1))
    c = train_crop(arr, cfg, np.random.default_rng(2))
    assert a.shape == (128, 128, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    # the crop is a window of the original: find it
    hits = [
        (t, x)
        for t in range(300 - 127)
        for x in range(400 - 127)
        if arr[t, x, 0] == a[0, 0, 0] and np.array_equal(arr[t : t + 128, x : x + 128], a)
    ]
    assert len(hits) == 1


def test_combine_rules():
    p = np.array([0.1, 0.9, 0.2])
    assert combine_scores(p, "max") == pytest.approx(0.9)
    assert combine_scores(torch.tensor(p), "mean") == pytest.approx(0.4)
    with pytest.raises(ValueError):
        combine_scores(p, "median")
    with pytest.raises(ValueError):
        CropConfig(combine="median")
    with pytest.raises(ValueError):
        CropConfig(inference="resize")


def test_uint8_views_are_the_float_views_times_255() -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    cfg = CropConfig(size=128, inference="grid", max_crops=6)
    u8 = inference_views_uint8(arr, cfg)
    assert u8.dtype == torch.uint8 and u8.shape == inference_views(arr, cfg).shape
    assert torch.equal(u8.float() / 255, inference_views(arr, cfg))
    assert torch.equal(u8[0].permute(1, 2, 0), torch.from_numpy(arr[:128, :128]))  # first crop: top-left


def test_a_crop_grid_puts_every_crop_corner_on_its_multiples():
    rng = np.random.default_rng(0)
    corners = {random_offset(300, 250, 96, rng, grid=16) for _ in range(400)}
    assert all(t % 16 == 0 and x % 16 == 0 for t, x in corners)
    assert {t for t, _ in corners} == set(range(0, 300 - 96 + 1, 16))  # every aligned row, the last one too
    assert max(x for _, x in corners) == 144  # 250 - 96 = 154: the last multiple of 16 that fits
    arr = _image(300, 250)
    for _ in range(20):
        view = train_crop(arr, CropConfig(size=96, grid=16), rng)
        hits = [
            (t, x)
            for t in range(0, 205, 16)
            for x in range(0, 155, 16)
            if np.array_equal(arr[t : t + 96, x : x + 96], view)
        ]
        assert len(hits) == 1
    # inference: the same layout as without a grid, each corner moved back onto the grid
    free, snapped = CropConfig(size=96, max_crops=2), CropConfig(size=96, max_crops=2, grid=16)
    assert inference_boxes(750, 1000, free) == [(327, 0), (327, 904)]
    assert inference_boxes(750, 1000, snapped) == [(320, 0), (320, 896)]
    assert inference_boxes(750, 1000, CropConfig(size=96, inference="center", grid=16)) == [(320, 448)]
    with pytest.raises(ValueError, match="crop.grid"):
        CropConfig(grid=0)


def test_four_phases_score_each_crop_at_the_four_parities_of_its_corner():
    plain = CropConfig(size=96, max_crops=2)
    four = CropConfig(size=96, max_crops=2, phases=4)
    assert inference_boxes(768, 1024, plain) == [(336, 0), (336, 928)]
    boxes = inference_boxes(768, 1024, four)
    # the right-hand crop touches the image's edge: it moves left instead of right, a phase change all the same
    assert boxes == [(336, 0), (336, 1), (337, 0), (337, 1), (336, 928), (336, 927), (337, 928), (337, 927)]
    assert {(t % 2, x % 2) for t, x in boxes[:4]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert {(t % 2, x % 2) for t, x in boxes[4:]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    arr = _image(768, 1024)
    views = inference_views_uint8(arr, four)
    assert views.shape == (8, 3, 96, 96)
    assert torch.equal(views[3], torch.from_numpy(arr[337:433, 1:97].copy()).permute(2, 0, 1))
    # an image no larger than a crop has one place only: its crop is scored four times, unmoved
    assert inference_boxes(96, 96, four) == [(0, 0)] * 4
    with pytest.raises(ValueError, match="crop.phases"):
        CropConfig(phases=2)


def test_flips_add_each_crop_mirrored():
    arr = _image(300, 400)
    plain = inference_views_uint8(arr, CropConfig(size=96, max_crops=3, phases=4))
    two = inference_views_uint8(arr, CropConfig(size=96, max_crops=3, phases=4, flips=2))
    four = inference_views_uint8(arr, CropConfig(size=96, max_crops=3, phases=4, flips=4))
    n = len(plain)
    assert two.shape == (2 * n, 3, 96, 96) and four.shape == (4 * n, 3, 96, 96)
    assert torch.equal(two[:n], plain) and torch.equal(four[:n], plain)
    assert torch.equal(two[n:], plain.flip(-1))  # left-right
    assert torch.equal(four[2 * n : 3 * n], plain.flip(-2))  # upside down
    assert torch.equal(four[3 * n :], plain.flip(-2, -1))
    assert four.is_contiguous()
    with pytest.raises(ValueError, match="crop.flips"):
        CropConfig(flips=3)
