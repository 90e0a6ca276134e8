"""Fusing branch scores into one verdict.

The paper's rule is OR: an image is fake when any branch's p_fake reaches that branch's threshold.
For ranking metrics we also need one fused probability. Each branch score is first *centred on its
threshold* (``logit(p) - logit(t)``, mapped back through the sigmoid) so that 0.5 means "at threshold"
for every branch; then:

- ``or``:       fused = max over branches of the centred scores. Fused >= 0.5 exactly when the OR rule fires.
- ``noisy-or``: fused = 1 - prod(1 - centred): grows with agreement, for ranking.
- ``mean``:     fused = mean of centred scores (an AND-leaning average, for comparison).
- ``stack``:    fused = sigmoid(bias + sum of weight x centred logit): a logistic stacker whose ``weights``
                and ``bias`` (``params``) are fitted on validation data by ``aligngemini calibrate``.

Each rule is one entry of ``RULES``; adding a rule is adding an entry (the CLI reads the names from it).

The verdict is "fake" for fused >= 0.5, "real" below, and "uncertain" inside ``uncertain_band = [lo, hi)``
on the fused score when a calibrated band is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-6


@dataclass
class FusionResult:
    p_fake: np.ndarray  # fused, [N]
    fake: np.ndarray  # bool [N]: the rule's decision (before the uncertain band)
    verdicts: list[str]  # "real" | "fake" | "uncertain"
    fired: list[list[str]]  # branches at or above threshold, per image


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def centre_on_threshold(p: np.ndarray, threshold: float) -> np.ndarray:
    """Monotone map of a branch's scores that sends its threshold to 0.5."""
    return 1.0 / (1.0 + np.exp(-(logit(np.asarray(p, dtype=np.float64)) - logit(np.array(threshold)))))


def _or(centred: np.ndarray, valid: np.ndarray, names: list[str], params: Mapping[str, Any]) -> np.ndarray:
    return np.where(valid, centred, -np.inf).max(axis=0)


def _noisy_or(
    centred: np.ndarray, valid: np.ndarray, names: list[str], params: Mapping[str, Any]
) -> np.ndarray:
    return 1.0 - np.where(valid, 1.0 - centred, 1.0).prod(axis=0)


def _mean(centred: np.ndarray, valid: np.ndarray, names: list[str], params: Mapping[str, Any]) -> np.ndarray:
    return np.where(valid, centred, 0.0).sum(axis=0) / valid.sum(axis=0)


def _stack(centred: np.ndarray, valid: np.ndarray, names: list[str], params: Mapping[str, Any]) -> np.ndarray:
    weights = params.get("weights") or {}
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(
            f"fusion rule 'stack' has no weight for branch(es) {missing}; run aligngemini calibrate"
        )
    w = np.array([float(weights[n]) for n in names])[:, None]
    z = float(params.get("bias", 0.0)) + np.where(valid, w * logit(centred), 0.0).sum(axis=0)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Rule:
    """``combine(centred [B, N], valid [B, N], branch names, params) -> fused [N]``, valid where any branch is."""

    combine: Callable[[np.ndarray, np.ndarray, list[str], Mapping[str, Any]], np.ndarray]
    help: str


RULES: dict[str, Rule] = {
    "or": Rule(_or, "the paper's OR: fake when any branch reaches its threshold (fused = max)"),
    "noisy-or": Rule(_noisy_or, "1 - product of (1 - centred score): grows with agreement"),
    "mean": Rule(_mean, "mean of centred scores: AND-leaning, for comparison"),
    "stack": Rule(_stack, "logistic stacker on the centred logits, weights fitted by calibrate"),
}


def fuse(
    branch_scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    rule: str = "or",
    uncertain_band: tuple[float, float] | list[float] | None = None,
    params: Mapping[str, Any] | None = None,
) -> FusionResult:
    """Fuse per-branch p_fake arrays (same length) under ``rule`` (``params``: the rule's fitted parameters,
    e.g. the stacker's weights). NaN scores (a branch that could not score an image) are ignored for that
    image; an image no branch scored gets NaN and verdict "error"."""
    if rule not in RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {tuple(RULES)}")
    if not branch_scores:
        raise ValueError("no branch scores to fuse")
    names = sorted(branch_scores)
    missing = [n for n in names if n not in thresholds]
    if missing:
        raise ValueError(f"no threshold for branch(es) {missing}")
    raw = np.stack([np.asarray(branch_scores[n], dtype=np.float64) for n in names])  # [B, N]
    centred = np.stack([centre_on_threshold(raw[i], thresholds[n]) for i, n in enumerate(names)])
    valid = ~np.isnan(raw)
    with np.errstate(all="ignore"):
        fused = RULES[rule].combine(centred, valid, names, params or {})
    none_valid = ~valid.any(axis=0)
    fused = np.where(none_valid, np.nan, fused)
    fired_mask = valid & (raw >= np.array([thresholds[n] for n in names])[:, None])
    fake = fused >= 0.5
    if rule == "or":  # the OR decision is exactly "some branch fired"; guard against float ties
        fake = fired_mask.any(axis=0)
    if uncertain_band is not None:
        lo, hi = float(uncertain_band[0]), float(uncertain_band[1])
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError(f"uncertain_band {uncertain_band} must satisfy 0 <= lo <= 0.5 <= hi <= 1")
    verdicts: list[str] = []
    for j in range(fused.shape[0]):
        if none_valid[j]:
            verdicts.append("error")
        elif uncertain_band is not None and lo <= fused[j] < hi:
            verdicts.append("uncertain")
        else:
            verdicts.append("fake" if fake[j] else "real")
    fired = [[n for i, n in enumerate(names) if fired_mask[i, j]] for j in range(fused.shape[0])]
    return FusionResult(fused, fake & ~none_valid, verdicts, fired)
