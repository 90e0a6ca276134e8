"""Turn an EvalRun into ``report.json``, ``report.md``, ``scores.csv`` and PNG plots in one folder."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aligngemini.eval import plots
from aligngemini.eval.metrics import METRIC_KEYS, SUMMARY_KEYS, detection_intervals
from aligngemini.eval.runner import ROLES, EvalRun, error_list, item_rows

MAX_ERRORS_IN_JSON = 200
BOOTSTRAP_RESAMPLES = 1000
DETECTORS = ("fused", *ROLES)


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None, floats to 6 decimals."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else round(x, 6)
    return x


def _roles(run: EvalRun) -> list[str]:
    return list(dict.fromkeys([*ROLES, *run.table.roles]))


def build_report(run: EvalRun) -> dict[str, Any]:
    from aligngemini import __version__

    es, table, meas = run.evalset, run.table, run.measured
    errors = error_list(es, table)
    n_ok = int(table.ok.sum())
    report: dict[str, Any] = {
        "bundle": run.detector["id"],
        "detector": {**run.detector, "fusion": run.settings.to_dict()},
        "data": es.inputs,
        "n_images": len(es.items),
        "n_scored": n_ok,
        "n_errors": len(errors),
        "errors": errors[:MAX_ERRORS_IN_JSON],
        "notes": list(es.notes),
        "overall": meas.overall,
        "intervals": _intervals(run),
        "subsets": meas.subsets,
        "summary": meas.summary,
        "blind_spots": meas.blind_spots,
    }
    report["provenance"] = run.provenance
    if len(es.inputs) > 1:
        report["benchmarks"] = _benchmarks(run)
    if run.sweeps:
        report["robustness"] = _robustness(run)
    report["cache"] = {"path": run.cache_path, "hits": table.n_cached, "scored": table.n_scored}
    report["timing"] = {"seconds": run.seconds, "scoring_seconds": table.seconds,
                        "images_per_s": (table.n_scored / table.seconds) if table.seconds and table.n_scored else None}  # fmt: skip
    report["version"] = __version__
    report["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return _clean(report)


def _intervals(run: EvalRun) -> dict[str, Any]:
    """95% bootstrap intervals of each detector's overall balanced accuracy and AUC (scored images only)."""
    labels, ok = run.evalset.labels, run.table.ok
    out: dict[str, Any] = {"resamples": BOOTSTRAP_RESAMPLES}
    fr = run.measured.fused
    if fr is not None:
        out["fused"] = detection_intervals(labels[ok], fr.p_fake[ok], fr.fake[ok], n=BOOTSTRAP_RESAMPLES)
    for role in run.table.roles:
        scores = run.table.scores[role][ok]
        decisions = scores >= run.settings.thresholds[role]
        out[role] = detection_intervals(labels[ok], scores, decisions, n=BOOTSTRAP_RESAMPLES)
    return out


def _benchmarks(run: EvalRun) -> dict[str, Any]:
    """Per benchmark: its subsets' mean/std/min, and across benchmarks the mean of those means (the
    "11-benchmark average" of DDA's table)."""
    from aligngemini.eval.metrics import summarize

    per_bench: dict[str, Any] = {}
    for bench, keys in run.evalset.benchmark_subsets().items():
        entry: dict[str, Any] = {"subsets": keys}
        for det in (*DETECTORS,):
            per = {k: run.measured.subsets[k].get(det) for k in keys if k in run.measured.subsets}
            entry[det] = summarize(per) if any(v is not None for v in per.values()) else None
        per_bench[bench] = entry
    across: dict[str, Any] = {}
    for det in DETECTORS:
        per = {b: (e[det]["mean"] if e.get(det) else None) for b, e in per_bench.items()}
        across[det] = summarize(per) if any(v is not None for v in per.values()) else None
    return {"per_benchmark": per_bench, "across_benchmarks": across}


