"""How much any fusion rule could gain, given the two experts' scores: each rule fitted on the test fold itself.

``benchmarks/wild_eval.py`` fits every threshold and stack weight on the *other* folds, as a user's detector
is fitted, so its balanced accuracies mix two things: how well the experts' scores separate the held-out
fold, and how well thresholds chosen elsewhere land on it. This script removes the second. For each fold of
a ``wild_eval`` run's ``OUT_scores.csv`` (each image's out-of-fold scores), every detector is fitted on that
fold's own images (``aligngemini calibrate``'s balanced target: the single experts' and the OR rule's
thresholds exactly, the stack's weights by its logistic fit) and scored on them. One more detector is no rule
but the bound over all of them that weigh the experts' log-odds: ``best-linear``, the best balanced accuracy
at any threshold over every non-negative mix of the two (standardised) log-odds, 91 mixes from the semantic
expert alone to the pixel expert alone. The stack is such a mix whose weights a logistic loss chooses, so it
can land under the bound (and under the better expert) even on its own training images.

``--synthetic-pixel-auc A`` asks what pixel expert would do: the first file's pixel scores are replaced by draws
that rank every fold's fakes above its reals with AUC A (Gaussian log-odds, shifted for fakes by sqrt(2) times the
normal quantile of A) and are independent of the semantic expert within each class, the most complementary an
expert of that AUC can be; the ceilings are averaged over ``--synthetic-draws`` seeds.

Its use is a fusion target of the form "the chosen rule >= the better single expert + 0.03 in mean balanced
accuracy": if every rule's ceiling gain over the better expert's ceiling is below 0.03, no choice of thresholds
or weights for these experts meets it, and only better experts (more complementary errors) can.

    python benchmarks/fusion_ceiling.py --scores benchmarks/results/wild_eval_pixel_mix_esrgan_scores.csv \\
        --out benchmarks/results/fusion_ceiling
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, portable, record_header, write_record  # noqa: E402
from wild_eval import RULES, auc, balanced, fit_and_apply  # noqa: E402

from aligngemini.cli.evaluate import read_scores_csv  # noqa: E402
from aligngemini.eval.metrics import roc_curve  # noqa: E402
from aligngemini.fusion import logit  # noqa: E402

EXPERTS = ("pixel", "semantic")
BOUND = "best-linear"
DETECTORS = (*EXPERTS, *RULES, BOUND)
MIXES = 91


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scores",
        type=Path,
        action="append",
        required=True,
        help="OUT_scores.csv of a wild_eval run with pixel scores (repeatable: one table each)",
    )
    p.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    p.add_argument(
        "--synthetic-pixel-auc",
        type=float,
        action="append",
        default=[],
        help="also: the first file's semantic scores beside an independent pixel expert of this AUC "
        "on every fold (repeatable)",
    )
    p.add_argument("--synthetic-draws", type=int, default=5, help="seeds averaged per synthetic AUC")
    p.add_argument("--machine", default="2-core CPU dev box")
    return p.parse_args(argv)


def read_scores(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per fold: labels (1 = fake) and each expert's p_fake, from a wild_eval scores file, read as ``aligngemini
    calibrate --scores`` reads one (an image an expert could not score is left out, and said so)."""
    try:
        scores, labels, folds = read_scores_csv(path, list(EXPERTS), "fold")
    except ValueError as exc:
        raise SystemExit(f"not a wild_eval scores file with pixel scores: {exc}") from None
    return {
        name: {"label": labels[folds == name], **{e: scores[e][folds == name] for e in EXPERTS}}
        for name in sorted(set(folds))
    }


