"""Each augmentation changes the image, deterministically under a seed, and keeps its size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aligngemini.branches.pixel.augment import AugmentConfig, apply_plan, augment, motion_kernel, sample_plan
from aligngemini.config import ConfigError


def _photo(seed: int = 0, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """Smooth colour gradients plus texture, so blurs, JPEG and jitter all have something to change."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 20, (h, w, 3))
    arr = np.stack([xx / w * 200, yy / h * 180 + 30, (xx + yy) % 64 * 3], axis=2) + noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


OPS = {
    "jpeg": {"jpeg_p": 1.0},
    "hflip": {"hflip_p": 1.0},
    "vflip": {"vflip_p": 1.0},
    "gaussian_noise": {"gaussian_noise_p": 1.0},
    "pepper": {"pepper_p": 1.0},
    "gaussian3": {"blur_p": 1.0, "blur_kinds": ["gaussian3"]},
    "gaussian5": {"blur_p": 1.0, "blur_kinds": ["gaussian5"]},
    "median3": {"blur_p": 1.0, "blur_kinds": ["median3"]},
    "motion5": {"blur_p": 1.0, "blur_kinds": ["motion5"]},
    "sharpen": {"sharpen_p": 1.0},
    "color_jitter": {"color_jitter_p": 1.0},
    "greyscale": {"greyscale_p": 1.0},
}


def _only(**on) -> AugmentConfig:
    base = {k: 0.0 for k in AugmentConfig.__dataclass_fields__ if k.endswith("_p")}
    return AugmentConfig(**{**base, **on})


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_augmentation_changes_deterministically_and_keeps_size(name):
    cfg = _only(**OPS[name])
    img = _photo()
    a = augment([img], cfg, np.random.default_rng(3))[0]
    b = augment([img], cfg, np.random.default_rng(3))[0]
    assert a.size == img.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)), "same seed must give the same image"
    assert not np.array_equal(np.asarray(a), np.asarray(img)), f"{name} left the image unchanged"


@pytest.mark.parametrize(
    "name", ["jpeg", "gaussian_noise", "pepper", "gaussian5", "motion5", "sharpen", "color_jitter"]
)
def test_random_parameters_differ_across_seeds(name):
    cfg = _only(**OPS[name])
    img = _photo()
    outs = {np.asarray(augment([img], cfg, np.random.default_rng(s))[0]).tobytes() for s in range(4)}
    assert len(outs) > 1


def test_all_off_is_identity_and_plan_is_shared_by_a_pair():
    img = _photo()
    assert np.array_equal(
        np.asarray(augment([img], AugmentConfig.none(), np.random.default_rng(0))[0]), np.asarray(img)
    )
    cfg = AugmentConfig(jpeg_p=1, gaussian_noise_p=1, pepper_p=1, blur_p=1, sharpen_p=1, color_jitter_p=1)
    a, b = augment([img, img.copy()], cfg, np.random.default_rng(5))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_resize_alignment_scales_both_images_alike():
    cfg = _only(resize_p=1.0, resize_up_p=1.0, resize_up=(2.0, 2.0))
    a, b = augment([_photo(0), _photo(1)], cfg, np.random.default_rng(0))
    assert a.size == b.size == (192, 144)
    cfg = _only(resize_p=1.0, resize_up_p=0.0, resize_down=(0.5, 0.5), resize_methods=["bicubic"])
    plan = sample_plan(cfg, np.random.default_rng(0))
    assert plan.resize == (0.5, "bicubic")
    assert apply_plan(_photo(), plan, cfg).size == (48, 36)


def test_resize_alignment_has_the_same_law_for_both_labels():
    # the plan never looks at the label: the scale distribution is one and the same draw sequence
    cfg = _only(resize_p=0.5)
    scales = [sample_plan(cfg, np.random.default_rng(s)).resize for s in range(200)]
    hit = [s for s in scales if s is not None]
    assert 60 < len(hit) < 140
    assert min(s[0] for s in hit) >= 0.2 and max(s[0] for s in hit) <= 3.5


def test_motion_kernel_is_a_normalised_line():
    k = motion_kernel(5, 0.0)
    assert k.sum() == pytest.approx(1.0) and np.count_nonzero(k) == 5 and np.count_nonzero(k[2]) == 5
    k90 = motion_kernel(5, 90.0)
    assert np.count_nonzero(k90[:, 2]) == 5


def test_config_validation():
    with pytest.raises(ValueError):
        AugmentConfig(jpeg_p=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(jpeg_quality=(90, 50))
    with pytest.raises(ValueError):
        AugmentConfig(blur_kinds=["box9"])
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"jpg_p": 0.5})
    assert AugmentConfig.from_dict({"jpeg_quality": [60, 90]}).jpeg_quality == (60, 90)
