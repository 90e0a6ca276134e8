"""The pixel-timm branch: built from an exported config + safetensors, same scores as the trained model,
no resize anywhere on the inference path, crop scores combined by max or mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from aligngemini.branches import Branch, build_branch
from aligngemini.branches.pixel.crops import combine_scores, inference_views
from aligngemini.branches.pixel.task import PixelTask
from aligngemini.decode import load_image
from tests._pixel_fixtures import recipe, write_pairs

TINY_CNN = {
    "backbone": "resnet10t",
    "weights": None,
    "finetune": "full",
    "backbone_kwargs": {"channels": [8, 8, 8, 8]},
}


def _images() -> list:
    rng = np.random.default_rng(0)
    sizes = [(70, 50), (32, 32), (20, 25), (100, 90)]  # grid, exact, padded, grid capped at 4
    return [load_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel")
    manifest = write_pairs(root)
    task = PixelTask(recipe(manifest))
    model = task.build_model()
    g = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():  # a "trained" model: non-zero adapters and head
        if "lora_B" in n or n.startswith("head"):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    out = root / "bundle"
    cfg = task.export(model, out)
    (out / "config.json").write_text(json.dumps({"pixel": cfg}))
    return model, cfg, out


def reference_scores(model, images, crop_cfg) -> np.ndarray:
    with torch.no_grad():
        return np.array(
            [
                combine_scores(torch.sigmoid(model(inference_views(im.image, crop_cfg))), crop_cfg.combine)
                for im in images
            ]
        )


def test_export_writes_plain_weights_and_a_complete_section(exported):
    model, cfg, out = exported
    assert cfg["family"] == "pixel-timm" and cfg["weights"] == "pixel.safetensors" and cfg["threshold"] == 0.5
    assert cfg["backbone"] == {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "depth": 2}}
    assert cfg["crop"]["size"] == 32 and cfg["lora_merged"] is True
    assert (
        "grid" not in cfg["crop"] and "phases" not in cfg["crop"]
    )  # defaults left out: older readers load it
    assert cfg["normalize"]["mean"] == pytest.approx([0.5, 0.5, 0.5])
    state = load_file(str(out / "pixel.safetensors"))
    assert "head.weight" in state and not any("lora" in k or "base_layer" in k for k in state)
    json.dumps(cfg)  # JSON-serialisable as is


def test_branch_from_bundle_scores_like_the_trained_model(exported):
    model, cfg, out = exported
    branch = build_branch("pixel", cfg, out, device=torch.device("cpu"), dtype=torch.float32)
    assert isinstance(branch, Branch) and branch.name == "pixel" and not branch.can_explain
    images = _images()
    prepared = [branch.prepare(im) for im in images]
    assert [p.shape[0] for p in prepared] == [4, 1, 1, 4]
    scores = branch.score(prepared)
    assert scores.dtype == np.float64 and scores.shape == (4,) and ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, reference_scores(model, images, branch.crop), atol=1e-5)
    # batch split does not matter
    branch.batch_size = 3
    np.testing.assert_allclose(branch.score(prepared), scores, atol=1e-6)
    assert branch.score([]).shape == (0,)
    with pytest.raises(NotImplementedError):
        branch.explain(images[0])


def test_combine_rule_max_vs_mean(exported):
    model, cfg, out = exported
    mean_b = build_branch("pixel", cfg, out, device=torch.device("cpu"), dtype=torch.float32)
    max_b = build_branch(
        "pixel",
        {**cfg, "crop": {**cfg["crop"], "combine": "max"}},
        out,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    im = _images()[0]
    views = mean_b.prepare(im)
    assert views.dtype == torch.uint8  # crops travel as bytes and become floats on the model's device
    with torch.no_grad():
        per_crop = torch.sigmoid(model(views.float() / 255)).double().numpy()
    assert len(per_crop) == 4 and per_crop.std() > 0
    assert mean_b.score([views])[0] == pytest.approx(per_crop.mean(), abs=1e-5)
    assert max_b.score([views])[0] == pytest.approx(per_crop.max(), abs=1e-5)


def test_no_resize_anywhere_on_the_inference_path(exported, monkeypatch):
    _, cfg, out = exported
    branch = build_branch("pixel", cfg, out, device=torch.device("cpu"), dtype=torch.float32)

    def forbidden(*args, **kwargs):
        raise AssertionError("resize called on the inference path")

    for obj, name in [
        (Image.Image, "resize"),
        (Image.Image, "thumbnail"),
        (Image.Image, "reduce"),
        (F, "interpolate"),
        (torch.nn.Upsample, "forward"),
    ]:
        monkeypatch.setattr(obj, name, forbidden)
    images = _images() + [load_image(np.full((1000, 700, 3), 128, dtype=np.uint8))]
    scores = branch.score([branch.prepare(im) for im in images])
    assert scores.shape == (5,)


def test_bfloat16_branch_is_close(exported):
    model, cfg, out = exported
    images = _images()
    fp32 = build_branch("pixel", cfg, out, device=torch.device("cpu"), dtype=torch.float32)
    bf16 = build_branch("pixel", cfg, out, device=torch.device("cpu"), dtype=torch.bfloat16)
    a = fp32.score([fp32.prepare(im) for im in images])
    b = bf16.score([bf16.prepare(im) for im in images])
    np.testing.assert_allclose(a, b, atol=0.03)


def test_a_bf16_section_computes_in_bf16_only_where_the_device_has_it(exported, monkeypatch):
    """``precision: bf16`` in the bundle makes an fp32 load compute the network as a bf16 load would, where
    the device multiplies bf16 natively; elsewhere the branch stays exactly fp32."""
    from aligngemini.branches.pixel import branch as pixel_branch

    _, cfg, out = exported
    images = _images()
    cpu = torch.device("cpu")

    def scores(section, dtype=torch.float32):
        b = build_branch("pixel", section, out, device=cpu, dtype=dtype)
        return b, b.score([b.prepare(im) for im in images])

    plain, fp32 = scores(cfg)
    _, bf16 = scores(cfg, torch.bfloat16)
    monkeypatch.setattr(pixel_branch, "native_bf16", lambda device_type: True)
    asked, got = scores({**cfg, "precision": "bf16"})
    assert asked.dtype == torch.bfloat16 and {p.dtype for p in asked.model.parameters()} == {torch.bfloat16}
    np.testing.assert_array_equal(got, bf16)
    assert not np.array_equal(got, fp32)  # bf16 arithmetic really ran
    monkeypatch.setattr(pixel_branch, "native_bf16", lambda device_type: False)
    kept, same = scores({**cfg, "precision": "bf16"})
    assert kept.dtype == torch.float32 and plain.precision == "fp32" and kept.precision == "bf16"
    np.testing.assert_array_equal(same, fp32)
    assert asked.arithmetic == "cpu:bfloat16" and kept.arithmetic == plain.arithmetic == "cpu:float32"
    with pytest.raises(ValueError, match="precision 'int8'"):
        build_branch("pixel", {**cfg, "precision": "int8"}, out, device=cpu, dtype=torch.float32)


def test_config_errors(exported, tmp_path):
    _, cfg, out = exported
    with pytest.raises(FileNotFoundError):
        build_branch("pixel", cfg, tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown key"):
        build_branch("pixel", {**cfg, "resize": 224}, out, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ValueError, match="does not fit"):
        bad = {**cfg, "backbone": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "depth": 3}}}
        build_branch("pixel", bad, out, device=torch.device("cpu"), dtype=torch.float32)


def test_npr_input_filter_is_trained_exported_and_applied_at_inference(tmp_path):
    from aligngemini.branches.pixel.model import neighbouring_pixel_residual

    # the residual of a nearest-neighbour x2 up-sampled image is exactly zero; of a photo it is not
    small = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    upsampled = small.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :15, :17]
    assert neighbouring_pixel_residual(upsampled).abs().max() == 0
    assert neighbouring_pixel_residual(small).abs().max() > 0.1
    manifest = write_pairs(tmp_path)
    task = PixelTask(recipe(manifest, model={**TINY_CNN, "input_filter": "npr"}))
    model = task.build_model().eval()
    plain = PixelTask(recipe(manifest, model=TINY_CNN)).build_model().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the same weights see a different input
        assert not torch.allclose(model(x), plain(x))
    cfg = task.export(model, tmp_path / "bundle")
    assert cfg["input_filter"] == "npr"
    assert "input_filter" not in PixelTask(recipe(manifest, model=TINY_CNN)).export(plain, tmp_path / "plain")
    branch = build_branch("pixel", cfg, tmp_path / "bundle", device=torch.device("cpu"), dtype=torch.float32)
    images = _images()
    scores = branch.score([branch.prepare(im) for im in images])
    np.testing.assert_allclose(scores, reference_scores(model, images, branch.crop), atol=1e-5)
    with pytest.raises(ValueError, match="input_filter"):
        build_branch("pixel", {**cfg, "input_filter": "fft"}, tmp_path / "bundle", device=torch.device("cpu"),
                     dtype=torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="input_filter"):
        PixelTask(recipe(manifest, model={**TINY_CNN, "input_filter": "fft"}))


def test_a_crop_grid_in_the_section_moves_the_inference_crops_onto_it(exported):
    model, cfg, out = exported
    section = {**cfg, "crop": {**cfg["crop"], "grid": 8}}
    branch = build_branch("pixel", section, out, device=torch.device("cpu"), dtype=torch.float32)
    arr = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    views = branch.prepare(load_image(arr)).numpy().transpose(0, 2, 3, 1)
    corners = [(t, x) for t in range(0, 70 - 31) for x in range(0, 50 - 31) if any(
        np.array_equal(arr[t : t + 32, x : x + 32], v) for v in views)]  # fmt: skip
    assert len(views) == 4 and sorted(corners) == [(0, 0), (0, 16), (32, 0), (32, 16)]
