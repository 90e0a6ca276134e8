"""Can a frozen ViT, read at native resolution, be the pixel expert? A logistic probe on pure-pixel pairs.

The paper's pixel expert is a large ViT (DINOv2) tuned on pure-pixel pairs. No registry holds DINOv2; the one ViT
this project can load is the starter's CLIP ViT-B/16 image tower. This probe keeps that tower frozen, feeds it
native-resolution crops of ``--size`` px (cropped, never resized, as the pixel branch crops; with the pixel
recipe's web degradations drawn once per pair and applied alike to both images), reads each layer's class token
and mean patch token, and fits a logistic probe (standardised features) on the pairs: a photo against its
reconstruction. No AI image is ever trained on.

As ``wild_eval.py`` picks its pixel runs, two probes are fitted: a on the pairs of photos outside HOLD
(realorai and wildmix), b on the pairs of photos inside it; each wild fold is scored by a probe that
saw none of the fold's photos, as the mean logit of the image's inference crops. Which layers and which
regularisation a probe uses is chosen by its AUC on held-out pairs (the pair set's val split), never on the wild
folds; every candidate's wild AUC is reported beside it. ``--out`` also writes OUT_scores.csv: ``--scores``
with its pixel column replaced by the chosen probe's, which ``wild_eval.py --pixel-scores`` fuses.

    python benchmarks/frozen_tower_probe.py --pairs data:pixel-wild-taef2-esrgan-x5/manifest.jsonl \\
        --scores benchmarks/results/wild_eval_pixel_mix_esrgan_scores.csv --work runs/tower-probe \\
        --out benchmarks/results/frozen_tower_probe
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixel_history import DEFAULT_IMAGES, history, load_photos  # noqa: E402
from record_header import REPO, record_header, write_record  # noqa: E402
from wild_eval import auc  # noqa: E402

HOLD = ("realorai", "wildmix:*")  # run b's photos; run a trains on the rest (wild_eval.py's runs a and b)
BLOCKS = ((1, 3), (4, 6), (7, 9), (10, 12), (1, 12))  # layer ranges a probe may read, 1-based, inclusive
TOKENS = ("mean", "cls", "both")
C_GRID = (0.0003, 0.001, 0.003, 0.03)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", required=True, help="a pure-pixel pair manifest (build-pixel's manifest.jsonl)")
    p.add_argument("--scores", type=Path, required=True,
                   help="a wild_eval.py OUT_scores.csv: the wild images, their folds and semantic scores")  # fmt: skip
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "pixel-wild.yaml",
                   help="whose augment section degrades the pairs (default: %(default)s)")  # fmt: skip
    p.add_argument("--augment-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of that augment section, e.g. 'resize_down=[0.875,1.0]' (a 256 px pair "
                   "shrunk below the crop size would be padded)")  # fmt: skip
    p.add_argument("--pair-generator", default="*", metavar="GLOB",
                   help="fit on the pairs of these generators only, e.g. 'taesd:*' (default: every pair)")  # fmt: skip
    p.add_argument("--max-pairs", type=int, help="a random subset of this many pairs (default: every pair)")
    p.add_argument("--size", type=int, default=224, help="crop side in px, the tower's input (default: 224)")
    p.add_argument("--max-crops", type=int, default=2, help="inference crops per wild image (default: 2)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", type=Path, default=DEFAULT_IMAGES,
                   help="photos probe a never trained on, scored as they are and shrunk (pixel_history.py's "
                   "probe; default: %(default)s); 'none' skips it")  # fmt: skip
    p.add_argument("--work", type=Path, required=True, help="feature cache (reused when present)")
    p.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT_scores.csv")
    p.add_argument("--machine", default="2-core CPU dev box")
    return p.parse_args(argv)


def held(source: str) -> bool:
    return any(fnmatch.fnmatchcase(source, p) for p in HOLD)


def layer_columns(n_layers: int, width: int, first: int, last: int, tokens: str) -> np.ndarray:
    """Columns of ``ClipTower.forward(x, "cls-mean-layers")`` (per layer: class token, then mean patch token)
    for layers ``first``..``last`` (1-based)."""
    if not 1 <= first <= last <= n_layers:
        raise ValueError(f"layers {first}-{last} must lie within the tower's 1-{n_layers}")
    parts = {"cls": (0,), "mean": (1,), "both": (0, 1)}[tokens]
    cols = [
        np.arange(width) + (2 * (layer - 1) + part) * width
        for layer in range(first, last + 1)
        for part in parts
    ]
    return np.concatenate(cols)


def _tower(precision: str) -> Any:
    from aligngemini.branches.semantic.clip import STARTER_TOWER, get_tower

    tower = get_tower(STARTER_TOWER)
    tower.set_precision(precision)
    return tower


def _features(tower: Any, crops: list[Any], batch: int) -> np.ndarray:
    """[N, 3, S, S] crops in [0, 1] -> [N, D] float16 features."""
    import torch

    mean = torch.tensor(tower.mean).view(1, 3, 1, 1)
    std = torch.tensor(tower.std).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = (torch.stack(crops[i : i + batch]) - mean) / std
            out.append(tower(x, features="cls-mean-layers").float().numpy().astype(np.float16))
    return np.concatenate(out)


def pair_features(args: argparse.Namespace, tower: Any) -> dict[str, np.ndarray]:
    """Features of every pair's real and fake crop (one degradation and one crop location per pair), cached in
    ``--work`` by what decides them (a changed --augment-opt needs a fresh --work)."""
    cache = args.work / f"pairs-{args.size}-{args.precision}-{args.max_pairs or 'all'}-s{args.seed}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    from PIL import Image
    from tqdm import tqdm

    from aligngemini.branches.pixel.augment import AugmentConfig
    from aligngemini.branches.pixel.crops import CropConfig
    from aligngemini.branches.pixel.task import augment_and_crop
    from aligngemini.config import apply_overrides, load_config
    from aligngemini.data.manifest import read_manifest

    aug = AugmentConfig.from_dict(
        apply_overrides(load_config(args.recipe).get("augment") or {}, args.augment_opt)
    )
    crop_cfg = CropConfig(size=args.size)
    groups: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in read_manifest(args.pairs):
        groups[row.group or row.path][row.label] = row
    pairs = [(g["real"], g["fake"]) for _, g in sorted(groups.items()) if "real" in g and "fake" in g]
    rng = np.random.default_rng(args.seed)
    if args.max_pairs and args.max_pairs < len(pairs):
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), args.max_pairs, replace=False))]
    real_f, fake_f, sources, splits, generators = [], [], [], [], []
    for start in tqdm(range(0, len(pairs), args.batch), desc="pairs", unit="batch"):
        crops_r, crops_f = [], []
        for real, fake in pairs[start : start + args.batch]:
            with Image.open(real.path) as a, Image.open(fake.path) as b:
                r, f = augment_and_crop([a.convert("RGB"), b.convert("RGB")], aug, crop_cfg, rng)
            crops_r.append(r)
            crops_f.append(f)
            sources.append(real.source or "")
            splits.append(real.split or "train")
            generators.append(fake.generator or "")
        real_f.append(_features(tower, crops_r, args.batch))
        fake_f.append(_features(tower, crops_f, args.batch))
    out = {"real": np.concatenate(real_f), "fake": np.concatenate(fake_f), "source": np.array(sources),
           "split": np.array(splits), "generator": np.array(generators)}  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def inference_crops(image: Any, args: argparse.Namespace) -> list[Any]:
    """The ``--max-crops`` native-resolution crops of ``image`` the probe scores, as the pixel branch's grid."""
    from aligngemini.branches.pixel.crops import CropConfig, inference_views

    return list(
        inference_views(image, CropConfig(size=args.size, inference="grid", max_crops=args.max_crops))
    )


