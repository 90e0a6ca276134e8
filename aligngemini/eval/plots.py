"""PNG figures for evaluation reports (matplotlib's Agg canvas, no pyplot state, no display needed).

Each function writes one file and returns its path, or None when the data cannot make that figure
(a ROC curve with one class, a branch scatter without both branches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aligngemini.eval.metrics import roc_curve

COLORS = {"fused": "#222222", "pixel": "#1f77b4", "semantic": "#d62728"}
REAL_COLOR, FAKE_COLOR = "#2ca02c", "#7b3fb0"
DPI = 110


def _figure(width: float, height: float, **margins: float) -> Any:
    """A figure with fixed margins (constrained layout would double the drawing time)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.9 / width, "right": 1 - 0.25 / width, "bottom": 0.55 / height,
                           "top": 1 - 0.35 / height, "wspace": 0.3, **margins})  # fmt: skip
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def roc_plot(
    path: Path, labels: np.ndarray, scores: Mapping[str, np.ndarray], title: str = ""
) -> Path | None:
    """ROC curves of the fused score and each branch, AUC in the legend; log-scaled FPR inset marks 1%/5%."""
    if len(np.unique(labels)) < 2:
        return None
    fig = _figure(9.5, 4.4)
    ax, ax_log = fig.subplots(1, 2)
    for name, s in scores.items():
        keep = ~np.isnan(s)
        if len(np.unique(labels[keep])) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels[keep], s[keep])
        auc = float(np.trapezoid(tpr, fpr))
        for a in (ax, ax_log):
            a.step(fpr, tpr, where="post", color=COLORS.get(name), label=f"{name} (AUC {auc:.3f})", lw=1.6)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="false-positive rate (reals called fake)", ylabel="true-positive rate (fakes caught)",
           xlim=(0, 1), ylim=(0, 1.01), title=title or "ROC")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax_log.set_xscale("log")
    ax_log.set(xlim=(1e-3, 1), ylim=(0, 1.01), xlabel="false-positive rate (log)", title="low-FPR region")
    for x in (0.01, 0.05):
        ax_log.axvline(x, ls="--", color="grey", lw=0.8)
    return _save(fig, path)


def histogram_plot(
    path: Path, labels: np.ndarray, scores: Mapping[str, np.ndarray], thresholds: Mapping[str, float]
) -> Path | None:
    """Score histograms per class, one panel per branch (and the fused score), with the threshold."""
    names = list(scores)
    if not names:
        return None
    fig = _figure(4.0 * len(names), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    bins = np.linspace(0, 1, 41)
    for ax, name in zip(axes, names, strict=True):
        s = scores[name]
        for lab, color, text in ((0, REAL_COLOR, "real"), (1, FAKE_COLOR, "fake")):
            v = s[(labels == lab) & ~np.isnan(s)]
            if v.size:
                ax.hist(np.clip(v, 0, 1), bins=bins, color=color, alpha=0.5, histtype="stepfilled",
                        label=f"{text} (n={v.size})")  # fmt: skip
        t = thresholds.get(name)
        if t is not None:
            ax.axvline(t, color="black", ls="--", lw=1, label=f"threshold {t:.3g}")
        ax.set(title=name, xlabel="p_fake", ylabel="images", xlim=(0, 1))
        ax.legend(fontsize=7)
    return _save(fig, path)


def scatter_plot(
    path: Path, labels: np.ndarray, pixel: np.ndarray, semantic: np.ndarray, thresholds: Mapping[str, float]
) -> Path | None:
    """Pixel vs semantic score per image, coloured by class, with both thresholds. Fakes in the lower-left
    quadrant are missed by both experts; fakes caught by one branch only show each expert's blind spot."""
    keep = ~(np.isnan(pixel) | np.isnan(semantic))
    if not keep.any():
        return None
    tp, ts = thresholds["pixel"], thresholds["semantic"]
    fig = _figure(6.2, 5.8)
    ax = fig.subplots()
    for lab, color, text, marker in ((0, REAL_COLOR, "real", "o"), (1, FAKE_COLOR, "fake", "^")):
        m = keep & (labels == lab)
        ax.scatter(pixel[m], semantic[m], s=14, c=color, alpha=0.65, marker=marker, label=f"{text} (n={int(m.sum())})",
                   edgecolors="none")  # fmt: skip
    ax.axvline(tp, color="black", ls="--", lw=1)
    ax.axhline(ts, color="black", ls="--", lw=1)
    fakes = keep & (labels == 1)
    reals = keep & (labels == 0)
    px, se = pixel >= tp, semantic >= ts
    quadrants = {
        "semantic only": ((0.02, 0.98), "left", "top", ~px & se),
        "both": ((0.98, 0.98), "right", "top", px & se),
        "pixel only": ((0.98, 0.02), "right", "bottom", px & ~se),
        "neither (missed)": ((0.02, 0.02), "left", "bottom", ~px & ~se),
    }
    for name, ((x, y), ha, va, m) in quadrants.items():
        ax.text(x, y, f"{name}\nfakes {int((fakes & m).sum())}, reals {int((reals & m).sum())}", transform=ax.transAxes,
                ha=ha, va=va, fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})  # fmt: skip
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="pixel branch p_fake", ylabel="semantic branch p_fake",
           title="branch agreement (dashed: thresholds)")  # fmt: skip
    ax.legend(loc="center left", fontsize=8)
    return _save(fig, path)


