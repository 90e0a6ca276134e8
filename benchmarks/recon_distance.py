"""A training-free pixel score: how closely a generator's autoencoder reproduces an image.

An image that came out of a latent-diffusion decoder lies close to what that decoder can produce, so a round
trip through the decoder's autoencoder changes it less than it changes a photograph (the idea of AEROBLADE,
Ricker et al., CVPR 2024). No training is involved, so no source is ever "seen": every fold of the
leave-one-source-group-out protocol is a generator the score was never fitted on.

For each image of an earlier ``benchmarks/wild_eval.py`` run (its ``OUT_scores.csv``: path, fold, label and
both experts' out-of-fold scores), two crops at native resolution (the ends of the middle row, corners on the
autoencoder's 16-pixel grid) go through ``--generator`` and back. Three distances are reported, each negated
so that higher means "more likely generated":

- ``l2``: mean squared difference;
- ``hp_ratio``: mean squared difference of the high-pass residuals (image minus its 3x3 box blur), divided by
  the crop's own high-pass energy, since a textured photo is harder to reproduce than a smooth render;
- ``l2_vs_bicubic``: the round trip's squared error divided by that of a 2x bicubic down-and-up.

It then asks whether the best of them adds anything to the detector: per fold, the pixel expert's log-odds
and the distance summed, each scaled by its spread over the *other* folds (a pixel score), and the ``stack``
rule fitted on the other folds' scores with and without the distance as a third branch (standardised with
the other folds' mean and spread, so nothing of the held-out fold enters the fit). ``--distances`` reads the
distances of an earlier run (its ``OUT_scores.csv``) instead of computing them again.

    python benchmarks/recon_distance.py --scores benchmarks/results/wild_eval_scores.csv \\
        --generator taesd:PATH/TO/taef2 --out benchmarks/results/recon_distance
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import REPO, describe_run, record_header, write_record  # noqa: E402
from wild_eval import auc, balanced, fit_and_apply  # noqa: E402

from aligngemini.data.manifest import manifest_path  # noqa: E402
from aligngemini.decode import ImageLoadError, load_image  # noqa: E402
from aligngemini.fusion import logit  # noqa: E402
from aligngemini.generators.base import build_generator, to_images, to_tensor  # noqa: E402
from aligngemini.generators.train_vae import high_pass  # noqa: E402

DISTANCES = ("l2", "hp_ratio", "l2_vs_bicubic")
GRID = 16


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scores", type=Path, required=True, help="OUT_scores.csv of a wild_eval run (with pixel scores)"
    )
    p.add_argument(
        "--generator",
        required=True,
        help="the autoencoder, as data build-pixel names it (taesd:DIR, vae:DIR)",
    )
    p.add_argument("--crop", type=int, default=256, help="crop side in pixels (default 256)")
    p.add_argument(
        "--limit", type=int, default=None, help="about N images spread over the file (a smoke run)"
    )
    p.add_argument("--distances", type=Path, help="OUT_scores.csv of an earlier run: reuse its distances")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json, OUT.md and OUT_scores.csv")
    return p.parse_args(argv)


def middle_row_crops(image: Image.Image, size: int) -> torch.Tensor:
    """[2, 3, s, s] in [0, 1]: the two ends of the middle row, corners on the 16-pixel grid (cut before
    converting, so a camera original is never held as floats whole)."""
    w, h = image.size
    s = min(size, h, w) // GRID * GRID
    top = (h - s) // 2 // GRID * GRID
    lefts = (0, (w - s) // GRID * GRID)
    return to_tensor([image.crop((left, top, left + s, top + s)) for left in lefts])


def distances(crops: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """Each distance, negated (higher = closer to what the decoder makes)."""
    eps = 1e-9
    l2 = (recon - crops).pow(2).mean().item()
    hp_crops = high_pass(crops)
    hp = (high_pass(recon) - hp_crops).pow(2).mean().item()
    texture = hp_crops.pow(2).mean().item()
    h, w = crops.shape[-2:]
    small = F.interpolate(crops, scale_factor=0.5, mode="bicubic", antialias=True)
    bicubic = F.interpolate(small, size=(h, w), mode="bicubic").clamp(0, 1)
    bic = (bicubic - crops).pow(2).mean().item()
    return {
        "l2": -float(np.log(l2 + eps)),
        "hp_ratio": -float(np.log((hp + eps) / (texture + eps))),
        "l2_vs_bicubic": -float(np.log((l2 + eps) / (bic + eps))),
    }


def as_probability(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """A raw score as a probability-like one for the fusion rules, standardised on the ``fit`` images only."""
    return 1 / (1 + np.exp(-(x - x[fit].mean()) / x[fit].std()))


def combined_by_fold(
    folds: np.ndarray, labels: np.ndarray, a: np.ndarray, b: np.ndarray
) -> dict[str, float | None]:
    """AUC per fold of ``a + b``, each divided by its spread over the other folds."""
    out: dict[str, float | None] = {}
    for f in sorted(set(folds)):
        fit, te = folds != f, folds == f
        out[f] = auc(labels[te], a[te] / a[fit].std() + b[te] / b[fit].std())
    return out


def fused_by_fold(
    folds: np.ndarray, labels: np.ndarray, experts: dict[str, np.ndarray], raw: Sequence[str] = ()
) -> dict[str, dict[str, float | None]]:
    """The stack rule fitted on every other fold's scores, applied to each fold: balanced accuracy and AUC.
    Experts named in ``raw`` are raw scores, made probabilities with the other folds' statistics."""
    out: dict[str, dict[str, float | None]] = {}
    for f in sorted(set(folds)):
        fit, te = folds != f, folds == f
        scores = {k: as_probability(v, fit) if k in raw else v for k, v in experts.items()}
        p, fake = fit_and_apply(
            "stack",
            {k: v[fit] for k, v in scores.items()},
            labels[fit],
            {k: v[te] for k, v in scores.items()},
        )
        both = len(set(labels[te])) == 2
        out[f] = {
            "balanced_accuracy": balanced(labels[te], fake) if both else None,
            "auc": auc(labels[te], p),
        }
    return out