def _robustness(run: EvalRun) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sweep, points in run.sweeps:
        pts = []
        for pt in points:
            pts.append({
                "value": pt.perturbation.value,
                "perturbation": pt.perturbation.key,
                "n_scored": int(pt.table.ok.sum()),
                "n_errors": len(pt.table.errors),
                "overall": pt.measured.overall,
                "subset_mean_balanced_acc": {
                    d: (s["mean"]["balanced_acc"] if s else None) for d, s in pt.measured.summary.items()
                },
            })  # fmt: skip
        out[sweep.name] = {"spec": sweep.spec, "op": sweep.op, "times": sweep.times,
                           "parameter": sweep.parameter, "points": pts}  # fmt: skip
    return out


def _curves(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    curves = []
    for name, sw in (report.get("robustness") or {}).items():
        bal = {
            d: [((p["overall"].get(d) or {}).get("balanced_acc")) for p in sw["points"]] for d in DETECTORS
        }
        clean = {d: ((report["overall"].get(d) or {}).get("balanced_acc")) for d in DETECTORS}
        curves.append({"name": name, "op": sw["op"], "parameter": sw["parameter"],
                       "values": [p["value"] for p in sw["points"]], "balanced_acc": bal, "clean": clean})  # fmt: skip
    return curves


def make_plots(run: EvalRun, out_dir: Path, report: Mapping[str, Any]) -> list[str]:
    """All figures; returns their file names (relative to ``out_dir``)."""
    labels = run.evalset.labels
    ok = run.table.ok
    thresholds = dict(run.settings.thresholds)
    scores: dict[str, np.ndarray] = {}
    if run.measured.fused is not None:
        scores["fused"] = np.where(ok, run.measured.fused.p_fake, np.nan)
        thresholds["fused"] = 0.5
    for role in run.table.roles:
        scores[role] = np.where(ok, run.table.scores[role], np.nan)
    made = [
        plots.roc_plot(out_dir / "roc.png", labels, scores, title=f"ROC ({report['n_scored']} images)"),
        plots.histogram_plot(out_dir / "histograms.png", labels, scores, thresholds),
        plots.scatter_plot(
            out_dir / "branch_scatter.png", labels, scores["pixel"], scores["semantic"], thresholds
        )
        if {"pixel", "semantic"} <= set(scores)
        else None,
        plots.subsets_plot(out_dir / "subsets.png", report["subsets"], [d for d in DETECTORS if d in scores]),
        plots.robustness_plot(
            out_dir / "robustness.png", _curves(report), [d for d in DETECTORS if d in scores]
        ),
    ]
    return [p.name for p in made if p is not None]


# --------------------------------------------------------------------------------------------------
# Markdown

_PERCENT = {"balanced_acc", "real_acc", "fake_acc", "acc", "ap", "auc", "eer", "tpr_at_1fpr", "tpr_at_5fpr",
            "uncertain_rate", "decided_balanced_acc"}  # fmt: skip
_HEAD = {"balanced_acc": "bal. acc", "real_acc": "real acc", "fake_acc": "fake acc", "acc": "acc", "ap": "AP",
         "auc": "AUC", "eer": "EER", "tpr_at_1fpr": "TPR@1%", "tpr_at_5fpr": "TPR@5%", "ece": "ECE",
         "n_real": "reals", "n_fake": "fakes"}  # fmt: skip


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key in _PERCENT:
        return f"{100 * value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _provenance_lines(prov: Mapping[str, Any] | None) -> list[str]:
    """What the files declare about their origin, per subset: numbers here are from pixels regardless."""
    if not prov:
        return []
    from aligngemini.eval.provenance_census import KINDS

    used = (
        "decided the fused verdict of the " + str(prov.get("overridden", 0)) + " clean image(s) with a "
        "validly signed C2PA claim of AI generation"
        if prov["mode"] == "override"
        else "was not used in any score"
    )
    lines = ["", "## Provenance the files carry", "",
             f"Metadata ({used}); counts of images carrying each kind:", ""]  # fmt: skip
    rows = [[name, *(str(c[k]) for k in ("n", *KINDS))] for name, c in
            [("all", prov["overall"]), *prov["subsets"].items()]]  # fmt: skip
    lines += _table(["set", "n", *KINDS], rows)
    return [*lines, ""]


def render_markdown(report: Mapping[str, Any], plot_files: list[str]) -> str:
    det = report["detector"]
    fusion = det["fusion"]
    lines = [
        "# Evaluation report",
        "",
        f"- bundle: `{report['bundle']}`; branches: {', '.join(det['branches']) or 'none'}"
        + (f" (missing: {', '.join(det['missing_branches'])})" if det["missing_branches"] else ""),
        f"- fusion: rule `{fusion['rule']}`, thresholds "
        + ", ".join(f"{r} {t:.4g}" for r, t in fusion["thresholds"].items())
        + (f", uncertain band {fusion['uncertain_band']}" if fusion["uncertain_band"] else ""),
        "- data: "
        + "; ".join(
            f"`{d['path']}` ({d['layout']}, {d['n_real']} real / {d['n_fake']} fake)" for d in report["data"]
        ),
        f"- images: {report['n_images']}, scored {report['n_scored']}, unreadable or failed {report['n_errors']}"
        f" (cache hits {report['cache']['hits']}, newly scored {report['cache']['scored']})",
        f"- created {report['created']} by aligngemini {report['version']} in {report['timing']['seconds']:.1f} s",
        "",
        "Rates are percentages. Balanced accuracy = (real acc + fake acc) / 2, the paper's metric. "
        "— marks a metric the data cannot define (e.g. AUC on a subset with one class).",
        "",
    ]
    for note in report.get("notes") or []:
        lines.append(f"> note: {note}")
    lines += _provenance_lines(report.get("provenance"))
    lines += ["", "## Overall", ""]
    keys = list(METRIC_KEYS)
    rows = []
    for d in DETECTORS:
        m = report["overall"].get(d)
        rows.append([d, *(fmt(k, m.get(k)) if m else "—" for k in keys)])
    lines += _table(["detector", *(_HEAD[k] for k in keys)], rows)
    iv = report.get("intervals") or {}
    spans = [
        f"{d} {fmt('balanced_acc', r['balanced_acc'][0])}-{fmt('balanced_acc', r['balanced_acc'][1])} "
        f"(AUC {fmt('auc', r['auc'][0])}-{fmt('auc', r['auc'][1])})"
        for d in DETECTORS
        if (r := iv.get(d))
    ]
    if spans:
        lines += ["", f"95% intervals of balanced accuracy (and AUC), from {iv['resamples']} bootstrap resamples of "
                  "the scored images within each class: " + "; ".join(spans) + "."]  # fmt: skip
    fused = report["overall"].get("fused") or {}
    if "uncertain_rate" in fused:
        lines += ["", f"Uncertain band holds {fmt('uncertain_rate', fused['uncertain_rate'])}% of images; "
                  f"balanced accuracy on the rest {fmt('balanced_acc', fused.get('decided_balanced_acc'))}."]  # fmt: skip
    lines += ["", "## Balanced accuracy per subset", ""]
    sub_rows = []
    for name, s in report["subsets"].items():
        anym = next((s[d] for d in DETECTORS if s.get(d)), {}) or {}
        sub_rows.append([name, *(fmt("balanced_acc", (s.get(d) or {}).get("balanced_acc")) if s.get(d) is not None else "n/a" for d in DETECTORS),
                         *(fmt("auc", (s.get(d) or {}).get("auc")) if s.get(d) is not None else "n/a" for d in DETECTORS),
                         str(anym.get("n_real", 0)), str(anym.get("n_fake", 0))])  # fmt: skip
    summ = report.get("summary") or {}
    for part in ("mean", "std", "min") if len(report["subsets"]) > 1 else ():
        sub_rows.append([f"**{part}**", *(fmt("balanced_acc", summ[d][part]["balanced_acc"]) if summ.get(d) else "n/a" for d in DETECTORS),
                         *(fmt("auc", summ[d][part]["auc"]) if summ.get(d) else "n/a" for d in DETECTORS), "", ""])  # fmt: skip
    lines += _table(
        ["subset", *(f"{d} bal. acc" for d in DETECTORS), *(f"{d} AUC" for d in DETECTORS), "reals", "fakes"],
        sub_rows,
    )
    if report.get("benchmarks"):
        lines += ["", "## Per benchmark (mean ± std over its subsets, min)", ""]
        rows = []
        for bench, e in report["benchmarks"]["per_benchmark"].items():
            cells = []
            for d in DETECTORS:
                s = e.get(d)
                cells.append(
                    f"{fmt('balanced_acc', s['mean']['balanced_acc'])} ± {fmt('balanced_acc', s['std']['balanced_acc'])} "
                    f"(min {fmt('balanced_acc', s['min']['balanced_acc'])})"
                    if s
                    else "n/a"
                )
            rows.append([bench, *cells])
        across = report["benchmarks"]["across_benchmarks"]
        rows.append(["**average**", *(f"{fmt('balanced_acc', across[d]['mean']['balanced_acc'])} ± {fmt('balanced_acc', across[d]['std']['balanced_acc'])} (min {fmt('balanced_acc', across[d]['min']['balanced_acc'])})" if across.get(d) else "n/a" for d in DETECTORS)])  # fmt: skip
        lines += _table(["benchmark", *DETECTORS], rows)
    bs = report.get("blind_spots")
    if bs:
        lines += ["", "## Blind spots: which expert catches what", "",
                  "Fakes caught by one branch only are the other branch's blind spot; reals flagged show false alarms.", ""]  # fmt: skip
        rows = [
            [
                cls,
                str(bs[cls]["n"]),
                *(str(bs[cls][k]) for k in ("pixel_only", "semantic_only", "both", "neither")),
            ]
            for cls in ("fake", "real")
        ]
        lines += _table(["class", "n", "pixel only", "semantic only", "both", "neither"], rows)
    if report.get("robustness"):
        lines += ["", "## Robustness (balanced accuracy, all images)", ""]
        for name, sw in report["robustness"].items():
            lines += [f"### {name} (`{sw['spec']}`)", ""]
            rows = [[f"{p['value']:g}", *(fmt("balanced_acc", (p["overall"].get(d) or {}).get("balanced_acc")) if p["overall"].get(d) is not None else "n/a" for d in DETECTORS), str(p["n_errors"])] for p in sw["points"]]  # fmt: skip
            lines += _table([sw["parameter"], *DETECTORS, "errors"], rows) + [""]
    if report["n_errors"]:
        lines += ["", "## Images that could not be scored", ""]
        lines += [f"- `{e['path']}`: {e['reason']}" for e in report["errors"][:50]]
        if report["n_errors"] > 50:
            lines.append(f"- ... and {report['n_errors'] - 50} more (all in errors.txt)")
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plot_files]
    return "\n".join(lines) + "\n"


def write_report(run: EvalRun, out_dir: str | Path, *, with_plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md, scores.csv, errors.txt (if any) and the plots; return the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(run)
    plot_files = make_plots(run, out, report) if with_plots and report["n_scored"] else []
    report["plots"] = plot_files
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report, plot_files), encoding="utf-8")
    rows = item_rows(run.evalset, run.table, run.measured.fused)
    if rows:
        with (out / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    errors = error_list(run.evalset, run.table)
    if errors:
        (out / "errors.txt").write_text(
            "".join(f"{e['path']}\t{e['reason']}\n" for e in errors), encoding="utf-8"
        )
    return report


__all__ = ["build_report", "make_plots", "render_markdown", "write_report", "SUMMARY_KEYS"]
