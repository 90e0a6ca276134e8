"""``aligngemini eval`` and ``aligngemini calibrate``.

Heavy imports (torch, the detector, matplotlib) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aligngemini.eval.layouts import LAYOUT_CHOICES as LAYOUT_NAMES
from aligngemini.fusion import RULES

# The names come from their registries: adding a layout or a fusion rule touches only its own module.
LAYOUT_CHOICES = tuple(LAYOUT_NAMES)
RULE_CHOICES = tuple(RULES)

EVAL_EPILOG = """\
examples:
  aligngemini eval data/mine --report out/mine                   real/ fake/ folders, the starter bundle
  aligngemini eval Chameleon WildRF SynthWildX --bundle B --report out/wild
  aligngemini eval GenImage --layout genimage --limit 2000 --report out/genimage
  aligngemini eval data/set --report out/rob --perturb jpeg:10:100:10 --perturb blur:0:4:0.5
  aligngemini eval data/set --report out/and --rule mean --threshold pixel=0.6   re-fuse from cached scores

DATA is a folder in a known layout (--layout auto detects it), a benchmark CSV (SynthWildX list.csv,
BFree-Online) or a manifest. Scores are cached per image content, branch model and perturbation, so
rerunning with other thresholds or fusion, or a calibrated copy of the bundle, scores nothing again.
Writes DIR/report.json, report.md, scores.csv and PNG plots; the overall balanced accuracy and AUC of
each detector come with 95% bootstrap intervals (1000 class-stratified resamples of the scored images).
"""

CALIBRATE_EPILOG = """\
examples:
  aligngemini calibrate data/val --bundle starter --out bundles/starter-cal --target-fpr 0.05
  aligngemini calibrate data/val --bundle B --out B-bal --target balanced --uncertain-width 0.1
  aligngemini calibrate --scores wild_scores.csv --bundle B --out B-fold --target balanced --balance-by fold

