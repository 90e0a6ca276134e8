"""The audit's two probes and the metrics they report.

- Pixel probe: a small CNN on high-pass residuals (image minus its 3x3 local mean) of random 64-96 px
  crops. It sees texture and noise, not scenes: near chance on a set without pixel cues, well above
  chance where a decoder left its traces.
- Embedding probe: logistic regression on image embeddings (CLIP). It sees scenes, not fine pixels:
  near chance where each fake shares its real's scene, above chance where content differs.

Both are trained on one split and measured on another; numbers come with a bootstrap interval so that a
"near chance" on 60 images is read as what it is.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

# --------------------------------------------------------------------------------------------------
# metrics


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of real and fake accuracy at ``threshold`` on P(fake); labels 0 real, 1 fake."""
    labels = np.asarray(labels)
    pred = np.asarray(scores) >= threshold
    accs = [float(np.mean(pred[labels == c] == bool(c))) for c in (0, 1) if np.any(labels == c)]
    return float(np.mean(accs)) if accs else float("nan")


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, None when one class is missing."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def balanced_accuracy_interval(
    labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> tuple[float, float]:
    """95% bootstrap interval of balanced accuracy (images resampled within each class); NaNs without both."""
    from aligngemini.eval.metrics import bootstrap_interval

    labels, scores = np.asarray(labels), np.asarray(scores)
    ci = bootstrap_interval(labels, lambda idx: balanced_accuracy(labels[idx], scores[idx], threshold))
    return ci if ci is not None else (float("nan"), float("nan"))


@dataclass
class ProbeResult:
    probe: str  # pixel-cnn | clip-logreg | metadata
    measured_on: str  # e.g. "val split (sources disjoint from train)"
    n_train: dict[str, int]
    n_eval: dict[str, int]
    balanced_accuracy: float
    real_accuracy: float
    fake_accuracy: float
    auc: float | None
    ci95: tuple[float, float]
    train_balanced_accuracy: float | None = None
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    # Per-image P(fake) on the eval images that were scored, and their indices in the eval input
    # (the pixel probe leaves out images smaller than its crop); kept out of the JSON.
    eval_scores: np.ndarray | None = field(default=None, repr=False)
    eval_index: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("eval_scores")
        d.pop("eval_index")
        for key in ("balanced_accuracy", "real_accuracy", "fake_accuracy", "auc", "train_balanced_accuracy"):
            if isinstance(d[key], float):
                d[key] = round(d[key], 4)
        d["ci95"] = list(self.ci95)
        d["seconds"] = round(self.seconds, 1)
        return d


def summarize(
    probe: str,
    measured_on: str,
    y_train: np.ndarray,
    y_eval: np.ndarray,
    scores: np.ndarray,
    *,
    train_scores: np.ndarray | None = None,
    seconds: float = 0.0,
    notes: dict[str, Any] | None = None,
    eval_index: np.ndarray | None = None,
) -> ProbeResult:
    y_eval = np.asarray(y_eval)
    scores = np.asarray(scores)
    pred = scores >= 0.5
    real_acc = float(np.mean(~pred[y_eval == 0])) if np.any(y_eval == 0) else float("nan")
    fake_acc = float(np.mean(pred[y_eval == 1])) if np.any(y_eval == 1) else float("nan")
    return ProbeResult(
        probe=probe,
        measured_on=measured_on,
        n_train=_class_counts(y_train),
        n_eval=_class_counts(y_eval),
        balanced_accuracy=balanced_accuracy(y_eval, scores),
        real_accuracy=real_acc,
        fake_accuracy=fake_acc,
        auc=auc(y_eval, scores),
        ci95=balanced_accuracy_interval(y_eval, scores),
        train_balanced_accuracy=None if train_scores is None else balanced_accuracy(y_train, train_scores),
        seconds=seconds,
        notes=notes or {},
        eval_scores=scores,
        eval_index=np.arange(len(scores)) if eval_index is None else np.asarray(eval_index),
    )


def _class_counts(y: np.ndarray) -> dict[str, int]:
    y = np.asarray(y)
    return {"real": int(np.sum(y == 0)), "fake": int(np.sum(y == 1))}


# --------------------------------------------------------------------------------------------------
# pixel probe