def shrink_history(args: argparse.Namespace, tower: Any, probe: Any, cols: np.ndarray) -> dict[str, Any]:
    """pixel_history.py's probe for one probe: does shrinking a photo make it look generated?"""

    def score(images: list[Any]) -> np.ndarray:  # the probe's mean logit over each image's crops
        return np.asarray([
            np.mean(probe.decision_function(_features(tower, inference_crops(im.image, args), args.batch)[:, cols]
                                            .astype(np.float32)))
            for im in images
        ])  # fmt: skip

    images = load_photos(args.history)
    return {"images": len(images), **history(score, images)}


def wild_features(args: argparse.Namespace, tower: Any, rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Features of each wild image's inference crops, with the row each crop belongs to."""
    cache = args.work / f"wild-{args.size}-{args.max_crops}-{args.precision}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    from tqdm import tqdm

    from aligngemini.data.manifest import manifest_path
    from aligngemini.decode import load_image

    feats, owner, pending, pending_owner = [], [], [], []
    for i, row in enumerate(tqdm(rows, desc="wild", unit="image")):
        views = inference_crops(load_image(manifest_path(row["path"])).image, args)
        pending += views
        pending_owner += [i] * len(views)
        if len(pending) >= args.batch or i == len(rows) - 1:
            feats.append(_features(tower, pending, args.batch))
            owner += pending_owner
            pending, pending_owner = [], []
    out = {"features": np.concatenate(feats), "owner": np.array(owner)}
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def scoring_runs(rows: Sequence[dict[str, str]], trained_on: dict[str, set[str]]) -> dict[str, str]:
    """Which probe scores each fold: the first (in ``trained_on``'s order) whose pairs' photos come from none of
    the fold's sources, as ``wild_eval.py`` picks its pixel runs."""
    fold_sources: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        fold_sources[row["fold"]].add(row["source"])
    out = {}
    for fold, sources in sorted(fold_sources.items()):
        eligible = [run for run, seen in trained_on.items() if not seen & sources]
        if not eligible:
            raise ValueError(f"fold {fold}: every probe trained on photos of its sources; none can score it")
        out[fold] = eligible[0]
    return out


def pair_xy(
    pairs: dict[str, np.ndarray], mask: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``mask``ed pairs' real then fake features (columns ``cols``) and their 0 / 1 labels."""
    x = np.concatenate([pairs["real"][mask][:, cols], pairs["fake"][mask][:, cols]]).astype(np.float32)
    return x, np.r_[np.zeros(mask.sum()), np.ones(mask.sum())]


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(
        x, y
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header = record_header("frozen_tower_probe", argv, args.machine)
    t0 = time.time()
    with open(args.scores, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    tower = _tower(args.precision)
    n_layers, width = tower.n_layers, int(tower.model.config.hidden_size)
    pairs = pair_features(args, tower)
    wild = wild_features(args, tower, rows)
    print(f"features ready ({time.time() - t0:.0f} s)", file=sys.stderr)

    in_hold = np.array([held(s) for s in pairs["source"]])
    chosen_gen = np.array([fnmatch.fnmatchcase(g, args.pair_generator) for g in pairs["generator"]])
    if not chosen_gen.any():
        raise SystemExit(f"no pair's generator matches --pair-generator {args.pair_generator!r}")
    folds = sorted({r["fold"] for r in rows})
    masks = {"a": ~in_hold & chosen_gen, "b": in_hold & chosen_gen}
    fold_run = scoring_runs(rows, {run: set(pairs["source"][m]) for run, m in masks.items()})
    labels = np.array([1 if r["label"] == "fake" else 0 for r in rows])
    fold_of = np.array([r["fold"] for r in rows])

    candidates = [(b, t, c) for b in BLOCKS for t in TOKENS for c in C_GRID]
    split = {run: {"train": m & (pairs["split"] == "train"), "val": m & (pairs["split"] != "train")}
             for run, m in masks.items()}  # fmt: skip
    crops_per_image = np.bincount(wild["owner"], None, len(rows))
    val_auc: dict[tuple[Any, ...], float] = {}  # (run, block, tokens, C) -> AUC on the run's held-out pairs
    wild_logits: dict[tuple[Any, ...], np.ndarray] = {}
    probes: dict[tuple[Any, ...], Any] = {}
    for run, (block, tokens, c) in ((run, cand) for run in masks for cand in candidates):
        key, cols = (run, block, tokens, c), layer_columns(n_layers, width, block[0], block[1], tokens)
        probes[key] = probe = fit_probe(*pair_xy(pairs, split[run]["train"], cols), c, args.seed)
        x_val, y_val = pair_xy(pairs, split[run]["val"], cols)
        val_auc[key] = auc(y_val, probe.decision_function(x_val))
        crop_logit = probe.decision_function(wild["features"][:, cols].astype(np.float32))
        wild_logits[key] = np.bincount(wild["owner"], crop_logit, len(rows)) / crops_per_image
        print(
            f"run {run} layers {block} {tokens} C={c}: held-out pairs AUC {val_auc[key]:.3f}", file=sys.stderr
        )

    def fold_aucs(key_of: Any) -> dict[str, float]:
        """Wild AUC per fold, each fold scored by its run's probe ``key_of(run)``."""
        return {f: auc(labels[fold_of == f], wild_logits[key_of(fold_run[f])][fold_of == f]) for f in folds}

    table = []
    for block, tokens, c in candidates:
        per_fold = fold_aucs(lambda run, cand=(block, tokens, c): (run, *cand))
        table.append({"layers": f"{block[0]}-{block[1]}", "tokens": tokens, "C": c, "val_auc_a": val_auc[("a", block, tokens, c)],
                      "val_auc_b": val_auc[("b", block, tokens, c)], "folds": per_fold,
                      "mean": float(np.mean(list(per_fold.values())))})  # fmt: skip
    best = {run: max((k for k in val_auc if k[0] == run), key=val_auc.__getitem__) for run in masks}
    chosen = {run: {"run": run, "layers": f"{k[1][0]}-{k[1][1]}", "tokens": k[2], "C": k[3],
                    "train_pairs": int(split[run]["train"].sum()), "val_pairs": int(split[run]["val"].sum()),
                    "val_auc": val_auc[k]} for run, k in best.items()}  # fmt: skip
    chosen_folds = fold_aucs(best.__getitem__)
    chosen_scores = np.empty(len(rows))
    for fold in folds:
        idx = fold_of == fold
        chosen_scores[idx] = 1.0 / (1.0 + np.exp(-wild_logits[best[fold_run[fold]]][idx]))
    summary = {
        "chosen": chosen,
        "chosen_folds": chosen_folds,
        "chosen_mean": float(np.mean(list(chosen_folds.values()))),
    }
    if str(args.history) != "none":  # the default photos (wildmix's camera originals) are run a's to judge
        _, block, tokens, _ = best["a"]
        cols = layer_columns(n_layers, width, block[0], block[1], tokens)
        summary["history"] = shrink_history(args, tower, probes[best["a"]], cols)
        shrinks = summary["history"]["shrinks"]
        print("shrink history (probe a): " + ", ".join(f"{k} {v['history_auc']:.3f}" for k, v in shrinks.items()),
              file=sys.stderr)  # fmt: skip
    print(
        f"chosen by held-out pairs: mean wild pixel AUC {summary['chosen_mean']:.3f} {chosen_folds}",
        file=sys.stderr,
    )
    if args.out:
        header["seconds"] = round(time.time() - t0, 1)
        write_outputs(args, header, rows, chosen_scores, table, summary)
    return 0


def history_lines(summary: dict[str, Any]) -> list[str]:
    if "history" not in summary:
        return []
    h = summary["history"]
    return [
        f"Shrink history of probe a (`pixel_history.py`'s probe, {h['images']} camera originals it never trained on): "
        "history AUC (mean logit change) per shrink: "
        + ", ".join(
            f"{k} {v['history_auc']:.3f} ({v['mean_logit_change']:+.2f})" for k, v in h["shrinks"].items()
        ),
        "",
    ]


def write_outputs(args: argparse.Namespace, header: dict[str, Any], rows: list[dict[str, str]], scores: np.ndarray,
                  table: list[dict[str, Any]], summary: dict[str, Any]) -> None:  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.out}_scores.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row, s in zip(rows, scores, strict=True):
            w.writerow({**row, "pixel": f"{s:.6f}"})
    folds = sorted(summary["chosen_folds"])
    lines = [
        "# A frozen CLIP ViT-B/16 as the pixel expert: logistic probes on pure-pixel pairs",
        "",
        f"`{header['command']}` ({header['machine']}, {header['seconds']:.0f} s, load {header['load_avg_at_start']:.1f} "
        "at start)",
        "",
        "Chosen by held-out pairs AUC: " + "; ".join(
            f"run {run}: layers {c['layers']}, {c['tokens']} tokens, C={c['C']}, held-out pairs AUC {c['val_auc']:.3f}"
            for run, c in summary["chosen"].items()),
        "",
        "| " + " | ".join(folds) + " | mean |",
        "| " + " | ".join("---" for _ in folds) + " | --- |",
        "| " + " | ".join(f"{summary['chosen_folds'][f]:.3f}" for f in folds) + f" | {summary['chosen_mean']:.3f} |",
        "",
        *history_lines(summary),
        "Every candidate (held-out pairs AUC of runs a / b; wild pixel AUC per fold):",
        "",
        "| layers | tokens | C | pairs a / b | " + " | ".join(folds) + " | mean |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in folds) + " | --- |",
    ]  # fmt: skip
    for t in table:
        lines.append(f"| {t['layers']} | {t['tokens']} | {t['C']} | {t['val_auc_a']:.3f} / {t['val_auc_b']:.3f} | "
                     + " | ".join(f"{t['folds'][f]:.3f}" for f in folds) + f" | {t['mean']:.3f} |")  # fmt: skip
    write_record(args.out, {**header, "summary": summary, "candidates": table}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
