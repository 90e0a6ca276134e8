"""Choose per-branch thresholds (and the uncertain band) on a validation set, and write them into a
copy of the bundle.

Targets (for every rule):
- ``fpr``: the most fakes caught while the *fused* false-positive rate on the reals stays at or below
  the target. Under the OR rule each branch's own FPR is then at most the target, and their union is
  what is held to it.
- ``balanced``: the highest fused balanced accuracy.

For the OR rule with one or two branches the search is exact over the thresholds that matter (just
above observed scores). Other rules (``noisy-or``, ``mean``) are searched coordinate-wise through
``aligngemini.fusion.fuse`` itself over a quantile grid, so the result matches what the detector does.
The ``stack`` rule first gives each branch its own balanced threshold (so that "fired" keeps its meaning),
then fits the stacker's weights by class-balanced logistic regression on the centred logits, and sets
its bias for the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aligngemini.fusion import centre_on_threshold, fuse, logit

NEVER = 1.0 + 1e-9  # a threshold no probability reaches: the branch never fires
CALIBRATION_HEADING = "\n## Calibration\n"  # how card_section's section opens in a model card
_GRID = 128


@dataclass
class Operating:
    """A detector's rates on a labelled set."""

    fpr: float | None
    tpr: float | None
    balanced_acc: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"fpr": self.fpr, "tpr": self.tpr, "balanced_acc": self.balanced_acc}


@dataclass
class Calibration:
    thresholds: dict[str, float]
    uncertain_band: list[float] | None
    target: str
    target_fpr: float | None
    rule: str
    n_real: int
    n_fake: int
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(
        default_factory=dict
    )  # the rule's fitted parameters (stack: weights, bias)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_fpr": self.target_fpr,
            "rule": self.rule,
            "params": self.params,
            "thresholds": self.thresholds,
            "uncertain_band": self.uncertain_band,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "before": self.before,
            "after": self.after,
        }


def _rates(labels: np.ndarray, fake: np.ndarray) -> Operating:
    reals, fakes = labels == 0, labels == 1
    fpr = float(fake[reals].mean()) if reals.any() else None
    tpr = float(fake[fakes].mean()) if fakes.any() else None
    bal = (1 - fpr + tpr) / 2 if fpr is not None and tpr is not None else None
    return Operating(fpr, tpr, bal)


