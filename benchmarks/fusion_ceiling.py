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

Its use is the issue's fusion bar (the chosen rule >= the better single expert + 0.03 in mean balanced
accuracy): if a rule's ceiling gain over the better expert's ceiling is below 0.03, no choice of thresholds
or weights for these experts meets the bar, and only better experts (more complementary errors) can.

    python benchmarks/fusion_ceiling.py --scores benchmarks/results/wild_eval_pixel_mix_esrgan_scores.csv \\
        --out benchmarks/results/fusion_ceiling
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import describe_run, portable, record_header, write_record  # noqa: E402
from wild_eval import RULES, auc, balanced, fit_and_apply  # noqa: E402

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
    p.add_argument("--machine", default="2-core CPU dev box")
    return p.parse_args(argv)  # fmt: skip


def read_scores(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per fold: labels (1 = fake) and each expert's p_fake, from a wild_eval scores file."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("fold", "label", *EXPERTS) if rows and c not in rows[0]]
    if not rows or missing:
        raise SystemExit(
            f"{path}: not a wild_eval scores file with pixel scores (missing {missing or 'rows'})"
        )
    folds: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["pixel"] in ("", "nan") or r["semantic"] in ("", "nan"):
            continue  # an image an expert could not score takes no part in a two-expert fit
        f = folds.setdefault(r["fold"], {"label": [], "pixel": [], "semantic": []})
        f["label"].append(1.0 if r["label"] == "fake" else 0.0)
        for e in EXPERTS:
            f[e].append(float(r[e]))
    return {name: {k: np.asarray(v) for k, v in cols.items()} for name, cols in sorted(folds.items())}


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


def recorded_out_of_fold(scores: Path) -> dict[str, float] | None:
    """The mean balanced accuracies the same wild_eval run recorded (thresholds fitted on the other folds), from
    the ``OUT.json`` beside its ``OUT_scores.csv``; None where there is none."""
    path = scores.with_name(scores.name.removesuffix("_scores.csv") + ".json")
    if not scores.name.endswith("_scores.csv") or not path.is_file():
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