Picks per-branch thresholds on a validation set: with --target fpr (default) the most fakes caught with
the fused false-positive rate on reals at most --target-fpr; with --target balanced the best balanced
accuracy (with --balance-by COLUMN of a scores CSV, the mean over its groups: each source counts alike,
however many images it holds). --uncertain-width W sets a band of fused scores [lo, lo+W) around the
decision point, placed to hold the most errors, where the verdict is "uncertain". Writes a copy of the
bundle; the source is never changed.
"""


def _add_data_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    from aligngemini.cli import add_compile, add_dtype, add_quiet

    p.add_argument("data", nargs="*" if optional else "+", metavar="DATA",
                   help="folders, benchmark CSVs or manifests")  # fmt: skip
    p.add_argument(
        "--bundle", default="starter", help="bundle name, folder, archive or hub id (default: starter)"
    )
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, metavar="LAYOUT",
                   help=f"how DATA is organised: {', '.join(LAYOUT_CHOICES)} (default: auto, detect it)")  # fmt: skip
    p.add_argument("--split", help="use this split folder/manifest split (default: test, else val)")
    p.add_argument("--subsets", help="comma-separated subset names to keep (as named in the report)")
    p.add_argument("--limit", type=int, metavar="N", help="a reproducible random sample of N images")
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: 16)")
    p.add_argument("--workers", type=int, help="threads decoding images (default: min(8, CPUs))")
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: cuda if available)")
    add_dtype(p)
    p.add_argument(
        "--cache", metavar="FILE", help="score cache (default: the user cache's scores/scores.sqlite)"
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached scores")
    add_compile(p)
    p.add_argument("--provenance", choices=("report", "override", "off"), default="report",
                   help="metadata never changes a score: 'report' counts per set which images carry C2PA, IPTC "
                        "source types or generator parameters (default); 'override' also lets a validly signed "
                        "C2PA claim of AI generation decide the fused verdict (scores and AUCs stay the "
                        "pixels'); 'off' reads no metadata")  # fmt: skip
    add_quiet(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a bundle on benchmark data: report.json, report.md, plots",
        description="Measure a detector bundle on labelled images: balanced accuracy and more, per subset, "
        "for the fused verdict and each branch alone; optional robustness sweeps.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_args(p)
    p.add_argument("--report", required=True, metavar="DIR", help="folder for report.json, report.md, plots")
    p.add_argument("--perturb", action="append", default=[], metavar="SPEC",
                   help="robustness sweep, repeatable: jpeg:10:100:10, blur:0:4:0.5, resize:0.25:4:0.25, "
                   "double forms jpeg2:... or double-jpeg:...")  # fmt: skip
    p.add_argument("--rule", choices=RULE_CHOICES, help="fusion rule instead of the bundle's")
    p.add_argument("--threshold", action="append", default=[], metavar="ROLE=T",
                   help="branch threshold instead of the bundle's, e.g. pixel=0.6 (repeatable)")  # fmt: skip
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="do not draw the PNG plots (reports and scores.csv are still written)",
    )
    p.set_defaults(func=run_eval_command)

    c = sub.add_parser(
        "calibrate",
        help="choose thresholds and an uncertain band on validation data; write a calibrated bundle copy",
        description="Calibrate a bundle's per-branch thresholds (and uncertain band) on a validation set.",
        epilog=CALIBRATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_args(c, optional=True)
    c.add_argument("--scores", metavar="CSV",
                   help="calibrate on scores already measured instead of DATA: a CSV with a label column "
                   "(real/fake) and one column of P(fake) per branch, as 'aligngemini eval' writes (scores.csv) "
                   "or benchmarks/wild_eval.py (out-of-fold scores)")  # fmt: skip
    c.add_argument("--balance-by", metavar="COLUMN",
                   help="with --scores and --target balanced: weigh each class of each group of this column "
                   "(e.g. fold or source) equally, so that the largest source does not choose the thresholds "
                   "for all; every group needs real and fake images")  # fmt: skip
    c.add_argument("--out", required=True, metavar="DIR", help="folder for the calibrated copy of the bundle")
    c.add_argument("--target", choices=("fpr", "balanced"), default="fpr",
                   help="what to optimise: most fakes caught at --target-fpr (fpr), or balanced accuracy "
                   "(default: fpr)")  # fmt: skip
    c.add_argument(
        "--target-fpr",
        type=float,
        default=0.05,
        help="fused false-positive rate to hold with --target fpr (default: 0.05)",
    )
    c.add_argument("--uncertain-width", type=float, metavar="W",
                   help="width of the uncertain band on the fused score (0 removes it; default: keep the bundle's)")  # fmt: skip
    c.add_argument(
        "--rule", choices=RULE_CHOICES, help="fusion rule to calibrate for (default: the bundle's)"
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    c.set_defaults(func=run_calibrate_command)


# --------------------------------------------------------------------------------------------------


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def load_detector(args: argparse.Namespace) -> Any:
    """The detector to evaluate (a seam the tests replace with a small fake)."""
    from aligngemini.detector import Detector

    return Detector.load(args.bundle, device=args.device, dtype=args.dtype, compile_mode=args.compile_mode)


def _parse_thresholds(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        role, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--threshold {item!r}: use ROLE=VALUE, e.g. pixel=0.6")
        try:
            out[role.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--threshold {item!r}: {value!r} is not a number") from None
        if not 0 <= out[role.strip()] <= 1:
            raise ValueError(f"--threshold {item!r}: a threshold is a probability in [0, 1]")
    return out


def _read(args: argparse.Namespace) -> Any:
    from aligngemini.eval.layouts import read_data
    from aligngemini.eval.runner import sample_items

    subsets = [s.strip() for s in args.subsets.split(",") if s.strip()] if args.subsets else None
    evalset = read_data(args.data, args.layout, split=args.split, subsets=subsets)
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be a positive number of images")
    return sample_items(evalset, args.limit)


def _open_cache(args: argparse.Namespace) -> Any:
    from aligngemini.eval.score_cache import ScoreCache, default_cache_path

    return None if args.no_cache else ScoreCache(args.cache or default_cache_path())


def run_eval_command(args: argparse.Namespace) -> int:
    from aligngemini.eval.layouts import LayoutError
    from aligngemini.eval.report import fmt, write_report
    from aligngemini.eval.robustness import parse_perturb
    from aligngemini.eval.runner import fusion_settings, run_evaluation

    try:
        sweeps = [parse_perturb(s) for s in args.perturb]
        thresholds = _parse_thresholds(args.threshold)
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        evalset = _read(args)
    except (ValueError, LayoutError) as exc:
        return _fail(str(exc))
    detector = load_detector(args)
    try:
        settings = fusion_settings(detector, rule=args.rule, thresholds=thresholds)
    except ValueError as exc:
        return _fail(str(exc))
    cache = _open_cache(args)
    try:
        run = run_evaluation(detector, evalset, settings=settings, sweeps=sweeps, cache=cache,
                             batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                             provenance=args.provenance)  # fmt: skip
    finally:
        if cache is not None:
            cache.close()
    report = write_report(run, args.report, with_plots=not args.no_plots)
    out = Path(args.report)
    print(f"{report['n_scored']} of {report['n_images']} images scored ({report['n_errors']} could not be); "
          f"report: {out / 'report.md'}")  # fmt: skip
    if not report["n_scored"]:
        print("error: no image could be scored; see errors.txt in the report folder", file=sys.stderr)
        return 1
    for det in ("fused", "pixel", "semantic"):
        m = report["overall"].get(det)
        s = (report.get("summary") or {}).get(det)
        if m is None:
            continue
        mean = fmt("balanced_acc", s["mean"]["balanced_acc"]) if s else "—"
        print(f"  {det:9s} balanced acc {fmt('balanced_acc', m['balanced_acc'])}%  (mean over subsets {mean}%), "
              f"AUC {fmt('auc', m['auc'])}%")  # fmt: skip
    return 0


def run_calibrate_command(args: argparse.Namespace) -> int:
    from aligngemini.bundle import BundleError, load_bundle
    from aligngemini.eval.calibrate import CALIBRATION_HEADING, calibrate, card_section
    from aligngemini.eval.layouts import LayoutError
    from aligngemini.eval.runner import fusion_settings, score_items

    out = Path(args.out).expanduser()
    try:
        if args.target == "fpr" and not 0 <= args.target_fpr < 1:
            raise ValueError("--target-fpr must lie in [0, 1)")
        if args.uncertain_width is not None and not 0 <= args.uncertain_width <= 1:
            raise ValueError("--uncertain-width must lie in [0, 1]")
        bundle = load_bundle(args.bundle)
        src = bundle.dir.resolve()
        if out.resolve() == src or out.resolve().is_relative_to(src):
            raise ValueError(
                f"{out}: the calibrated copy must not be written over or inside the source bundle {src}"
            )
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ValueError(
                f"{out}: folder exists and is not empty; choose another --out or pass --overwrite"
            )
        if bool(args.scores) == bool(args.data):
            raise ValueError("give DATA to score, or --scores CSV with scores already measured (not both)")
        if args.balance_by and not (args.scores and args.target == "balanced"):
            raise ValueError(
                "--balance-by needs --scores CSV (its groups are a column there) and --target balanced"
            )
        groups = None
        if args.scores:
            roles = sorted(bundle.config["branches"])
            scores, labels, groups = read_scores_csv(Path(args.scores), roles, args.balance_by)
            weighed = (
                f", each class of each '{args.balance_by}' group weighed equally" if args.balance_by else ""
            )
            sources = [f"{args.scores}{weighed}"]
            current = bundle.thresholds()
            fusion = bundle.config.get("fusion") or {}
            band = fusion.get("uncertain_band")
            rule = args.rule or str(fusion.get("rule", "or"))
        else:
            evalset = _read(args)
    except (ValueError, LayoutError, BundleError) as exc:
        return _fail(str(exc))
    if not args.scores:
        detector = load_detector(args)
        settings = fusion_settings(detector, rule=args.rule)
        cache = _open_cache(args)
        try:
            table = score_items(detector, evalset.items, cache=cache, batch_size=args.batch_size,
                                workers=args.workers, progress=not args.quiet)  # fmt: skip
        finally:
            if cache is not None:
                cache.close()
        ok = table.ok
        labels = evalset.labels[ok]
        if table.errors:
            print(
                f"warning: {len(table.errors)} image(s) could not be scored and are left out", file=sys.stderr
            )
        scores = {r: table.scores[r][ok] for r in table.roles}
        sources = [i["path"] for i in evalset.inputs]
        current, band, rule = settings.thresholds, settings.uncertain_band, settings.rule
    try:
        cal = calibrate(scores, labels, rule=rule, target=args.target, target_fpr=args.target_fpr, current=current,
                        current_band=band, uncertain_width=args.uncertain_width, groups=groups)  # fmt: skip
    except ValueError as exc:
        return _fail(str(exc))
    record = {**cal.to_dict(), "data": sources, "source_bundle": bundle.bundle_id}
    updates = {
        "branches": {r: {"threshold": t} for r, t in cal.thresholds.items()},
        "fusion": {"rule": cal.rule, "uncertain_band": cal.uncertain_band, **cal.params},
        "calibration": _jsonable(record),
    }
    try:
        copy = bundle.copy_with(out, updates, overwrite=args.overwrite)
    except BundleError as exc:
        return _fail(str(exc))
    card = copy.dir / "MODEL_CARD.md"
    # A calibrated bundle calibrated again: its old section describes thresholds the copy no longer has.
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    body = text.partition(CALIBRATION_HEADING)[0].rstrip("\n") + "\n" if text else ""
    card.write_text(body + card_section(cal, record["data"]), encoding="utf-8")
    after = cal.after["fused"]
    print(f"calibrated on {cal.n_real} real / {cal.n_fake} fake images: thresholds "
          + ", ".join(f"{r}={t:.4g}" for r, t in cal.thresholds.items())
          + (f", uncertain band {cal.uncertain_band}" if cal.uncertain_band else ""))  # fmt: skip
    fpr, tpr = after["fpr"], after["tpr"]
    print(f"  fused FPR {100 * fpr:.1f}%" + (f", TPR {100 * tpr:.1f}%" if tpr is not None else "")
          + f"; bundle written to {copy.dir}")  # fmt: skip
    return 0


def read_scores_csv(
    path: Path, roles: list[str], group_column: str | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """Per-branch scores, 0/1 labels and (with ``group_column``) each row's group from a CSV (``label`` real|fake,
    one column per branch); rows where a branch has no score are left out, and said so."""
    import csv

    import numpy as np

    if not path.is_file():
        raise ValueError(f"{path}: no such scores file")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    needed = ["label", *roles, *([group_column] if group_column else [])]
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {missing}; it needs 'label' and one column per branch {roles}"
                         + (f" and the --balance-by column {group_column!r}" if group_column else ""))  # fmt: skip
    kept = [r for r in rows if all(r[role] not in ("", "nan", "None") for role in roles)]
    if len(kept) < len(rows):
        print(
            f"warning: {len(rows) - len(kept)} row(s) of {path} lack a branch score and are left out",
            file=sys.stderr,
        )
    bad = sorted({r["label"] for r in kept} - {"real", "fake"})
    if bad:
        raise ValueError(f"{path}: labels must be real or fake, found {bad}")
    labels = np.array([r["label"] == "fake" for r in kept], dtype=np.int64)
    scores = {role: np.array([float(r[role]) for r in kept]) for role in roles}
    if not group_column:
        return scores, labels, None
    groups = np.array([r[group_column] for r in kept])
    one_class = sorted(str(g) for g in np.unique(groups) if len(set(labels[groups == g])) < 2)
    if one_class:
        raise ValueError(
            f"{path}: --balance-by {group_column}: group(s) {one_class} hold only one class; balance by a column "
            "whose every group has real and fake images (e.g. a fold of whole sources), or leave it out"
        )
    return scores, labels, groups


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=float))
