"""benchmarks/fusion_ceiling.py: rules fitted on the fold itself, and the bound over log-odds mixes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

fc = load_benchmark("fusion_ceiling")


def write_scores(path: Path, folds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "fold", "generator", "label", "semantic", "pixel"])
        for name, (labels, sem, pix) in folds.items():
            for i, (y, s, p) in enumerate(zip(labels, sem, pix, strict=True)):
                w.writerow([f"{name}/{i}.png", name, name, "", "fake" if y else "real", s, p])
    return path


def complementary_fold(rng: np.random.Generator, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half the fakes are caught by the semantic expert only, the other half by the pixel expert only."""
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    sem, pix = rng.uniform(0.05, 0.4, 2 * n), rng.uniform(0.05, 0.4, 2 * n)
    sem[n : n + n // 2] = rng.uniform(0.7, 0.95, n // 2)
    pix[n + n // 2 :] = rng.uniform(0.7, 0.95, n - n // 2)
    return labels, sem, pix


def test_complementary_experts_reach_the_ceiling_only_fused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = write_scores(tmp_path / "s.csv", {"a": complementary_fold(rng), "b": complementary_fold(rng)})
    res = fc.ceilings(fc.read_scores(scores))
    mean = res["mean_balanced_acc"]
    assert mean["or"] == pytest.approx(1.0)
    assert max(mean["semantic"], mean["pixel"]) == pytest.approx(0.75, abs=0.03)
    assert res["rule_minus_better_single"]["or"] > 0.2


def test_a_noise_pixel_expert_leaves_nothing_to_gain(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(80), np.ones(80)].astype(int)
    sem = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.15, 160), 0.01, 0.99)
    pix = rng.uniform(0.01, 0.99, 160)
    res = fc.ceilings(fc.read_scores(write_scores(tmp_path / "s.csv", {"a": (labels, sem, pix)})))
    fold = res["folds"]["a"]
    assert fold["best-linear"]["balanced_acc"] >= fold["semantic"]["balanced_acc"] - 1e-9  # a = 0 is a mix
    assert res["rule_minus_better_single"]["best-linear"] < 0.1
    assert res["better_single_expert"] == "semantic"


def test_best_balanced_is_the_best_threshold() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    # threshold 0.5: tpr 2/3, fpr 0 -> 0.833; threshold 0.3: tpr 1, fpr 1/3 -> 0.833; nothing better
    assert fc.best_balanced(labels, scores) == pytest.approx(5 / 6)


def test_a_file_without_pixel_scores_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("path,fold,label,semantic\nx.png,a,fake,0.9\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"no column \['pixel'\]"):
        fc.read_scores(path)


def test_main_writes_both_records_beside_the_recorded_out_of_fold_means(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scores = write_scores(tmp_path / "run_scores.csv", {"a": complementary_fold(rng)})
    summary = {"semantic": {"mean_balanced_acc": 0.612}, "or": {"mean_balanced_acc": 0.734}}
    (tmp_path / "run.json").write_text(json.dumps({"result": {"summary": summary}}))
    assert fc.main(["--scores", str(scores), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["benchmark"] == "fusion_ceiling" and len(record["runs"]) == 1
    assert record["runs"][0]["out_of_fold"] == {"semantic": 0.612, "or": 0.734}
    md = (tmp_path / "out.md").read_text()
    assert "| **mean** |" in md and "| mean as wild_eval fitted it (other folds) | - | 0.612 | 0.734 |" in md


def test_synthetic_pixel_expert_has_its_auc_and_more_of_it_gains_more(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(400), np.ones(400)].astype(int)
    sem = np.clip(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.2, 800), 0.01, 0.99)
    folds = fc.read_scores(write_scores(tmp_path / "s.csv", {"a": (labels, sem, np.full(800, 0.5))}))
    drawn = fc.synthetic_pixel(folds, 0.8, seed=0)["a"]
    assert fc.auc(drawn["label"], drawn["pixel"]) == pytest.approx(0.8, abs=0.04)
    assert np.array_equal(drawn["semantic"], folds["a"]["semantic"])
    weak, strong = (fc.synthetic_ceilings(folds, a, draws=2) for a in (0.6, 0.9))
    assert strong["mean_balanced_acc"]["best-linear"] > weak["mean_balanced_acc"]["best-linear"] + 0.05
    assert strong["mean_balanced_acc"]["semantic"] == pytest.approx(weak["mean_balanced_acc"]["semantic"])
    with pytest.raises(SystemExit, match="synthetic-pixel-auc"):
        fc.synthetic_pixel(folds, 1.2, seed=0)
