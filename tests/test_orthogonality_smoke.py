"""benchmarks/orthogonality.py end to end on tiny synthetic sets: tiny models, real trainer, real bundles.

The sets are made so that each kind of fake has its own cue: pixel fakes (and the held-out test fakes)
are blurred copies of their reals, semantic fakes are warm and bright scenes. What is checked is the
orchestration (runs, bundles, scoring, fusion, the report), not the numbers, which tiny models and two
training steps cannot make meaningful; except that every number is a real metric in [0, 1] or null.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _pixel_fixtures import TINY_VIT, photo  # noqa: E402
from benchmark_scripts import load_benchmark  # noqa: E402
from tiny_clip import save_tiny_tower  # noqa: E402

ortho = load_benchmark("orthogonality")


def _write(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _pairs(root: Path, n_train: int, n_val: int, seed: int, fake_fn) -> Path:
    rows = []
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        real = photo(seed + i, (48, 40))
        for label, img in (("real", real), ("fake", fake_fn(real))):
            rel = f"{label}/{i}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            img.save(root / rel)
            rows.append({"path": rel, "label": label, "split": split, "group": f"pair{i}", "generator": "g"})
    return _write(root, rows)


def _semantic(root: Path, n_train: int, n_val: int) -> Path:
    rows = []
    for i in range(2 * (n_train + n_val)):
        fake = i % 2 == 1
        split = "train" if i < 2 * n_train else "val"
        arr = np.asarray(photo(100 + i, (48, 40)), dtype=np.float32)
        arr = arr * 1.5 + np.array([60, 0, -40]) if fake else arr * 0.5 + np.array([-20, 0, 60])
        rel = f"{'fake' if fake else 'real'}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / rel, quality=90)
        rows.append({"path": rel, "label": "fake" if fake else "real", "split": split, "group": f"s{i}"})
    return _write(root, rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ortho")
    blur = lambda im: im.filter(ImageFilter.GaussianBlur(1.2))  # noqa: E731
    sharpen = lambda im: im.filter(ImageFilter.GaussianBlur(0.8)).filter(ImageFilter.SHARPEN)  # noqa: E731
    tower = save_tiny_tower(root / "tower", seed=3)
    pixel_recipe = {
        "task": "pixel-timm",
        "model": TINY_VIT,
        "crop": {"size": 32, "inference": "grid", "max_crops": 4},
        "augment": {},
        "data": {"manifest": "unset", "paired": True},
        "export": {"threshold": 0.5},
        "train": {"lr": 1e-3, "batch_size": 2, "max_steps": 2, "seed": 0, "log_every": 1},
    }
    semantic_recipe = {
        "task": "semantic-clip",
        "model": {"tower": str(tower), "head_type": "linear"},
        "data": {"manifest": "unset", "feature_batch_size": 8},
        "train": {"lr": 0.05, "batch_size": 4, "max_steps": 3, "weight_decay": 0.0, "seed": 0},
    }
    (root / "pixel.yaml").write_text(yaml.safe_dump(pixel_recipe))
    (root / "semantic.yaml").write_text(yaml.safe_dump(semantic_recipe))
    return {
        "home": root / "home",
        "argv": [
            "--out",
            str(root / "results"),
            "--work",
            str(root / "work"),
            "--pixel-set",
            str(_pairs(root / "pixel", 3, 2, 0, blur)),
            "--semantic-set",
            str(_semantic(root / "semantic", 3, 2)),
            "--esrgan-set",
            str(_pairs(root / "esrgan", 0, 2, 50, sharpen)),
            "--pixel-recipe",
            str(root / "pixel.yaml"),
            "--semantic-recipe",
            str(root / "semantic.yaml"),
            "--fusion-check",
            "3",
            "--quiet",
        ],  # fmt: skip
        "root": root,
    }


@pytest.mark.slow
def test_end_to_end_twice_second_run_reuses_everything(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGEMINI_HOME", str(setup["home"]))
    assert ortho.main(setup["argv"]) == 0
    out = setup["root"] / "results"
    res = json.loads((out / "orthogonality.json").read_text())
    assert set(res["table"]) == set(ortho.MODELS)
    tests = res["data"]["tests"]
    # esrgan: 2 val pairs; semantic val: 2 real + 2 fake; vae val: 2 pairs; union = esrgan + semantic val.
    assert (tests["esrgan"]["n_real"], tests["esrgan"]["n_fake"]) == (2, 2)
    assert (tests["semantic_val"]["n_real"], tests["semantic_val"]["n_fake"]) == (2, 2)
    assert (tests["union"]["n_real"], tests["union"]["n_fake"]) == (4, 4)
    assert (tests["vae_val"]["n_real"], tests["vae_val"]["n_fake"]) == (2, 2)
    for model, row in res["table"].items():
        for test in ortho.TESTS:
            m = row[test]
            assert m["n_real"] + m["n_fake"] == tests[test]["n_real"] + tests[test]["n_fake"], (model, test)
            for key in ("balanced_acc", "real_acc", "fake_acc", "auc"):
                assert m[key] is None or 0.0 <= m[key] <= 1.0
            assert m["balanced_acc"] == pytest.approx((m["real_acc"] + m["fake_acc"]) / 2)
    # Fusion is the OR of the two runs' decisions, checked against the fused bundle's own Detector.
    assert all(c["agree"] and c["checked"] == 3 for c in res["fusion_check"].values())
    assert {r["source"] for r in res["runs"].values()} == {"trained here"}
    assert all(c["same_recipe_but_data"] for c in res["pure_vs_mixed_recipes"].values())
    mixed = res["data"]["mixed"]["counts"]
    assert mixed["pixel/train/real"] == 3 and mixed["semantic/train/fake"] == 3
    md = (out / "orthogonality.md").read_text()
    assert "(d) OR of (a) and (b)" in md and "| total |" in md

    # Second run: trained runs are reused, every score comes from the cache, same table.
    assert ortho.main(setup["argv"]) == 0
    again = json.loads((out / "orthogonality.json").read_text())
    assert {r["source"] for r in again["runs"].values()} == {"cached (same recipe and data)"}
    scoring = [s for s in again["stages"] if s["stage"].startswith("score ")]
    assert scoring and all(s["images_scored"] == 0 for s in scoring)
    assert again["table"] == res["table"]
    assert res["last_working_invocation"]["seconds"] == res["total_seconds"]
    assert again["last_working_invocation"] == res["last_working_invocation"]  # the re-run did no work
    # The report still carries what each stage cost when its work was done (the work directory's ledger).
    first = {s["stage"]: s["seconds"] for s in res["stages"]}
    for s in again["stages"]:
        if s["stage"].startswith(("train ", "score ")):
            assert s["seconds_when_done"] == first[s["stage"]]
    assert (
        again["experiment_seconds"] > again["total_seconds"] - first["check fused bundles through Detector"]
    )


def test_mixed_manifest_pools_both_sets_with_separate_groups(tmp_path: Path) -> None:
    px = _write(tmp_path / "px", [{"path": "a.png", "label": "real", "split": "train", "group": "p1"},
                                  {"path": "b.png", "label": "fake", "split": "train", "group": "p1"}])  # fmt: skip
    se = _write(tmp_path / "se", [{"path": "c.jpg", "label": "fake", "split": "val", "group": "p1"}])
    info = ortho.write_mixed_manifest(
        px / "manifest.jsonl", se / "manifest.jsonl", tmp_path / "m" / "manifest.jsonl"
    )
    rows = [json.loads(x) for x in (tmp_path / "m" / "manifest.jsonl").read_text().splitlines()]
    assert info["rows"] == 3 and info["counts"] == {
        "pixel/train/fake": 1,
        "pixel/train/real": 1,
        "semantic/val/fake": 1,
    }
    assert [r["group"] for r in rows] == ["pixel:p1", "pixel:p1", "semantic:p1"]  # no cross-set pairing
    assert rows[2]["path"] == str((se / "c.jpg").resolve()) and rows[2]["extra"]["set"] == "semantic"
    mtime = (tmp_path / "m" / "manifest.jsonl").stat().st_mtime_ns
    ortho.write_mixed_manifest(
        px / "manifest.jsonl", se / "manifest.jsonl", tmp_path / "m" / "manifest.jsonl"
    )
    assert (tmp_path / "m" / "manifest.jsonl").stat().st_mtime_ns == mtime  # unchanged content: not rewritten


def test_findings_follow_the_table() -> None:
    def cell(b: float) -> dict:
        return {"balanced_acc": b}

    base = {"esrgan": 0.9, "semantic_val": 0.5, "union": 0.7, "vae_val": 0.95}
    table = {
        "pixel_pure": {k: cell(v) for k, v in base.items()},
        "semantic_pure": {k: cell(v) for k, v in {"esrgan": 0.62, "semantic_val": 0.8, "union": 0.66, "vae_val": 0.5}.items()},
        "pixel_mixed": {k: cell(v - 0.1) for k, v in base.items()},
        "semantic_mixed": {k: cell(0.6) for k in base},
        "fusion_pure": {k: cell(0.85) for k in base},
        "fusion_mixed": {k: cell(0.7) for k in base},
    }  # fmt: skip
    for row in table.values():
        row["mean_i_ii"] = {
            "balanced_acc": (row["esrgan"]["balanced_acc"] + row["semantic_val"]["balanced_acc"]) / 2
        }
    f = ortho.findings(table)
    assert f["blind_spots"]["pixel_pure_on_semantic_val"]["near_chance"] is True
    assert f["blind_spots"]["semantic_pure_on_esrgan"]["near_chance"] is False  # 0.62 is outside 0.5 +/- 0.08
    assert f["orthogonal_vs_mixed"]["pixel"]["esrgan"]["pure_minus_mixed"] == pytest.approx(0.1)
    assert f["fusion"]["fusion_pure"]["best_single_branch_union"] == 0.7
    assert f["fusion"]["fusion_pure"]["gain_over_best_branch"] == pytest.approx(0.15)
    assert f["fusion"]["pure_minus_mixed_union"] == pytest.approx(0.15)
    claims = ortho.claim_lines(f)
    assert claims[0].startswith("1. Each pure expert is near chance on the other's test: no")
    assert "pixel yes (+10.0 points)" in claims[1] and "semantic yes (+6.0)" in claims[1]
    assert claims[2].startswith(
        "3. The OR of the two pure experts beats either alone on the union (iii): yes"
    )


def test_a_cell_carries_a_balanced_accuracy_interval_around_its_estimate() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    decisions = np.array([False] * 15 + [True] * 5 + [True] * 12 + [False] * 8)
    cell = ortho.measure_cell(labels, decisions.astype(float), decisions)
    lo, hi = cell["bacc_ci95"]
    assert lo < cell["balanced_acc"] == (15 / 20 + 12 / 20) / 2 < hi
    assert ortho.measure_cell(labels[:20], decisions[:20].astype(float), decisions[:20])["bacc_ci95"] is None


def test_a_set_still_being_built_is_refused(tmp_path: Path) -> None:
    folder = _write(tmp_path / "set", [{"path": "a.png", "label": "real", "split": "val"}])
    (folder / "build.json").write_text("{}")
    with pytest.raises(ortho.ExperimentError, match="still being built"):
        ortho.find_set(None, [tmp_path / "missing", folder], "pure-pixel set", "hint")
    (folder / "build_report.json").write_text("{}")
    assert ortho.find_set(None, [tmp_path / "missing", folder], "pure-pixel set", "hint") == folder
    with pytest.raises(ortho.ExperimentError, match="no pure-pixel set found"):
        ortho.find_set(tmp_path / "missing", [folder], "pure-pixel set", "hint")


def test_recipe_differences_ignore_where_data_and_output_live() -> None:
    a = {
        "task": "pixel-timm",
        "data": {"manifest": "a.jsonl", "paired": True},
        "train": {"max_steps": 200, "output_dir": "x"},
    }
    b = {
        "task": "pixel-timm",
        "data": {"manifest": "b.jsonl", "paired": True},
        "train": {"max_steps": 100, "output_dir": "y"},
    }
    assert ortho.recipe_differences(a, b) == {"train.max_steps": [200, 100]}
    assert ortho.recipe_differences(a, a) == {}


def test_pixel_inference_settings_reach_every_pixel_bundle_and_are_checked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "branch").mkdir(parents=True)
    (run / "branch" / "pixel.safetensors").write_bytes(b"weights")
    section = {"family": "pixel-timm", "weights": "pixel.safetensors", "crop": {"size": 32}, "threshold": 0.5}
    (run / "train_summary.json").write_text(json.dumps({"export": section}))
    out = ortho.bundle_from_runs(
        tmp_path / "b", "b", {"pixel": run}, "# b\n", ["crop.phases=4", "precision=bf16"]
    )
    got = json.loads((out / "config.json").read_text())["branches"]["pixel"]
    assert got == {**section, "crop": {"size": 32, "phases": 4}, "precision": "bf16"}
    plain = ortho.bundle_from_runs(tmp_path / "p", "p", {"pixel": run}, "# p\n")
    assert json.loads((plain / "config.json").read_text())["branches"]["pixel"] == section
    with pytest.raises(ValueError, match="crop.phases must be one of"):
        ortho.bundle_from_runs(tmp_path / "x", "x", {"pixel": run}, "# x\n", ["crop.phases=3"])


def test_a_test_generator_the_pixel_set_trained_on_is_refused_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def tag(folder: Path, generator: str) -> Path:
        rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        for row in rows:
            row["extra"] = {"pair_generator": generator}
        return _write(folder, rows)

    blur = lambda im: im.filter(ImageFilter.GaussianBlur(1.2))  # noqa: E731
    pixel = tag(_pairs(tmp_path / "pixel", 2, 1, 0, blur), "esrgan:medium:x2")
    test = tag(_pairs(tmp_path / "test", 0, 1, 50, blur), "esrgan:medium:x2")
    semantic = _semantic(tmp_path / "semantic", 2, 1)
    assert ortho.pair_generators(pixel / "manifest.jsonl") == {"esrgan:medium:x2"}
    argv = [
        "--out", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--pixel-set", str(pixel),
        "--semantic-set", str(semantic), "--esrgan-set", str(test), "--quiet",
    ]  # fmt: skip
    assert ortho.main(argv) == 2
    err = capsys.readouterr().err
    assert "esrgan:medium:x2" in err and "--esrgan" in err
    assert not (tmp_path / "work" / "runs").exists() and not (tmp_path / "results").exists()
