"""Metrics against scikit-learn on random data, and None for what a single class cannot define."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from aligngemini.eval import metrics as M


def _random_set(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    if ties:
        s = np.round(s, 1)  # many equal scores
    return y, s


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_ap_roc_match_sklearn(seed: int, ties: bool) -> None:
    y, s = _random_set(seed, ties=ties)
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


@pytest.mark.parametrize("seed", range(4))
def test_tpr_at_fpr_and_eer_against_brute_force(seed: int) -> None:
    y, s = _random_set(seed, n=200)
    thresholds = np.r_[np.unique(s), np.inf]
    fprs = np.array([(s[y == 0] >= t).mean() for t in thresholds])
    tprs = np.array([(s[y == 1] >= t).mean() for t in thresholds])
    for target in (0.01, 0.05, 0.2):
        assert M.tpr_at_fpr(y, s, target) == pytest.approx(tprs[fprs <= target].max())
    eer = M.equal_error_rate(y, s)
    fnrs = 1 - tprs
    # The EER lies between the FPR and FNR at the threshold where they come closest.
    best = np.argmin(np.abs(fnrs - fprs))
    assert min(fprs[best], fnrs[best]) - 0.02 <= eer <= max(fprs[best], fnrs[best]) + 0.02


def test_eer_of_perfect_and_inverted_detectors() -> None:
    y = np.array([0, 0, 1, 1])
    assert M.equal_error_rate(y, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert M.equal_error_rate(y, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0


def test_ece_matches_definition() -> None:
    y, s = _random_set(3)
    n_bins = 10
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        hi_ok = s <= edges[i + 1] if i == n_bins - 1 else s < edges[i + 1]
        m = (s >= edges[i]) & hi_ok
        if m.any():
            total += m.sum() * abs(s[m].mean() - y[m].mean())
    assert M.expected_calibration_error(y, s, n_bins) == pytest.approx(total / len(y))
    # A perfectly calibrated constant predictor on a 30% fake set.
    y2 = np.array([1] * 3 + [0] * 7)
    assert M.expected_calibration_error(y2, np.full(10, 0.3)) == pytest.approx(0.0)


def test_binary_metrics_accuracies_and_decisions() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.4])
    m = M.binary_metrics(y, s, threshold=0.5)
    assert m["real_acc"] == pytest.approx(3 / 4)
    assert m["fake_acc"] == pytest.approx(1 / 2)
    assert m["balanced_acc"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["acc"] == pytest.approx(4 / 6)
    assert (m["n_real"], m["n_fake"]) == (4, 2)
    # Explicit decisions override the threshold.
    m2 = M.binary_metrics(y, s, decisions=np.ones(6, dtype=bool))
    assert m2["real_acc"] == 0.0 and m2["fake_acc"] == 1.0 and m2["balanced_acc"] == 0.5
    assert m2["auc"] == m["auc"]
    assert set(M.METRIC_KEYS) <= set(m)


def test_single_class_subsets_give_none_not_numbers() -> None:
    only_fake = M.binary_metrics(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    for key in ("real_acc", "balanced_acc", "ap", "auc", "eer", "tpr_at_1fpr", "tpr_at_5fpr"):
        assert only_fake[key] is None, key
    assert only_fake["fake_acc"] == pytest.approx(0.6)
    assert only_fake["ece"] is not None
    only_real = M.binary_metrics(np.zeros(3, int), np.array([0.1, 0.7, 0.2]))
    assert only_real["fake_acc"] is None and only_real["auc"] is None
    assert only_real["real_acc"] == pytest.approx(2 / 3)
    empty = M.binary_metrics(np.zeros(0, int), np.zeros(0))
    assert all(empty[k] is None for k in M.METRIC_KEYS if not k.startswith("n_"))


def test_nan_scores_are_left_out_and_counted() -> None:
    y = np.array([0, 1, 1, 0])
    s = np.array([0.1, np.nan, 0.9, 0.2])
    m = M.binary_metrics(y, s)
    assert m["n_missing"] == 1 and m["n_fake"] == 1 and m["auc"] == 1.0


def test_summarize_mean_std_min_skip_none() -> None:
    per = {
        "a": {"balanced_acc": 0.9, "auc": 0.95},
        "b": {"balanced_acc": 0.7, "auc": None},
        "c": {"balanced_acc": 0.8, "auc": 0.85},
        "d": None,
    }
    out = M.summarize(per, keys=("balanced_acc", "auc", "ece"))
    assert out["mean"]["balanced_acc"] == pytest.approx(0.8)
    assert out["std"]["balanced_acc"] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert out["min"]["balanced_acc"] == 0.7 and out["min_subset"]["balanced_acc"] == "b"
    assert out["mean"]["auc"] == pytest.approx(0.9) and out["n_subsets"]["auc"] == 2
    assert out["mean"]["ece"] is None and out["n_subsets"]["ece"] == 0


def test_class_resamples_keep_each_class_count_and_draw_only_its_members() -> None:
    labels = np.array([0, 1, 1, 0, 1, 1, 1])
    for idx in M.class_resamples(labels, 50, np.random.default_rng(3)):
        assert idx.size == labels.size
        assert (labels[idx] == 0).sum() == 2 and (labels[idx] == 1).sum() == 5


def test_bootstrap_interval_of_a_mean_matches_its_standard_error() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(400, int), np.ones(400, int)]
    hits = rng.random(800) < 0.7  # per-image correctness, 70% in both classes
    lo, hi = M.bootstrap_interval(labels, lambda idx: hits[idx].mean(), n=2000)
    half = 1.96 * np.sqrt(0.7 * 0.3 / 800)  # normal approximation of the same interval
    assert lo < hits.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.2 * half
    assert M.bootstrap_interval(labels[:400], lambda idx: 0.0) is None  # one class: undefined
    same = M.bootstrap_interval(labels, lambda idx: hits[idx].mean(), n=200, seed=5)
    assert same == M.bootstrap_interval(labels, lambda idx: hits[idx].mean(), n=200, seed=5)


def test_detection_intervals_equal_a_plain_bootstrap_of_the_same_resamples() -> None:
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(60, int), np.ones(45, int)]
    scores = np.round(rng.random(105) * 0.6 + 0.4 * labels, 1)  # coarse: many ties
    decisions = scores >= 0.5
    fast = M.detection_intervals(labels, scores, decisions, n=300, seed=2)
    rs = list(M.class_resamples(labels, 300, np.random.default_rng(2)))
    slow_auc = M.percentile_interval([roc_auc_score(labels[i], scores[i]) for i in rs])
    slow_bacc = M.percentile_interval(
        [((~decisions[i][labels[i] == 0]).mean() + decisions[i][labels[i] == 1].mean()) / 2 for i in rs]
    )
    assert fast == {"balanced_acc": slow_bacc, "auc": slow_auc}
    lo, hi = fast["auc"]
    assert lo < M.roc_auc(labels, scores) < hi
    with_nan = np.r_[scores, np.nan]
    assert M.detection_intervals(np.r_[labels, 1], with_nan, np.r_[decisions, True], n=300, seed=2) == fast
    assert M.detection_intervals(labels[:60], scores[:60], decisions[:60]) is None
