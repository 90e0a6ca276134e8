"""Detection metrics from labels (0 real, 1 fake), scores (p_fake) and hard decisions.

Written in numpy (no scikit-learn at run time) and checked against scikit-learn in the tests. A metric
that the data cannot define (AUC on a subset with one class, real accuracy with no real image) is
``None``, which the report writes as JSON ``null``: never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

# Order of the keys in every metrics dict (and in report tables).
METRIC_KEYS = (
    "balanced_acc",
    "real_acc",
    "fake_acc",
    "acc",
    "ap",
    "auc",
    "eer",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "ece",
    "n_real",
    "n_fake",
)
# Metrics averaged over subsets (mean, std, min) the way DDA's tables report balanced accuracy.
SUMMARY_KEYS = tuple(k for k in METRIC_KEYS if k not in ("acc", "n_real", "n_fake"))

Metrics = dict[str, Any]


def _as_arrays(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return y, s


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over the distinct scores, highest threshold first; the first point is
    (0, 0) at threshold +inf. A score ``>= threshold`` counts as fake. Needs both classes."""
    y, s = _as_arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both real and fake images")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: the points where the decision can change.
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.array([], dtype=np.int64)
    ends = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[ends]
    fps = (ends + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return fpr, tpr, thresholds


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count half), as scikit-learn's roc_auc_score."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision, as scikit-learn's average_precision_score."""
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("average precision needs both real and fake images")
    fpr, tpr, _ = roc_curve(y, s)
    n_neg = y.size - n_pos
    tps, fps = tpr[1:] * n_pos, fpr[1:] * n_neg
    precision = tps / np.maximum(tps + fps, 1)
    recall_steps = np.diff(np.r_[0.0, tpr[1:]])
    return float(np.sum(recall_steps * precision))


def equal_error_rate(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """The rate where false positives (reals called fake) equal misses (fakes called real), interpolated
    linearly between the two ROC points that bracket the crossing."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 at (0,0) to -1 at (1,1)
    idx = int(np.flatnonzero(diff <= 0)[0])
    if diff[idx] == 0 or idx == 0:
        return float(fpr[idx])
    d0, d1 = diff[idx - 1], diff[idx]
    w = d0 / (d0 - d1)
    return float(fpr[idx - 1] + w * (fpr[idx] - fpr[idx - 1]))


def tpr_at_fpr(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, max_fpr: float
) -> float:
    """Best detection rate over thresholds whose false-positive rate is at most ``max_fpr`` (no
    interpolation: a threshold the data can realise)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, n_bins: int = 15
) -> float:
    """Binary ECE of p_fake: over equal-width bins of p_fake, the size-weighted |mean p_fake - fake rate|.
    Defined for a single class too (a calibrated detector gives low p_fake to a set of reals)."""
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        raise ValueError("ECE of an empty set")
    p = np.clip(s, 0.0, 1.0)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        m = bins == b
        total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / y.size)


def _none_if_nan(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    decisions: Sequence[bool] | np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    n_bins: int = 15,
) -> Metrics:
    """All metrics of METRIC_KEYS for one detector on one set. ``decisions`` are the hard calls (True =
    fake); without them, ``scores >= threshold``. Entries with a NaN score are left out (counted in
    ``n_missing``). Undefined metrics are None."""
    y, s = _as_arrays(labels, scores)
    d = (s >= threshold) if decisions is None else np.asarray(decisions, dtype=bool).reshape(-1)
    if d.shape != y.shape:
        raise ValueError("decisions and labels differ in length")
    keep = ~np.isnan(s)
    n_missing = int((~keep).sum())
    y, s, d = y[keep], s[keep], d[keep]
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    real_acc = float((~d[y == 0]).mean()) if n_real else None
    fake_acc = float(d[y == 1].mean()) if n_fake else None
    both = n_real > 0 and n_fake > 0
    out: Metrics = {
        "balanced_acc": (real_acc + fake_acc) / 2 if both else None,  # type: ignore[operator]
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "acc": float((d == (y == 1)).mean()) if y.size else None,
        "ap": average_precision(y, s) if both else None,
        "auc": roc_auc(y, s) if both else None,
        "eer": equal_error_rate(y, s) if both else None,
        "tpr_at_1fpr": tpr_at_fpr(y, s, 0.01) if both else None,
        "tpr_at_5fpr": tpr_at_fpr(y, s, 0.05) if both else None,
        "ece": expected_calibration_error(y, s, n_bins) if y.size else None,
        "n_real": n_real,
        "n_fake": n_fake,
    }
    if n_missing:
        out["n_missing"] = n_missing
    return {k: (_none_if_nan(v) if isinstance(v, float) else v) for k, v in out.items()}


def summarize(per_subset: Mapping[str, Metrics | None], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """Mean, population std, min (and which subset) of each metric over the subsets that define it,
    as in DDA's "mean +/- std" and "min" rows. Subsets where a metric is None are left out of it;
    ``n_subsets`` says how many counted."""
    out: dict[str, Any] = {"mean": {}, "std": {}, "min": {}, "min_subset": {}, "n_subsets": {}}
    for key in keys:
        vals = [(name, m[key]) for name, m in per_subset.items() if m is not None and m.get(key) is not None]
        out["n_subsets"][key] = len(vals)
        if not vals:
            for part in ("mean", "std", "min", "min_subset"):
                out[part][key] = None
            continue
        arr = np.array([v for _, v in vals], dtype=np.float64)
        worst = int(np.argmin(arr))
        out["mean"][key] = float(arr.mean())
        out["std"][key] = float(arr.std())
        out["min"][key] = float(arr[worst])
        out["min_subset"][key] = vals[worst][0]
    return out


def class_resamples(
    labels: Sequence[int] | np.ndarray, n: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """``n`` bootstrap resamples of the indices of ``labels``, reals and fakes drawn separately so that each
    resample keeps both class counts (a balanced accuracy or AUC is defined on every one of them)."""
    y = np.asarray(labels).reshape(-1)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(n):
        yield np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])


def percentile_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values, rounded to 4 places."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [tail, 100 - tail])
    return round(float(lo), 4), round(float(hi), 4)


def bootstrap_interval(
    labels: Sequence[int] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of ``statistic(indices)`` over class-stratified resamples of the
    images; None when a class is missing (the statistics this serves are undefined then)."""
    y = np.asarray(labels).reshape(-1)
    if not ((y == 0).any() and (y == 1).any()):
        return None
    rng = np.random.default_rng(seed)
    return percentile_interval([statistic(idx) for idx in class_resamples(y, n, rng)], level)


