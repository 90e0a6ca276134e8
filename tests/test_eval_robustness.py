"""Perturbation specs and their effect on decoded images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aligngemini.decode import load_image
from aligngemini.eval.robustness import CLEAN, Perturbation, parse_perturb


def _loaded(size: tuple[int, int] = (64, 48)) -> object:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return load_image(Image.fromarray(arr))


def test_parse_ranges_lists_and_double_forms() -> None:
    jp = parse_perturb("jpeg:10:100:10")
    assert (jp.op, jp.times, jp.name) == ("jpeg", 1, "jpeg")
    assert jp.values == tuple(float(q) for q in range(10, 101, 10))
    blur = parse_perturb("blur:0:4:0.5")
    assert len(blur.values) == 9 and blur.values[0] == 0 and blur.values[-1] == 4
    rs = parse_perturb("resize:0.25:4:0.25")
    assert len(rs.values) == 16 and rs.values[3] == 1.0
    for spec in ("jpeg2:50", "double-jpeg:50", "jpegx2:50"):
        sw = parse_perturb(spec)
        assert (sw.op, sw.times, sw.name, sw.values) == ("jpeg", 2, "double-jpeg", (50.0,))
    assert parse_perturb("resize:0.5,1,2").values == (0.5, 1.0, 2.0)
    assert [p.key for p in parse_perturb("double-blur:0:1:1").points()] == [CLEAN, "blur:sigma=1x2"]


@pytest.mark.parametrize(
    "spec", ["sharpen:1", "jpeg", "jpeg:0", "jpeg:101", "blur:-1", "resize:0", "jpeg:90:10:10", "jpeg:a:b:c",
             "jpeg:10:100:0", "jpeg5:50", "blur:1:2"],
)  # fmt: skip
def test_bad_specs_raise_with_the_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="perturbation"):
        parse_perturb(spec)


def test_jpeg_recompresses_at_the_quality() -> None:
    img = _loaded()
    out = Perturbation("jpeg", 30).apply(img)
    assert out.facts.format == "JPEG" and out.facts.jpeg_quality == 30
    assert out.image.size == img.image.size
    diff = np.abs(np.asarray(out.image, float) - np.asarray(img.image, float)).mean()
    assert diff > 5  # random noise does not survive q=30
    twice = Perturbation("jpeg", 30, times=2).apply(img)
    assert not np.array_equal(np.asarray(twice.image), np.asarray(out.image))
    assert out.extra["perturbation"] == "jpeg:q=30" and twice.extra["perturbation"] == "jpeg:q=30x2"


def test_blur_smooths_and_zero_is_identity() -> None:
    img = _loaded()
    assert Perturbation("blur", 0).apply(img).image is img.image
    assert Perturbation("blur", 0).is_identity and Perturbation("blur", 0).key == CLEAN
    a = np.asarray(Perturbation("blur", 1.0).apply(img).image, float)
    b = np.asarray(Perturbation("blur", 2.0).apply(img).image, float)
    base = np.asarray(img.image, float)
    assert base.std() > a.std() > b.std()
    assert abs(a.mean() - base.mean()) < 2


def test_resize_scales_and_doubles() -> None:
    img = _loaded((64, 48))
    half = Perturbation("resize", 0.5).apply(img)
    assert half.image.size == (32, 24) and (half.facts.width, half.facts.height) == (32, 24)
    quarter = Perturbation("resize", 0.5, times=2).apply(img)
    assert quarter.image.size == (16, 12)
    assert Perturbation("resize", 2).apply(img).image.size == (128, 96)
    assert Perturbation("resize", 1).is_identity
    with pytest.raises(ValueError, match="pixels"):
        Perturbation("resize", 4).apply(img, max_pixels=1000)