@dataclass
class PixelProbeConfig:
    crop_min: int = 64
    crop_max: int = 96
    crops_per_image: int = 8  # extracted once per image; training draws sub-crops of these
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    threads: int = 1  # on a shared 2-core machine one thread is faster than two
    seed: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.crop_min <= self.crop_max:
            raise ValueError(
                f"pixel probe: need 8 <= crop_min <= crop_max, got {self.crop_min}, {self.crop_max}"
            )
        if self.steps < 1 or self.batch_size < 2 or self.crops_per_image < 1:
            raise ValueError("pixel probe: steps >= 1, batch_size >= 2, crops_per_image >= 1")


def extract_crops(image: Image.Image, size: int, count: int, rng: np.random.Generator) -> np.ndarray | None:
    """``count`` random ``size`` x ``size`` crops as uint8 [count, size, size, 3]; None if the image is smaller."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    if h < size or w < size:
        return None
    ys = rng.integers(0, h - size + 1, size=count)
    xs = rng.integers(0, w - size + 1, size=count)
    return np.stack([arr[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)])


def _residual_cnn(width: int) -> Any:
    import torch
    from torch import nn

    class ResidualCNN(nn.Module):
        """Fixed high-pass (x minus its 3x3 mean), then four small conv blocks and global average pooling."""

        def __init__(self) -> None:
            super().__init__()
            w = width

            def block(cin: int, cout: int, stride: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )

            # A 3x3 kernel at stride 2 still sees every residual pixel; striding from the start keeps the
            # probe cheap enough for a CPU (a few minutes for a few hundred steps).
            self.body = nn.Sequential(
                block(3, w, 2), block(w, 2 * w, 2), block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1)
            )
            self.head = nn.Linear(4 * w, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] in [0, 1]
            local_mean = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            residual = (x - local_mean) * 20.0  # residuals are a few grey levels; bring them to O(1)
            feats = self.body(residual).mean(dim=(2, 3))
            return self.head(feats).squeeze(1)

    return ResidualCNN()


def _to_tensor(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)


def train_pixel_probe(
    crops: np.ndarray, labels: np.ndarray, cfg: PixelProbeConfig, *, progress: bool = True
) -> Any:
    """Train the residual CNN on pre-extracted crops ``[N, K, S, S, 3]`` with class-balanced batches of
    random ``crop_min``-``crop_max`` sub-crops and flips."""
    import torch

    torch.manual_seed(cfg.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        rng = np.random.default_rng(cfg.seed)
        model = _residual_cnn(cfg.width)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
        if any(len(i) == 0 for i in by_class):
            raise ValueError("pixel probe: the training split needs images of both classes")
        half = cfg.batch_size // 2
        k, s = crops.shape[1], crops.shape[2]
        model.train()
        bar = tqdm(range(cfg.steps), desc="pixel probe", unit="step", file=sys.stderr, disable=not progress)
        for _ in bar:
            idx = np.concatenate([rng.choice(by_class[0], half), rng.choice(by_class[1], half)])
            size = int(rng.integers(cfg.crop_min, min(cfg.crop_max, s) + 1))
            which = rng.integers(0, k, size=len(idx))
            oy = rng.integers(0, s - size + 1, size=len(idx))
            ox = rng.integers(0, s - size + 1, size=len(idx))
            batch = np.stack(
                [
                    crops[i, j, y : y + size, x : x + size]
                    for i, j, y, x in zip(idx, which, oy, ox, strict=True)
                ]
            )
            flip = rng.random(len(idx)) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            x = _to_tensor(batch)
            y = torch.from_numpy(labels[idx].astype(np.float32))
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        bar.close()
        return model
    finally:
        torch.set_num_threads(old_threads)


def score_pixel_probe(
    model: Any, crops: np.ndarray, *, threads: int = 1, batch_images: int = 32
) -> np.ndarray:
    """P(fake) per image: the mean logit over its crops, through a sigmoid."""
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(crops), batch_images):
                chunk = crops[start : start + batch_images]
                b, k = chunk.shape[:2]
                logits = model(_to_tensor(chunk.reshape(b * k, *chunk.shape[2:]))).reshape(b, k).mean(dim=1)
                out.append(torch.sigmoid(logits).numpy())
    finally:
        torch.set_num_threads(old_threads)
    return np.concatenate(out) if out else np.zeros(0)


def run_pixel_probe(
    train_images: Sequence[Image.Image] | Any,
    train_labels: np.ndarray,
    eval_images: Sequence[Image.Image] | Any,
    eval_labels: np.ndarray,
    cfg: PixelProbeConfig,
    *,
    measured_on: str,
    progress: bool = True,
) -> ProbeResult:
    """Extract crops, train on the first set, score the second. Images smaller than ``crop_max`` are
    left out and counted in ``notes``. The image sequences may be lazy (anything indexable)."""
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed + 1)

    def crops_of(images: Any, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, list[int], int]:
        arrays, kept, index, small = [], [], [], 0
        for i in tqdm(
            range(len(labels)), desc=f"crops ({what})", unit="img", file=sys.stderr, disable=not progress
        ):
            c = extract_crops(images[i], cfg.crop_max, cfg.crops_per_image, rng)
            if c is None:
                small += 1
                continue
            arrays.append(c)
            kept.append(labels[i])
            index.append(i)
        if not arrays:
            raise ValueError(f"pixel probe: no {what} image is at least {cfg.crop_max} px on each side")
        return np.stack(arrays), np.asarray(kept), index, small

    xtr, ytr, _, small_tr = crops_of(train_images, np.asarray(train_labels), "train")
    xev, yev, ev_index, small_ev = crops_of(eval_images, np.asarray(eval_labels), "eval")
    model = train_pixel_probe(xtr, ytr, cfg, progress=progress)
    scores = score_pixel_probe(model, xev, threads=cfg.threads)
    train_scores = score_pixel_probe(model, xtr, threads=cfg.threads)
    return summarize(
        "pixel-cnn",
        measured_on,
        ytr,
        yev,
        scores,
        train_scores=train_scores,
        seconds=time.perf_counter() - started,
        notes={"too_small": {"train": small_tr, "eval": small_ev}, "config": asdict(cfg)},
        eval_index=np.asarray(ev_index),
    )


# --------------------------------------------------------------------------------------------------
# embedding probe and content separability


def fit_linear_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    clf.fit(x, y)
    return clf


def run_embedding_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    measured_on: str,
    c: float = 1.0,
    probe: str = "clip-logreg",
) -> ProbeResult:
    started = time.perf_counter()
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"{probe}: the training split needs both classes")
    clf = fit_linear_probe(x_train, y_train, c)
    return summarize(
        probe,
        measured_on,
        y_train,
        y_eval,
        clf.predict_proba(x_eval)[:, 1],
        train_scores=clf.predict_proba(x_train)[:, 1],
        seconds=time.perf_counter() - started,
    )


def out_of_group_scores(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], c: float = 1.0
) -> dict[str, Any]:
    """Leave one group out: each image is scored by a probe that never saw its group (source or
    generator). Pooled AUC over all scored images, and per held-out group its size and accuracy.
    A group whose removal leaves one class only cannot be held out and is reported as such."""
    groups = np.asarray([str(g) for g in groups])
    scores = np.full(len(y), np.nan)
    per_group: dict[str, Any] = {}
    for g in sorted(set(groups.tolist())):
        test = groups == g
        train = ~test
        if len(np.unique(y[train])) < 2:
            per_group[g] = {"n": int(test.sum()), "held_out": False, "why": "training would lack a class"}
            continue
        clf = fit_linear_probe(x[train], y[train], c)
        scores[test] = clf.predict_proba(x[test])[:, 1]
        yt = y[test]
        correct = (scores[test] >= 0.5) == (yt == 1)
        per_group[g] = {
            "n": int(test.sum()),
            "labels": _class_counts(yt),
            "held_out": True,
            "accuracy": round(float(correct.mean()), 4),
            "mean_p_fake": round(float(scores[test].mean()), 4),
        }
    scored = ~np.isnan(scores)
    return {
        "auc": None if not scored.any() else _round(auc(y[scored], scores[scored])),
        "balanced_accuracy": None
        if not scored.any()
        else _round(balanced_accuracy(y[scored], scores[scored])),
        "n_scored": int(scored.sum()),
        "n_total": len(y),
        "per_group": per_group,
    }


def cross_validated_auc(
    x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0, c: float = 1.0
) -> float | None:
    """Stratified k-fold AUC: the optimistic number (images of one source on both sides)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y.astype(int), minlength=2)
    k = int(min(folds, counts.min()))
    if k < 2:
        return None
    scores = np.zeros(len(y))
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y):
        scores[te] = fit_linear_probe(x[tr], y[tr], c).predict_proba(x[te])[:, 1]
    return _round(auc(y, scores))


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)