def recorded_distances(
    rows: list[dict[str, str]], path: Path
) -> tuple[list[dict[str, str]], list[dict[str, float]]]:
    """The rows an earlier run measured and its distances, matched by path (its skipped images stay out)."""
    with open(path, newline="") as fh:
        recorded = {r["path"]: {d: float(r[d]) for d in DISTANCES} for r in csv.DictReader(fh)}
    kept = [r for r in rows if r["path"] in recorded]
    if not kept:
        raise SystemExit(
            f"{path}: none of the images of --scores; give the OUT_scores.csv of a run on the same file"
        )
    return kept, [recorded[r["path"]] for r in kept]


def mean_present(values: Sequence[float | None]) -> float:
    """Mean over the folds that have both classes (an AUC needs both)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record: dict[str, Any] = record_header("recon_distance", argv, "2-core CPU dev box")
    with open(args.scores, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if args.limit:
        rows = rows[:: max(1, -(-len(rows) // args.limit))]  # spread over the file, so every fold appears
    if not rows or not rows[0].get("pixel"):
        raise SystemExit(
            f"{args.scores}: no rows with pixel scores; give the OUT_scores.csv of a wild_eval run"
        )
    kept, feats = [], []
    t0 = time.time()
    if args.distances:
        kept, feats = recorded_distances(rows, args.distances)
    generator = None if args.distances else build_generator(args.generator, device="cpu")
    for i, row in enumerate(rows if generator else []):
        try:
            image = load_image(REPO / manifest_path(row["path"]), max_pixels=200_000_000).image
        except ImageLoadError as exc:
            print(f"skipped {row['path']}: {exc}", file=sys.stderr)
            continue
        crops = middle_row_crops(image, args.crop)
        recon = to_tensor(generator.reconstruct(to_images(crops)))
        kept.append(row)
        feats.append(distances(crops, recon))
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(rows)} images ({time.time() - t0:.0f} s)", file=sys.stderr)
    seconds = time.time() - t0

    labels = np.array([int(r["label"] == "fake") for r in kept])
    folds = np.array([r["fold"] for r in kept])
    sem = np.array([float(r["semantic"]) for r in kept])
    pix = np.array([float(r["pixel"]) for r in kept])
    dist = {d: np.array([f[d] for f in feats]) for d in DISTANCES}
    names = sorted(set(folds))

    def per_fold(score: np.ndarray) -> dict[str, float | None]:
        return {f: auc(labels[folds == f], score[folds == f]) for f in names}

    aucs = {d: per_fold(v) for d, v in dist.items()}
    aucs["pixel expert"] = per_fold(pix)
    best = max(DISTANCES, key=lambda d: mean_present(list(aucs[d].values())))
    aucs[f"pixel expert + {best}"] = combined_by_fold(folds, labels, logit(pix), dist[best])
    fused = {
        "semantic + pixel": fused_by_fold(folds, labels, {"semantic": sem, "pixel": pix}),
        f"semantic + pixel + {best}": fused_by_fold(
            folds, labels, {"semantic": sem, "pixel": pix, "recon": dist[best]}, raw=["recon"]
        ),
    }
    record.update({
        "generator": args.generator, "crop": args.crop, "images": len(kept), "skipped": len(rows) - len(kept),
        "seconds": round(seconds, 1), "distances_from": str(args.distances) if args.distances else None,
        "best_distance": best, "auc_by_fold": aucs,
        "stack_by_fold": fused,
        "auc_mean": {k: mean_present(list(v.values())) for k, v in aucs.items()},
        "stack_mean": {k: {m: mean_present([f[m] for f in v.values()]) for m in ("balanced_accuracy", "auc")} for k, v in fused.items()},
    })  # fmt: skip
    write_record(args.out, record, render_md(record, names))
    with open(args.out.with_name(args.out.name + "_scores.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "fold", "label", *DISTANCES])
        for r, f in zip(kept, feats, strict=True):
            w.writerow([r["path"], r["fold"], r["label"], *(f"{f[d]:.6f}" for d in DISTANCES)])
    print(render_md(record, names))
    return 0


def render_md(record: dict[str, Any], folds: list[str]) -> str:
    def cell(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"# Reconstruction distance through `{record['generator']}` as a training-free pixel score",
        "",
        describe_run(record, f"{record['images']} images, {record['seconds']:.0f} s")
        + (
            f"; distances as an earlier run measured them (`{record['distances_from']}`)."
            if record.get("distances_from")
            else "."
        ),
        "",
        "AUC per fold (higher scores: closer to the autoencoder's reproduction). The combined row uses the distance",
        f"with the best mean ({record['best_distance']}), chosen on these same folds, so read it as an upper estimate:",
        "",
        "| score | " + " | ".join(folds) + " | mean |",
        "| --- | " + " | ".join("---" for _ in folds) + " | --- |",
    ]
    for name, per in record["auc_by_fold"].items():
        lines.append(
            f"| {name} | " + " | ".join(cell(per[f]) for f in folds) + f" | {record['auc_mean'][name]:.3f} |"
        )
    lines += [
        "",
        "The stack rule fitted on the other folds' out-of-fold scores (not the nested ones `wild_eval.py` uses, so",
        "both rows share the same small leak), balanced accuracy / AUC:",
        "",
        "| branches | " + " | ".join(folds) + " | mean |",
        "| --- | " + " | ".join("---" for _ in folds) + " | --- |",
    ]
    for name, per in record["stack_by_fold"].items():
        m = record["stack_mean"][name]
        row = " | ".join(f"{cell(per[f]['balanced_accuracy'])} / {cell(per[f]['auc'])}" for f in folds)
        lines.append(f"| {name} | {row} | {m['balanced_accuracy']:.3f} / {m['auc']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
