"""resize_bicubic: torch's uint8 kernel where a landscape or square image shrinks, within two levels of Pillow on
under half a percent of the values; Pillow itself everywhere else."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from aligngemini.branches.semantic.preprocess import resize_bicubic, resize_for_tower


def _photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * rng.random(3)
    arr = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _pillow(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC)).astype(int)


@pytest.mark.parametrize(
    ("src", "dst"),
    [((1024, 768), (192, 192)), ((3000, 2000), (192, 192)), ((640, 480), (224, 168)), ((250, 192), (160, 160)),
     ((4032, 3024), (288, 216)), ((300, 50), (192, 50)), ((768, 768), (192, 192))],
)  # fmt: skip
def test_a_landscape_reduction_is_within_two_levels_of_pillow(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    image = _photo_like(*src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a read-only array
        ours = np.asarray(resize_bicubic(image, dst)).astype(int)
    diff = np.abs(ours - _pillow(image, dst))
    assert ours.shape == (dst[1], dst[0], 3)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005


@pytest.mark.parametrize(
    ("src", "dst"), [((100, 80), (192, 192)), ((50, 300), (192, 192)), ((191, 400), (192, 192))]
)
def test_anything_that_grows_a_side_is_pillow_exactly(src: tuple[int, int], dst: tuple[int, int]) -> None:
    image = _photo_like(*src, seed=1)
    assert np.array_equal(np.asarray(resize_bicubic(image, dst)).astype(int), _pillow(image, dst))


def test_other_modes_are_pillow_exactly() -> None:
    grey = _photo_like(400, 300).convert("L")
    assert np.array_equal(
        np.asarray(resize_bicubic(grey, (192, 192))), np.asarray(grey.resize((192, 192), 3))
    )


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_tower_views_keep_their_geometry(mode: str) -> None:
    view = resize_for_tower(_photo_like(1024, 768), 192, mode)
    assert view.size == (192, 192) and view.mode == "RGB"