def best_balanced(labels: np.ndarray, scores: np.ndarray) -> float:
    """The highest balanced accuracy of ``scores >= t`` over every threshold t."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(((tpr + 1.0 - fpr) / 2.0).max())


def best_linear(labels: np.ndarray, pixel: np.ndarray, semantic: np.ndarray) -> tuple[float, float]:
    """(balanced accuracy, pixel share) of the best mix cos(a) * semantic + sin(a) * pixel of the standardised
    log-odds, a in [0, pi/2], each mix at its best threshold."""
    z = [(v - v.mean()) / (v.std() or 1.0) for v in (logit(semantic), logit(pixel))]
    best = (-1.0, 0.0)
    for a in np.linspace(0.0, np.pi / 2, MIXES):
        ba = best_balanced(labels, np.cos(a) * z[0] + np.sin(a) * z[1])
        if ba > best[0] + 1e-12:
            best = (ba, float(np.sin(a) / (np.cos(a) + np.sin(a))))
    return best


def fold_ceiling(fold: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Every detector fitted and scored on the same images: (balanced accuracy, AUC) each."""
    y = fold["label"].astype(int)
    out: dict[str, dict[str, float | None]] = {}
    for name in EXPERTS:
        p, fake = fit_and_apply("or", {name: fold[name]}, y, {name: fold[name]})
        out[name] = {"balanced_acc": balanced(y, fake), "auc": auc(y, p)}
    both = {e: fold[e] for e in EXPERTS}
    for rule in RULES:
        p, fake = fit_and_apply(rule, both, y, both)
        out[rule] = {"balanced_acc": balanced(y, fake), "auc": auc(y, p)}
    ba, share = best_linear(y, fold["pixel"], fold["semantic"])
    out[BOUND] = {"balanced_acc": ba, "pixel_share": share}
    return out


def ceilings(folds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    per_fold = {name: fold_ceiling(f) for name, f in folds.items()}
    mean = {d: float(np.mean([per_fold[f][d]["balanced_acc"] for f in per_fold])) for d in DETECTORS}
    better = max(EXPERTS, key=lambda e: mean[e])
    return {
        "folds": per_fold,
        "mean_balanced_acc": mean,
        "better_single_expert": better,
        "rule_minus_better_single": {r: mean[r] - mean[better] for r in (*RULES, BOUND)},
    }


def synthetic_pixel(
    folds: dict[str, dict[str, np.ndarray]], target_auc: float, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """``folds`` with the pixel scores replaced by draws of the given AUC, independent of the semantic scores."""
    from scipy.stats import norm

    if not 0.5 <= target_auc < 1.0:
        raise SystemExit(f"--synthetic-pixel-auc must be in [0.5, 1), got {target_auc}")
    rng = np.random.default_rng(seed)
    shift = np.sqrt(2.0) * norm.ppf(target_auc)  # AUC of N(shift, 1) against N(0, 1)
    out = {}
    for name, fold in folds.items():
        z = rng.normal(size=fold["label"].size) + shift * fold["label"]
        out[name] = {**fold, "pixel": 1.0 / (1.0 + np.exp(-z))}
    return out


def synthetic_ceilings(
    folds: dict[str, dict[str, np.ndarray]], target_auc: float, draws: int
) -> dict[str, Any]:
    """Mean over ``draws`` seeds of each detector's mean ceiling and of each rule's gain over the better expert."""
    runs = [ceilings(synthetic_pixel(folds, target_auc, seed)) for seed in range(draws)]
    return {
        "pixel_auc": target_auc,
        "draws": draws,
        "mean_balanced_acc": {
            d: float(np.mean([r["mean_balanced_acc"][d] for r in runs])) for d in DETECTORS
        },
        "rule_minus_better_single": {
            k: float(np.mean([r["rule_minus_better_single"][k] for r in runs])) for k in (*RULES, BOUND)
        },
    }


def recorded_out_of_fold(scores: Path) -> dict[str, float] | None:
    """The mean balanced accuracies the same wild_eval run recorded (thresholds fitted on the other folds), from
    the ``OUT.json`` beside its ``OUT_scores.csv``; None where there is none."""
    if not scores.name.endswith("_scores.csv"):
        return None
    path = scores.with_name(scores.name.removesuffix("_scores.csv") + ".json")
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))["result"]["summary"]
    return {d: float(summary[d]["mean_balanced_acc"]) for d in DETECTORS if d in summary}