def subsets_plot(
    path: Path, subsets: Mapping[str, Mapping[str, Mapping[str, Any] | None]], roles: Sequence[str]
) -> Path | None:
    """Balanced accuracy per subset, one bar per detector (fused, each branch)."""
    names = list(subsets)
    if not names:
        return None
    longest = max(len(n) for n in names)
    fig = _figure(
        7.5, 1.2 + 0.42 * len(names) * max(1, len(roles)) / 2, left=min(0.45, 0.2 + 0.012 * longest)
    )
    ax = fig.subplots()
    height = 0.8 / max(1, len(roles))
    y = np.arange(len(names))
    for k, role in enumerate(roles):
        vals = [((subsets[n].get(role) or {}).get("balanced_acc")) for n in names]
        arr = np.array([np.nan if v is None else v for v in vals], dtype=float)
        if np.isnan(arr).all():
            continue
        ax.barh(y + k * height, arr, height=height, color=COLORS.get(role), label=role)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(y + height * (len(roles) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="balanced accuracy", title="per subset (dotted: chance)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def robustness_plot(path: Path, curves: Sequence[Mapping[str, Any]], roles: Sequence[str]) -> Path | None:
    """One panel per sweep: balanced accuracy against the perturbation's parameter, per detector;
    dotted lines mark the clean images' accuracy."""
    if not curves:
        return None
    fig = _figure(4.4 * len(curves), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, curve in zip(axes, curves, strict=True):
        xs = np.array(curve["values"], dtype=float)
        for role in roles:
            ys = np.array(
                [np.nan if v is None else v for v in curve["balanced_acc"].get(role, [])], dtype=float
            )
            if ys.size == 0 or np.isnan(ys).all():
                continue
            ax.plot(xs, ys, marker="o", ms=3, color=COLORS.get(role), label=role)
            clean = curve.get("clean", {}).get(role)
            if clean is not None:
                ax.axhline(clean, color=COLORS.get(role), ls=":", lw=0.9)
        if curve["op"] == "resize":
            ax.set_xscale("log", base=2)
        ax.set(title=curve["name"], xlabel=curve["parameter"], ylabel="balanced accuracy", ylim=(0, 1.02))
        ax.axhline(0.5, color="grey", ls="--", lw=0.6)
        ax.legend(fontsize=7)
    return _save(fig, path)
