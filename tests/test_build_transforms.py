"""Alignment and degradation operations used by the set builders."""

from __future__ import annotations

import numpy as np
import pytest
from build_fixtures import photo
from PIL import Image

from aligngemini.data import transforms as T
from aligngemini.decode import estimate_jpeg_quality


@pytest.mark.parametrize("quality", [30, 62, 75, 90, 97])
def test_jpeg_round_trip_has_the_requested_quality(quality: int) -> None:
    out = T.jpeg(photo(1, 96, 64), quality)
    assert out.format == "JPEG"
    assert estimate_jpeg_quality(out) == quality
    assert out.size == (96, 64)


@pytest.mark.parametrize("code", [0, 1, 2])
def test_jpeg_subsampling_is_kept_and_read_back(code: int) -> None:
    out = T.jpeg(photo(2, 64, 64), 85, subsampling=code)
    assert T.jpeg_subsampling(out) == code
    assert T.jpeg_subsampling(photo(2, 8, 8)) is None


def test_jpeg_rejects_bad_quality() -> None:
    with pytest.raises(ValueError, match="quality"):
        T.jpeg_bytes(photo(0, 16, 16), 0)


def test_pixel_blend_endpoints_and_midpoint() -> None:
    real, fake = photo(3, 40, 30), photo(4, 40, 30)
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    assert np.array_equal(np.asarray(T.pixel_blend(real, fake, 0.0)), np.asarray(fake))
    assert np.array_equal(np.asarray(T.pixel_blend(real, fake, 1.0)), np.asarray(real))
    mid = np.asarray(T.pixel_blend(real, fake, 0.25), np.float64)
    assert np.abs(mid - (0.25 * r + 0.75 * f)).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="one size"):
        T.pixel_blend(real, photo(4, 30, 30), 0.5)


def test_frequency_blend_full_band_equals_pixel_blend() -> None:
    real, fake = photo(5, 48, 40), photo(6, 48, 40)
    a = np.asarray(T.frequency_blend(real, fake, 0.4, band=(0.0, np.inf)), np.int16)
    b = np.asarray(T.pixel_blend(real, fake, 0.4), np.int16)
    assert np.abs(a - b).max() <= 1


def test_frequency_blend_moves_only_the_chosen_band() -> None:
    real = photo(7, 64, 64)
    # The fake: the real's scene with strong high-frequency texture (what a decoder might restore).
    rng = np.random.default_rng(0)
    fake = Image.fromarray(
        np.clip(np.asarray(real, np.float32) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
    )
    band = (0.5, np.inf)
    out = T.frequency_blend(real, fake, 1.0, band=band)
    e_real, e_fake, e_out = (T.high_frequency_energy(x, band) for x in (real, fake, out))
    assert e_fake > 3 * e_real
    assert abs(e_out - e_real) < 0.2 * (e_fake - e_real)  # the high band now looks like the real's
    low = (0.0, 0.2)
    assert abs(
        T.high_frequency_energy(out, low) - T.high_frequency_energy(fake, low)
    ) < 1e-3 * T.high_frequency_energy(fake, low)


def test_square_band_is_what_a_downscale_keeps() -> None:
    radial = T.frequency_mask(64, 32, (0.0, 0.25))
    square = T.frequency_mask(64, 32, (0.0, 0.25), square=True)
    assert square.sum() == 16 * 8 and square[:16, :8].all()  # u < 0.25 H and v < 0.25 W, corners included
    assert radial.sum() < square.sum() and not radial[15, 7]
    # Aligning the square band makes the two images equal at a quarter-size DCT view.
    real, fake = photo(9, 64, 64), photo(10, 64, 64)
    out = T.frequency_blend(real, fake, 1.0, band=(0.0, 0.25), square=True)

    def coarse(img: Image.Image) -> np.ndarray:
        d = T.sfft.dctn(np.asarray(img, np.float64), axes=(0, 1), norm="ortho")
        return d[:16, :16]

    assert np.abs(coarse(out) - coarse(real)).max() < 0.02 * np.abs(coarse(real)).max()
    assert np.abs(coarse(fake) - coarse(real)).max() > 0.1 * np.abs(coarse(real)).max()


def test_resize_by_scale_and_size() -> None:
    img = photo(8, 100, 60)
    assert T.resize(img, scale=0.5).size == (50, 30)
    assert T.resize(img, size=(33, 21), method="lanczos").size == (33, 21)
    assert T.resize_short_side(img, 30).size == (50, 30)
    with pytest.raises(ValueError, match="exactly one"):
        T.resize(img, scale=0.5, size=(10, 10))
    with pytest.raises(ValueError, match="unknown resize method"):
        T.resize(img, scale=0.5, method="cubic-ish")


def test_crop_boxes_stay_inside_and_on_the_grid() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, h = int(rng.integers(64, 300)), int(rng.integers(64, 300))
        cw, ch = T.bounded_crop_size(w, h, 128, 16)
        assert cw % 16 == 0 and ch % 16 == 0 and cw <= min(w, 128) and ch <= min(h, 128)
        for box in (T.random_box(w, h, cw, ch, rng, align=16), T.center_box(w, h, cw, ch, align=16)):
            left, top, right, bottom = box
            assert left % 16 == 0 and top % 16 == 0
            assert left >= 0 and right <= w and top >= 0 and bottom <= h
            assert (right - left, bottom - top) == (cw, ch)
    with pytest.raises(ValueError, match="does not fit"):
        T.center_box(10, 10, 20, 5)


def test_blur_and_noise() -> None:
    img = photo(9, 64, 64)
    band = (0.5, np.inf)
    assert T.high_frequency_energy(T.gaussian_blur(img, 1.5), band) < 0.3 * T.high_frequency_energy(img, band)
    flat = Image.new("RGB", (128, 128), (128, 128, 128))
    a = T.add_noise(flat, 5.0, np.random.default_rng(1))
    b = T.add_noise(flat, 5.0, np.random.default_rng(1))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert abs(np.asarray(a, np.float64).std() - 5.0) < 0.3