def render_md(record: dict[str, Any]) -> str:
    lines = [
        "# Fusion ceiling: every rule fitted on the test fold itself",
        "",
        describe_run(record) + ".",
        "",
        "Balanced accuracy of each detector with its thresholds (and the stack's weights) fitted on the fold's own",
        "images: an upper bound on what a rule fitted on other data can reach with these experts' scores.",
        "",
        "| scores | better expert, ceiling | best rule, ceiling gain | best-linear gain | recorded (other folds): "
        "semantic, best rule gain |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in record["runs"]:
        res, oof = run["result"], run.get("out_of_fold") or {}
        gains, better = res["rule_minus_better_single"], res["better_single_expert"]
        best = max(RULES, key=lambda r: gains[r])
        recorded = "-"
        if better in oof and any(r in oof for r in RULES):
            rec_best = max((r for r in RULES if r in oof), key=lambda r: oof[r])
            recorded = f"{oof[better]:.3f}, {rec_best} {oof[rec_best] - oof[better]:+.3f}"
        lines.append(
            f"| `{Path(run['scores']).name}` | {better} {res['mean_balanced_acc'][better]:.3f} | "
            f"{best} {gains[best]:+.3f} | {gains[BOUND]:+.3f} | {recorded} |"
        )
    synthetic = record.get("synthetic")
    if synthetic:
        lines += ["", f"## The semantic expert of `{synthetic['semantic_of']}` beside a synthetic pixel expert", "",
                  "Pixel scores drawn with the AUC named on every fold, independent of the semantic expert within each "
                  "class; ceilings as above, mean over the draws.", "",
                  "| pixel AUC | semantic | or | noisy-or | mean | stack | best-linear | best rule's gain | "
                  "best-linear gain |", "| --- |" + " --- |" * 8]  # fmt: skip
        for run in synthetic["runs"]:
            m, g = run["mean_balanced_acc"], run["rule_minus_better_single"]
            cells = [f"{m[d]:.3f}" for d in ("semantic", *RULES, BOUND)]
            best = max(RULES, key=lambda r: g[r])
            lines.append(f"| {run['pixel_auc']:.2f} | " + " | ".join(cells) + f" | {best} {g[best]:+.3f} | "
                         f"{g[BOUND]:+.3f} |")  # fmt: skip
    for run in record["runs"]:
        res = run["result"]
        lines += ["", f"## `{run['scores']}`", "", "| fold | " + " | ".join(DETECTORS) + " |",
                  "| --- |" + " --- |" * len(DETECTORS)]  # fmt: skip
        for fold, det in res["folds"].items():
            lines.append(
                f"| {fold} | " + " | ".join(f"{det[d]['balanced_acc']:.3f}" for d in DETECTORS) + " |"
            )
        lines.append(
            "| **mean** | " + " | ".join(f"**{res['mean_balanced_acc'][d]:.3f}**" for d in DETECTORS) + " |"
        )
        oof = run.get("out_of_fold")
        if oof:
            cells = [f"{oof[d]:.3f}" if d in oof else "-" for d in DETECTORS]
            lines.append("| mean as wild_eval fitted it (other folds) | " + " | ".join(cells) + " |")
        gains = ", ".join(f"{r} {g:+.3f}" for r, g in res["rule_minus_better_single"].items())
        lines += [
            "",
            f"Each rule's ceiling minus the better single expert's ({res['better_single_expert']}): {gains}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record: dict[str, Any] = record_header("fusion_ceiling", argv, args.machine)
    record["runs"] = [
        {
            "scores": portable(str(s)),
            "result": ceilings(read_scores(s)),
            "out_of_fold": recorded_out_of_fold(s),
        }
        for s in args.scores
    ]
    if args.synthetic_pixel_auc:
        first = read_scores(args.scores[0])
        record["synthetic"] = {
            "semantic_of": portable(str(args.scores[0])),
            "runs": [synthetic_ceilings(first, a, args.synthetic_draws) for a in args.synthetic_pixel_auc],
        }
    write_record(args.out, record, render_md(record))
    for run in record["runs"]:
        res = run["result"]
        gains = res["rule_minus_better_single"]
        best = max(RULES, key=lambda r: gains[r])
        print(
            f"{run['scores']}: best rule's ceiling gain {best} {gains[best]:+.3f}, bound {gains[BOUND]:+.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
