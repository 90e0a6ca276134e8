"""benchmarks/wild_eval.py: the bootstrap intervals it reports beside its leave-one-source-out table."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load_benchmark

we = load_benchmark("wild_eval")


def _calls() -> tuple[dict, dict, list[str], dict]:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    labels, calls = {}, {}
    for f in ("a", "b"):
        perfect = (y == 1, y * 0.8 + 0.1)
        good, worse = perfect[0].copy(), perfect[0].copy()
        if f == "a":  # of fold a's 30 fakes the semantic expert misses nine, the stack those and six more
            good[36:45] = False
            worse[30:45] = False
        noise = rng.random(60)
        labels[f] = y
        calls[f] = {
            "semantic": (perfect[1], good),
            "pixel": (noise, noise >= 0.5),
            "or": (perfect[1], good),
            "stack": (perfect[1], worse),
        }
    dets = ["pixel", "semantic", "or", "stack"]
    summary = {
        "pixel": {"mean_balanced_acc": 0.5},
        "semantic": {"mean_balanced_acc": 0.925},
        "or": {"mean_balanced_acc": 0.925},
        "stack": {"mean_balanced_acc": 0.875},
    }
    return labels, calls, dets, summary


def test_intervals_are_exact_where_nothing_can_move_and_paired_for_differences() -> None:
    labels, calls, dets, summary = _calls()
    iv = we.bootstrap_intervals(labels, calls, dets, summary, n=300)
    assert iv["better_single_expert"] == "semantic"
    assert iv["mean"]["semantic"]["auc"] == (1.0, 1.0)  # its ranking is perfect in every resample
    assert iv["per_fold"]["b"]["semantic"]["balanced_acc"] == (1.0, 1.0)
    same = iv["rule_minus_better_single"]["or"]
    assert same["mean_balanced_acc"] == 0.0 and same["interval"] == (0.0, 0.0)  # paired: identical calls
    worse = iv["rule_minus_better_single"]["stack"]
    assert abs(worse["mean_balanced_acc"] + 0.05) < 1e-12
    lo, hi = worse["interval"]
    assert lo < -0.05 < hi < 0  # paired on the same resamples, the six extra misses are always a loss
    assert iv["per_fold"]["b"]["stack"]["balanced_acc"] == (1.0, 1.0)
    plo, phi = iv["per_fold"]["a"]["pixel"]["auc"]
    assert plo < 0.5 < phi  # noise ranks at chance, and the interval says how loosely on 60 images


def test_the_report_prints_the_intervals_and_the_paired_gains() -> None:
    labels, calls, dets, summary = _calls()
    for d in dets:
        summary[d]["mean_auc"] = 0.5
    iv = we.bootstrap_intervals(labels, calls, dets, summary, n=100)
    res = {f: {"pixel": {"auc": 0.5}} for f in labels}
    text = "\n".join(we.render_intervals(iv, res, summary, dets, sorted(labels)))
    assert "| semantic | 0.925 [" in text
    assert "minus the better single expert (semantic)" in text and "or +0.000 [0.000, 0.000]" in text
    assert "stack -0.050 [" in text
    assert "Pixel AUC per fold: a 0.500 [" in text