def operating_point(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    thresholds: Mapping[str, float],
    rule: str = "or",
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fused and per-branch FPR/TPR/balanced accuracy at ``thresholds`` (through ``fuse``)."""
    fr = fuse(scores, thresholds, rule, params=params)
    out: dict[str, Any] = {"fused": _rates(labels, np.asarray(fr.fake)).to_dict()}
    for role, s in scores.items():
        out[role] = _rates(labels, s >= thresholds[role]).to_dict()
    return out


def _just_above(values: np.ndarray) -> np.ndarray:
    return np.nextafter(values, np.inf)


def _lowest_threshold_within(b_real: np.ndarray, budget: int) -> float:
    """Lowest threshold on a branch that fires on at most ``budget`` of the given reals."""
    if budget >= b_real.size:
        return 0.0
    top = np.sort(b_real)[::-1]
    return float(_just_above(np.array(top[budget]))) if budget >= 0 else NEVER


def _or_fpr(
    a: np.ndarray, b: np.ndarray | None, labels: np.ndarray, target_fpr: float
) -> tuple[float, float | None]:
    reals, fakes = labels == 0, labels == 1
    n_real = int(reals.sum())
    budget = int(np.floor(target_fpr * n_real + 1e-9))
    a_real = a[reals]
    # Thresholds on A worth trying: never fire, or just above one of the top (budget + 1) real scores.
    top_a = np.unique(a_real)[::-1][: budget + 1]
    cands_a = np.r_[NEVER, _just_above(top_a), 0.0 if budget >= n_real else NEVER]
    best: tuple[float, float, float, float | None] | None = None  # (tpr, -fpr, ta, tb)
    for ta in np.unique(cands_a):
        fired_a = a >= ta
        used = int((fired_a & reals).sum())
        if used > budget:
            continue
        if b is None:
            fake = fired_a
            tb = None
        else:
            rest = reals & ~fired_a
            tb = _lowest_threshold_within(b[rest], budget - used)
            fake = fired_a | (b >= tb)
        tpr = float(fake[fakes].mean()) if fakes.any() else 0.0
        fpr = float(fake[reals].mean()) if reals.any() else 0.0
        key = (tpr, -fpr, float(ta), tb)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None  # NEVER on every branch always satisfies the budget
    return best[2], best[3]


def _best_gain_threshold(b: np.ndarray, gain_if_fired: np.ndarray) -> tuple[float, float]:
    """Threshold on ``b`` maximising the summed ``gain_if_fired`` of the images it fires on (a fake's weight
    counts for, a real's against); (threshold, gain)."""
    if b.size == 0:
        return NEVER, 0.0
    order = np.argsort(-b, kind="mergesort")
    sb = b[order]
    gain = np.cumsum(gain_if_fired[order])
    # Only cut between distinct scores: the last index of each run of ties.
    ends = np.r_[np.flatnonzero(np.diff(sb)), sb.size - 1]
    g = gain[ends]
    k = int(np.argmax(g))
    if g[k] <= 0:
        return NEVER, 0.0
    return float(sb[ends[k]]), float(g[k])


def _or_balanced(
    a: np.ndarray, b: np.ndarray | None, labels: np.ndarray, weights: np.ndarray
) -> tuple[float, float | None]:
    gain_if_fired = np.where(labels == 1, weights, -weights)
    if b is None:
        t, _ = _best_gain_threshold(a, gain_if_fired)
        return t, None
    uniq = np.unique(a)
    if uniq.size > 4 * _GRID:
        uniq = np.unique(np.quantile(a, np.linspace(0, 1, 4 * _GRID)))
    cands = np.unique(np.r_[NEVER, uniq, 0.5])
    best: tuple[float, float, float] | None = None
    for ta in cands:
        fired_a = a >= ta
        base = gain_if_fired[fired_a].sum()
        tb, g = _best_gain_threshold(b[~fired_a], gain_if_fired[~fired_a])
        total = float(base + g)
        if best is None or total > best[0] + 1e-12:
            best = (total, float(ta), tb)
    assert best is not None
    return best[1], best[2]


def _objective(
    labels: np.ndarray, fake: np.ndarray, target: str, target_fpr: float | None, weights: np.ndarray
) -> tuple[float, ...]:
    if target == "fpr":
        op = _rates(labels, fake)
        fpr, tpr = op.fpr or 0.0, op.tpr or 0.0
        if fpr <= (target_fpr or 0) + 1e-12:
            return (1.0, tpr, -fpr)
        return (0.0, -fpr, tpr)  # not there yet: first bring the false positives down
    # Balanced accuracy under ``weights`` (each class, or each class of each group, one equal share).
    return (float(weights[fake == (labels == 1)].sum() / weights.sum()),)


def _coordinate_search(
    scores: Mapping[str, np.ndarray], labels: np.ndarray, rule: str, target: str, target_fpr: float | None,
    start: Mapping[str, float], weights: np.ndarray, rounds: int = 3,
) -> dict[str, float]:  # fmt: skip
    roles = sorted(scores)
    th = {r: float(start.get(r, 0.5)) for r in roles}
    grids = {
        r: np.unique(np.r_[np.quantile(scores[r], np.linspace(0, 1, _GRID)), 0.5, th[r], NEVER - 1e-9])
        for r in roles
    }

    def objective(thresholds: Mapping[str, float]) -> tuple[float, ...]:
        return _objective(
            labels, np.asarray(fuse(scores, thresholds, rule).fake), target, target_fpr, weights
        )

    best = objective(th)
    for _ in range(rounds):
        changed = False
        for r in roles:
            for t in grids[r]:
                cand = {**th, r: float(np.clip(t, 1e-6, 1 - 1e-6))}
                obj = objective(cand)
                if obj > best:
                    best, th, changed = obj, cand, True
        if not changed:
            break
    return th


def calibrate_thresholds(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    rule: str = "or",
    target: str = "fpr",
    target_fpr: float = 0.05,
    current: Mapping[str, float] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-branch thresholds for ``target`` ("fpr" or "balanced") on validation ``scores``/``labels``. With
    ``groups`` (one label per image, e.g. its source) the balanced target weighs each class of each group
    equally (for groups with both classes: the mean of their balanced accuracies), so that one large source
    does not set the threshold for all."""
    labels = np.asarray(labels).astype(np.int64)
    scores = {r: np.asarray(s, dtype=np.float64) for r, s in scores.items()}
    if target not in ("fpr", "balanced"):
        raise ValueError(f"unknown target {target!r}; use 'fpr' or 'balanced'")
    if not (labels == 0).any():
        raise ValueError("calibration needs real images (the false-positive rate is measured on them)")
    if target == "balanced" and not (labels == 1).any():
        raise ValueError("a balanced-accuracy target needs fake images too")
    if target == "fpr" and not 0 <= target_fpr < 1:
        raise ValueError(f"target FPR must lie in [0, 1), got {target_fpr}")
    if any(np.isnan(s).any() for s in scores.values()):
        raise ValueError("scores contain NaN; drop the images that could not be scored first")
    roles = sorted(scores)
    weights = balance_weights(labels, groups)
    if rule == "or" and 1 <= len(roles) <= 2:
        a = scores[roles[0]]
        b = scores[roles[1]] if len(roles) == 2 else None
        ta, tb = _or_fpr(a, b, labels, target_fpr) if target == "fpr" else _or_balanced(a, b, labels, weights)
        out = {roles[0]: ta}
        if b is not None:
            out[roles[1]] = tb  # type: ignore[assignment]
        return {r: float(min(t, NEVER)) for r, t in out.items()}
    return _coordinate_search(scores, labels, rule, target, target_fpr, current or {}, weights)


def balance_weights(labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Sample weights giving each class, and with ``groups`` each class of each group, the same total: a
    group of many images (one large source) then counts as much as a small one, not as much as its size."""
    from sklearn.utils.class_weight import compute_sample_weight

    keys = np.asarray(labels).astype(str)
    if groups is not None:
        keys = np.char.add(np.char.add(np.asarray(groups).astype(str), "\x1f"), keys)
    return compute_sample_weight("balanced", keys)


def fit_stack(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    thresholds: Mapping[str, float],
    *,
    target: str = "balanced",
    target_fpr: float = 0.05,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``stack`` rule's ``weights`` and ``bias``: class-balanced logistic regression on each branch's
    centred logit (with ``groups``, balanced per class within each group), weights kept non-negative; for an
    ``fpr`` target the bias is then lowered until the fused FPR meets it."""
    from sklearn.linear_model import LogisticRegression

    roles = sorted(scores)
    x = np.stack([_centred_logit(scores[r], thresholds[r]) for r in roles], axis=1)
    weight = balance_weights(labels, groups)
    # Each expert may only raise P(fake): a negative weight would read "looks generated, so it is real",
    # which no detector should learn (it can only come from a quirk of the fitting data). A branch whose
    # fitted weight is negative is given weight 0 and the others are fitted again.
    keep = list(range(len(roles)))
    while True:
        lr = LogisticRegression(C=1.0).fit(x[:, keep], labels, sample_weight=weight)
        if (lr.coef_[0] >= 0).all() or len(keep) == 1:
            break
        keep = [k for k, w in zip(keep, lr.coef_[0], strict=True) if w >= 0] or [
            keep[int(np.argmax(lr.coef_[0]))]
        ]
    coef = np.zeros(len(roles))
    coef[keep] = np.maximum(lr.coef_[0], 0.0)
    weights = {r: float(w) for r, w in zip(roles, coef, strict=True)}
    bias = float(lr.intercept_[0])
    if target == "fpr":
        z = x @ coef
        real_z = np.sort(z[labels == 0])[::-1]
        budget = int(np.floor(target_fpr * real_z.size + 1e-9))
        if budget < real_z.size:  # fused >= 0.5 exactly when z + bias >= 0: cut just above that real
            bias = min(bias, -(float(real_z[budget]) + 1e-7))  # a margin for rounding inside fuse
    return {"weights": weights, "bias": bias}


def _centred_logit(p: np.ndarray, threshold: float) -> np.ndarray:
    return logit(centre_on_threshold(p, threshold))


def choose_uncertain_band(
    p_fused: np.ndarray, labels: np.ndarray, fake: np.ndarray, width: float
) -> list[float] | None:
    """An interval [lo, hi) of the fused score, ``width`` wide and containing 0.5 (the decision point),
    placed to hold as many of the fused decision's errors as it can (then as few correct calls)."""
    if width <= 0:
        return None
    if width >= 1:
        return [0.0, 1.0]
    p = np.asarray(p_fused, dtype=np.float64)
    wrong = np.asarray(fake, dtype=bool) != (np.asarray(labels) == 1)
    lo_min, lo_max = max(0.0, 0.5 - width), min(0.5, 1.0 - width)
    cands = np.unique(np.r_[lo_min, lo_max, p[(p >= lo_min) & (p <= lo_max)]])
    best_key: tuple[int, int, float] | None = None
    best_lo = lo_min
    for lo in cands:
        inside = (p >= lo) & (p < lo + width)
        key = (int((inside & wrong).sum()), -int((inside & ~wrong).sum()), -abs(lo + width / 2 - 0.5))
        if best_key is None or key > best_key:
            best_key, best_lo = key, float(lo)
    return [round(best_lo, 6), round(min(1.0, best_lo + width), 6)]


def calibrate(
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    rule: str = "or",
    target: str = "fpr",
    target_fpr: float = 0.05,
    current: Mapping[str, float] | None = None,
    current_band: Sequence[float] | None = None,
    uncertain_width: float | None = None,
    groups: np.ndarray | None = None,
) -> Calibration:
    """Thresholds, band and the before/after operating points on the validation set. ``groups`` (one label per
    image, e.g. its source) makes every balanced fit, the thresholds' and the ``stack``'s, weigh each group's
    classes equally."""
    labels = np.asarray(labels).astype(np.int64)
    current = dict(current or {r: 0.5 for r in scores})
    params: dict[str, Any] = {}
    if rule == "stack":  # each branch at its own balanced point, then the stacker on top
        thresholds = {
            r: calibrate_thresholds({r: s}, labels, target="balanced", groups=groups)[r]
            for r, s in scores.items()
        }
        params = fit_stack(scores, labels, thresholds, target=target, target_fpr=target_fpr, groups=groups)
    else:
        thresholds = calibrate_thresholds(
            scores, labels, rule=rule, target=target, target_fpr=target_fpr, current=current, groups=groups
        )
    band: list[float] | None = list(current_band) if current_band else None
    if uncertain_width is not None:
        fr = fuse(scores, thresholds, rule, params=params)
        band = choose_uncertain_band(fr.p_fake, labels, fr.fake, uncertain_width)
    before = {
        "thresholds": current,
        **operating_point(scores, labels, current, rule if rule != "stack" else "or"),
    }
    return Calibration(
        thresholds=thresholds,
        uncertain_band=band,
        target=target,
        target_fpr=target_fpr if target == "fpr" else None,
        rule=rule,
        n_real=int((labels == 0).sum()),
        n_fake=int((labels == 1).sum()),
        before=before,
        after={"thresholds": thresholds, **operating_point(scores, labels, thresholds, rule, params)},
        params=params,
    )


def card_section(cal: Calibration, data: Sequence[str]) -> str:
    """Markdown appended to the calibrated copy's model card."""
    goal = (f"fused false-positive rate <= {100 * cal.target_fpr:.1f}% on reals, most fakes caught"
            if cal.target == "fpr" else "highest fused balanced accuracy")  # fmt: skip

    def row(name: str, d: dict[str, Any]) -> str:
        cells = [("—" if d.get(k) is None else f"{100 * d[k]:.1f}") for k in ("fpr", "tpr", "balanced_acc")]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = [
        *CALIBRATION_HEADING.split("\n"),
        f"Thresholds chosen by `aligngemini calibrate` on {cal.n_real} real and {cal.n_fake} fake images "
        f"({', '.join(data)}), rule `{cal.rule}`, goal: {goal}.",
        "",
        "| | " + " | ".join(cal.thresholds) + " | uncertain band |",
        "|---|" + "---|" * len(cal.thresholds) + "---|",
        "| before | "
        + " | ".join(f"{cal.before['thresholds'].get(r, float('nan')):.4g}" for r in cal.thresholds)
        + " | |",
        "| after | "
        + " | ".join(f"{t:.4g}" for t in cal.thresholds.values())
        + f" | {cal.uncertain_band or '—'} |",
        "",
        "Rates on the calibration set (%, in-sample: expect a little worse on new data):",
        "",
        "| detector | FPR before | TPR before | bal. acc before | FPR after | TPR after | bal. acc after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("fused", *cal.thresholds):
        b, a = row(name, cal.before[name]), row(name, cal.after[name])
        lines.append(b + a.split("|", 2)[2])
    return "\n".join(lines) + "\n"