def resampled_detection_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    decisions: Sequence[bool] | np.ndarray,
    resamples: Iterable[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy of ``decisions`` and AUC of ``scores`` (NaN scores left out of it) on each resample,
    an index array into the images holding both classes.

    The scores are sorted once; each resample is a weight per image (how often it was drawn) and its AUC
    the weighted Mann-Whitney statistic (ties count half), linear in the number of images, so a million
    scored images cost seconds, not a sort per resample."""
    y, s = _as_arrays(labels, scores)
    d = np.asarray(decisions, dtype=bool).reshape(-1)
    order = np.argsort(s, kind="mergesort")  # NaN scores last, each its own group of weight 0 below
    scored = ~np.isnan(s[order])
    real_sorted, fake_sorted = (y[order] == 0) & scored, (y[order] == 1) & scored
    tie_group = np.r_[0, np.cumsum(np.diff(s[order]) != 0)]
    n_groups = int(tie_group[-1]) + 1 if y.size else 0
    bacc, auc = [], []
    for idx in resamples:
        drawn = np.bincount(idx, minlength=y.size)
        n_real, n_fake = drawn[y == 0].sum(), drawn[y == 1].sum()
        bacc.append(((drawn * (~d & (y == 0))).sum() / n_real + (drawn * (d & (y == 1))).sum() / n_fake) / 2)
        w = drawn[order]
        reals = np.bincount(tie_group, weights=w * real_sorted, minlength=n_groups)
        fakes = np.bincount(tie_group, weights=w * fake_sorted, minlength=n_groups)
        below = np.cumsum(reals) - reals  # real draws with a strictly lower score
        auc.append((fakes * (below + 0.5 * reals)).sum() / (reals.sum() * fakes.sum()))
    return np.asarray(bacc, dtype=np.float64), np.asarray(auc, dtype=np.float64)


def detection_intervals(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    decisions: Sequence[bool] | np.ndarray,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]] | None:
    """Percentile-bootstrap intervals of balanced accuracy (of ``decisions``) and AUC (of ``scores``) on the
    same class-stratified resamples; None without both classes. NaN scores are left out."""
    y, s = _as_arrays(labels, scores)
    d = np.asarray(decisions, dtype=bool).reshape(-1)
    keep = ~np.isnan(s)
    y, s, d = y[keep], s[keep], d[keep]
    if not ((y == 0).any() and (y == 1).any()):
        return None
    bacc, auc = resampled_detection_metrics(y, s, d, class_resamples(y, n, np.random.default_rng(seed)))
    return {"balanced_acc": percentile_interval(bacc, level), "auc": percentile_interval(auc, level)}
