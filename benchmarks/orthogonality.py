"""The paper's central experiment in miniature: orthogonal supervision vs mixed, and the OR fusion.

AlignGemini's claim: detection is two orthogonal tasks. A pixel expert trained only on pure-pixel pairs
(real photos vs their own reconstructions) sees decoder traces and is blind to implausible scenes; a
semantic expert trained only on pure-semantic data (real vs AI images after one shared cue-removing chain)
sees scenes and is blind to decoder traces. Training each on both ("mixed") should hurt, and the OR of
the two pure experts should cover both kinds of fake. This script measures that on the starter corpus:

  models   (a) pixel branch on the pure-pixel set          (the starter pixel recipe)
           (b) semantic branch on the pure-semantic set    (the starter semantic recipe)
           (c) each branch on the two sets pooled          (mixed supervision)
           (d) OR fusion of (a) and (b), and of the two mixed models for comparison
  tests    (i)   pixel-only fakes from a generator no model trained on: ESRGAN down-up reconstructions
                 of the corpus's held-out (val-split) real photos, paired with those reals
           (ii)  the semantic set's held-out (val) split
           (iii) the union of (i) and (ii)
           and the pixel set's own held-out (val) pairs

Everything goes through the project's own code: the set builders (``build_pixel_set``) make the ESRGAN
test set, the one ``Trainer`` trains every model from the recipes, ``save_bundle`` turns each run into a
bundle, ``Detector`` + the eval runner's ``score_items`` (with its score cache) score the images,
``aligngemini.fusion.fuse`` fuses, ``aligngemini.eval.metrics.binary_metrics`` measures. Every stage is
resumable: builds skip finished pairs, a finished training run with the same recipe and data is reused
(an interrupted one resumes from its checkpoint), and scores come from the cache on a re-run.

    python benchmarks/orthogonality.py --out benchmarks/results/
    python benchmarks/orthogonality.py --out benchmarks/results/ \\
        --reuse-pixel runs/pixel-starter --reuse-semantic runs/semantic-starter

Writes ``orthogonality.json`` and ``orthogonality.md`` into ``--out``; intermediate sets, runs, bundles
and the score cache go to ``--work`` (default: the data directory's ``orthogonality/``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MACHINE = "2-core CPU dev box"
DEFAULT_ESRGAN = "esrgan:medium:x2"
WORKING_INVOCATION = "_last_invocation_that_did_work"
CHANCE_BAND = 0.08  # "near chance": balanced accuracy within 0.5 +/- this (the audit's own band)
TESTS = ("esrgan", "semantic_val", "union", "vae_val")
TEST_TITLES = {
    "esrgan": "(i) ESRGAN pixel-only fakes (val reals)",
    "semantic_val": "(ii) semantic set, val split",
    "union": "(iii) union of (i) and (ii)",
    "vae_val": "pixel set's own pairs, val split",
}


def column_titles(res: Mapping[str, Any]) -> dict[str, str]:
    """The column titles, test (i) naming the generator that made it."""
    spec = (res.get("data") or {}).get("esrgan_set", {}).get("generator")
    return (
        {**TEST_TITLES, "esrgan": f"(i) {spec} pixel-only fakes (val reals)"} if spec else dict(TEST_TITLES)
    )


MODELS = ("pixel_pure", "semantic_pure", "pixel_mixed", "semantic_mixed", "fusion_pure", "fusion_mixed")
STARTER_ROW = "fusion_pure_starter_thresholds"
MODEL_TITLES = {
    "pixel_pure": "(a) pixel, pure-pixel data",
    "semantic_pure": "(b) semantic, pure-semantic data",
    "pixel_mixed": "(c) pixel, mixed data",
    "semantic_mixed": "(c) semantic, mixed data",
    "fusion_pure": "(d) OR of (a) and (b)",
    "fusion_mixed": "OR of the two mixed models",
    STARTER_ROW: "(d) at the starter bundle's thresholds (calibrated on these val splits: in-sample)",
}
RUNS = {  # run name -> (role, training data)
    "pixel_pure": ("pixel", "pixel"),
    "semantic_pure": ("semantic", "semantic"),
    "pixel_mixed": ("pixel", "mixed"),
    "semantic_mixed": ("semantic", "mixed"),
}
FUSIONS = {"fusion_pure": ("pixel_pure", "semantic_pure"), "fusion_mixed": ("pixel_mixed", "semantic_mixed")}


class ExperimentError(RuntimeError):
    """A missing input or an inconsistent earlier run; the message names the path and the fix."""


# --------------------------------------------------------------------------------------------------
# Stage timing


@dataclass
class Stages:
    """Wall time of every stage of this invocation, and a ledger (a JSON file in the work directory) of
    what each stage cost when its work was really done, so that a re-run that reuses everything still
    reports the cost of the experiment. A stage body sets ``rec["work"]`` to ``"all"`` (it did the whole
    stage now: the ledger entry is replaced), ``"more"`` (it continued earlier work: added) or leaves it
    unset (nothing new: the ledger keeps its entry)."""

    ledger_path: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    did_work: bool = False

    def __post_init__(self) -> None:
        if self.ledger_path is not None and self.ledger_path.is_file():
            self.ledger = json.loads(self.ledger_path.read_text(encoding="utf-8"))

    def save(self) -> None:
        if self.ledger_path is not None:
            self.ledger_path.write_text(json.dumps(self.ledger, indent=1) + "\n", encoding="utf-8")

    def close_invocation(self, seconds: float) -> dict[str, Any] | None:
        """Record this invocation's wall time when it built, trained or scored something; return the
        latest such invocation (``None`` if none is recorded)."""
        if self.did_work:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.ledger[WORKING_INVOCATION] = {"seconds": round(seconds, 1), "utc": stamp}
            self.save()
        return self.ledger.get(WORKING_INVOCATION)

    @contextlib.contextmanager
    def stage(self, name: str, **note: Any) -> Iterator[dict[str, Any]]:
        rec: dict[str, Any] = {"stage": name, **note}
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield rec
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            self.records.append(rec)
            print(f"== {name}: {rec['seconds']:.1f} s", file=sys.stderr, flush=True)
        work = rec.pop("work", None)
        if work in ("all", "more"):
            self.did_work = True
            before = float(self.ledger.get(name, {}).get("seconds", 0.0)) if work == "more" else 0.0
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.ledger[name] = {"seconds": round(before + rec["seconds"], 2), "utc": stamp}
            if self.ledger_path is not None:
                self.save()
        if name in self.ledger:
            rec["seconds_when_done"] = self.ledger[name]["seconds"]


# --------------------------------------------------------------------------------------------------
# Inputs: the sets, and the ESRGAN test set


def find_set(explicit: Path | None, candidates: Sequence[Path], what: str, hint: str) -> Path:
    """The set directory (one holding ``manifest.jsonl``): ``explicit`` or the first candidate that exists."""
    options = [explicit] if explicit is not None else list(candidates)
    for folder in options:
        folder = Path(folder).expanduser()
        manifest = folder / "manifest.jsonl"
        if not manifest.is_file():
            continue
        report = folder / "build_report.json"  # a builder writes it last; a set without it is half-made
        if (folder / "build.json").is_file() and (
            not report.is_file() or report.stat().st_mtime < manifest.stat().st_mtime
        ):
            raise ExperimentError(
                f"{folder}: the {what} is still being built (or its build stopped: no build_report.json "
                "newer than manifest.jsonl); wait for it, or re-run its build command to finish it"
            )
        return folder
    tried = ", ".join(str(p) for p in options)
    raise ExperimentError(f"no {what} found (looked for manifest.jsonl in: {tried}); {hint}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ExperimentError(f"{path}:{i}: not JSON ({exc})") from None
    return rows


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def set_crop_size(set_dir: Path, default: int) -> int:
    """The crop size a build-pixel set was made with (its ``build.json``), so test pairs match it."""
    build = set_dir / "build.json"
    if build.is_file():
        cfg = json.loads(build.read_text(encoding="utf-8")).get("config") or {}
        if isinstance(cfg.get("crop_size"), int):
            return int(cfg["crop_size"])
    return default


def pair_generators(manifest: Path) -> set[str]:
    """The generators whose reconstructions a pure-pixel set's fakes are (each row's ``pair_generator``)."""
    names = set()
    for row in read_jsonl(manifest):
        name = (row.get("extra") or {}).get("pair_generator")
        if row.get("label") == "fake" and name:
            names.add(str(name))
    return names


def build_esrgan_set(
    corpus_manifest: Path,
    out_dir: Path,
    spec: str,
    *,
    split: str = "val",
    crop_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Test (i): the corpus's ``split`` real photos, each paired with its ESRGAN down-up reconstruction.

    Built by the project's pure-pixel builder (resumable), with the same crop and JPEG alignment as a
    training set but no blends and no resize: the fakes are the generator's pixels, at full strength."""
    from aligngemini.data.build.pixel import PixelBuildConfig, build_pixel_set
    from aligngemini.data.manifest import read_manifest
    from aligngemini.generators.base import build_generator

    rows = read_manifest(corpus_manifest)
    reals = [r for r in rows if r.label == "real" and str(r.split) == split]
    if not reals:
        raise ExperimentError(f"{corpus_manifest}: no real images in split {split!r} to reconstruct")
    cfg = PixelBuildConfig(
        crop_size=crop_size,
        pixel_blend_prob=0.0,
        freq_blend_prob=0.0,
        resize_prob=0.0,
        jpeg_align_prob=0.5,
        seed=seed,
        batch_size=4,
    )
    generator = build_generator(spec, device="cpu")
    result = build_pixel_set(
        reals,
        [generator],
        out_dir,
        cfg,
        source_base=corpus_manifest.parent,
        workers=workers,
        limit=limit,
        progress=progress,
    )
    # Pairs from reals no longer in the held-out split (the corpus was re-split since an earlier build)
    # stay in the builder's manifest; the test reads only the current ones.
    current = {str(r.sha256 or r.path) for r in reals}
    rows_now = [r for r in result.rows if (r.extra or {}).get("scene") in current]
    manifest = out_dir / "manifest.jsonl"
    if len(rows_now) != len(result.rows):
        from aligngemini.data.manifest import write_manifest

        manifest = write_manifest(rows_now, out_dir / "manifest.current.jsonl")
    return {
        "dir": str(out_dir),
        "manifest": str(manifest),
        "stale_rows_left_out": len(result.rows) - len(rows_now),
        "generator": spec,
        "source_split": split,
        "source_reals": len(reals),
        "limit": limit,
        "crop_size": crop_size,
        "pairs_written_now": result.stats.written,
        "pairs_done_before": result.stats.done_before,
        "skipped": dict(result.stats.skipped),
        "rows": len(rows_now),
        "config": {k: v for k, v in vars(cfg).items() if k != "batch_size"},
    }


def write_mixed_manifest(pixel_manifest: Path, semantic_manifest: Path, out: Path) -> dict[str, Any]:
    """The pooled training set for (c): every row of both sets, paths made absolute, groups prefixed by
    set (so a semantic image never pairs with a pixel one), ``extra.set`` naming its origin. Rewritten
    only when its content changes, so a finished mixed run stays reusable."""
    lines: list[str] = []
    counts: dict[str, int] = {}
    for name, manifest in (("pixel", pixel_manifest), ("semantic", semantic_manifest)):
        base = manifest.parent
        for row in read_jsonl(manifest):
            row = dict(row)
            p = Path(row["path"]).expanduser()
            row["path"] = str(p if p.is_absolute() else (base / p).resolve())
            row["group"] = f"{name}:{row.get('group') or row['path']}"
            row["extra"] = {**(row.get("extra") or {}), "set": name}
            lines.append(json.dumps(row, sort_keys=True) + "\n")
            key = f"{name}/{row.get('split')}/{row.get('label')}"
            counts[key] = counts.get(key, 0) + 1
    text = "".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")
    return {"manifest": str(out), "rows": len(lines), "counts": dict(sorted(counts.items()))}


# --------------------------------------------------------------------------------------------------
# Training (or reusing) the four runs


def _fingerprint(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """What a run depends on: the resolved recipe and the content of the manifest it trains on."""
    manifest = Path(str((recipe.get("data") or {}).get("manifest", ""))).expanduser()
    return {
        "recipe": json.loads(json.dumps(recipe, sort_keys=True)),
        "manifest_sha256": file_digest(manifest) if manifest.is_file() else None,
    }


def data_path(text: str) -> Path:
    """A recipe's path: ``data:REL`` is REL under the data home (as the tasks read it); ``~`` expanded."""
    if text.startswith("data:"):
        from aligngemini.paths import home_dir

        return home_dir() / "data" / text[len("data:") :]
    return Path(text).expanduser()


def recipe_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Dotted keys whose values differ between two recipes (``[a, b]``), ignoring where data and output
    live: what makes a reused run a different experiment from the mixed one trained here."""
    ignore = {"data.manifest", "train.output_dir"}
    out: dict[str, list[Any]] = {}
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.update(recipe_differences(va, vb, name + "."))
        elif name not in ignore and va != vb:
            out[name] = [va, vb]
    return out


def run_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "train_summary.json"
    if not path.is_file():
        raise ExperimentError(
            f"{run_dir}: no train_summary.json, so not a finished 'aligngemini train' run; "
            "finish it (aligngemini train RECIPE --resume -o DIR) or drop the --reuse option"
        )
    summary = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(summary.get("export"), dict) or not (run_dir / "branch").is_dir():
        raise ExperimentError(f"{run_dir}: the run exported no branch (train_summary.json has no 'export')")
    return summary


def train_or_reuse(
    recipe_path: Path,
    overrides: Sequence[str],
    out_dir: Path,
    *,
    reuse: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """A finished run: ``reuse`` as given, or the run in ``out_dir`` when it matches the recipe and data,
    or a fresh (or resumed) ``Trainer`` run on the CPU."""
    from aligngemini.config import load_config

    if reuse is not None:
        summary = run_summary(reuse)
        return {"dir": str(reuse), "source": "reused (--reuse)", "summary": summary}
    recipe = load_config(recipe_path, overrides)
    fp = _fingerprint(recipe)
    fp_path = out_dir / "orthogonality_fingerprint.json"
    if (out_dir / "train_summary.json").is_file() and not retrain:
        old = json.loads(fp_path.read_text(encoding="utf-8")) if fp_path.is_file() else None
        if old == fp:
            return {
                "dir": str(out_dir),
                "source": "cached (same recipe and data)",
                "summary": run_summary(out_dir),
            }
        raise ExperimentError(
            f"{out_dir}: holds a finished run of another recipe or data; pass --retrain to replace it "
            "or choose another --work"
        )
    from aligngemini.train.trainer import Trainer

    if retrain and out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").iterdir())
    if resume:
        old = json.loads(fp_path.read_text(encoding="utf-8")) if fp_path.is_file() else None
        if old != fp:
            raise ExperimentError(
                f"{out_dir}: holds checkpoints of another recipe or data; pass --retrain to start over"
            )
    fp_path.write_text(json.dumps(fp, indent=1) + "\n", encoding="utf-8")
    result = Trainer(recipe, output_dir=out_dir, device="cpu", progress=progress).fit(resume=resume or None)
    if result.interrupted:
        raise ExperimentError(f"{out_dir}: training was interrupted; run the script again to resume it")
    return {
        "dir": str(out_dir),
        "source": "resumed here" if resume else "trained here",
        "summary": run_summary(out_dir),
    }


# --------------------------------------------------------------------------------------------------
# Bundles, scoring, fusion, metrics


def bundle_from_runs(
    out_dir: Path, name: str, runs: Mapping[str, Path], card: str, pixel_infer: Sequence[str] = ()
) -> Path:
    """A bundle (``save_bundle``) whose branches are the exports of ``runs`` ({role: run dir}); a pixel
    branch's section gets the inference settings ``pixel_infer`` (KEY=VALUE, as ``assemble --set pixel.KEY=VALUE``)."""
    from aligngemini.branches.pixel.branch import check_section
    from aligngemini.bundle import save_bundle
    from aligngemini.config import apply_overrides

    branches: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for role, run_dir in runs.items():
        summary = run_summary(run_dir)
        branches[role] = summary["export"]
        if role == "pixel" and pixel_infer:
            branches[role] = apply_overrides(branches[role], pixel_infer)
            check_section(branches[role])
        for f in sorted((run_dir / "branch").rglob("*")):
            if f.is_file():
                rel = str(f.relative_to(run_dir / "branch"))
                if rel in files:
                    raise ExperimentError(f"{name}: two branches both export a file named {rel!r}")
                files[rel] = f
    config = {"name": name, "branches": branches, "fusion": {"rule": "or", "uncertain_band": None}}
    save_bundle(out_dir, config, files=files, card=card, overwrite=True)
    return out_dir


def starter_bundle_match(fused: Path) -> tuple[str, dict[str, float]] | None:
    """When models (a) and (b) are exactly the registered starter bundle's branches: a note, and that
    bundle's thresholds."""
    from aligngemini.bundle import registered_bundles

    starter = registered_bundles().get("starter")
    if starter is None:
        return None
    ours = json.loads((fused / "config.json").read_text()).get("files") or {}
    config = json.loads((starter / "config.json").read_text())
    theirs = config.get("files") or {}
    if not ours or sorted(ours.values()) != sorted(theirs.values()):
        return None
    thresholds = {role: sec.get("threshold") for role, sec in (config.get("branches") or {}).items()}
    note = (
        f"models (a) and (b) carry the same weights as the registered starter bundle ({starter}); "
        f"its own thresholds are {thresholds} and its fusion {config.get('fusion')}; every row uses each "
        f"run's exported threshold except the row '{MODEL_TITLES[STARTER_ROW]}' (hard OR decision, "
        "no uncertain band)"
    )
    if set(thresholds) != {"pixel", "semantic"} or None in thresholds.values():
        return None
    return note, {k: float(v) for k, v in thresholds.items()}


@dataclass
class TestSets:
    """All test images once (``items``), and which of them make up each named test."""

    items: list[Any]
    index: dict[str, np.ndarray]
    sources: dict[str, str]

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)


def load_test_sets(esrgan: Path, semantic: Path, pixel: Path, split: str = "val") -> TestSets:
    """The four tests as eval items (the eval package's manifest reader), de-duplicated by path.
    Each argument is a set's manifest (or its folder, for ``manifest.jsonl``)."""
    from aligngemini.eval.layouts import read_data

    parts = {
        "esrgan": esrgan,
        "semantic_val": semantic,
        "vae_val": pixel,
    }
    parts = {k: (v / "manifest.jsonl" if v.is_dir() else v) for k, v in parts.items()}
    items: list[Any] = []
    where: dict[str, int] = {}
    index: dict[str, np.ndarray] = {}
    for name, manifest in parts.items():
        evalset = read_data([manifest], layout="manifest", split=split)
        idx = []
        for it in evalset.items:
            key = str(Path(it.path).resolve())
            if key not in where:
                where[key] = len(items)
                items.append(it)
            idx.append(where[key])
        index[name] = np.array(idx, dtype=np.int64)
    index["union"] = np.unique(np.concatenate([index["esrgan"], index["semantic_val"]]))
    return TestSets(items, {k: index[k] for k in TESTS}, {k: str(v) for k, v in parts.items()})


def score_model(
    bundle_dir: Path, items: Sequence[Any], cache: Any, *, batch_size: int, progress: bool
) -> dict:
    """Per-branch p_fake of every item through ``Detector`` and the eval runner (score-cached)."""
    from aligngemini.detector import Detector
    from aligngemini.eval.runner import score_items

    detector = Detector.load(bundle_dir, device="cpu")
    table = score_items(detector, items, cache=cache, batch_size=batch_size, workers=2, progress=progress)
    return {
        "scores": {role: table.scores[role] for role in table.roles},
        "thresholds": {role: float(b.threshold) for role, b in detector.branches.items()},
        "errors": {str(items[i].path): reason for i, reason in table.errors.items()},
        "n_cached": table.n_cached,
        "n_scored": table.n_scored,
    }


def measure_cell(labels: np.ndarray, p_fake: np.ndarray, decisions: np.ndarray) -> dict[str, Any]:
    from aligngemini.eval.metrics import binary_metrics, detection_intervals

    ok = ~np.isnan(p_fake)
    m = binary_metrics(labels[ok], p_fake[ok], decisions=decisions[ok])
    ci = detection_intervals(labels[ok], p_fake[ok], decisions[ok])
    m["bacc_ci95"] = None if ci is None else list(ci["balanced_acc"])
    if (~ok).any():
        m["n_unscored"] = int((~ok).sum())
    return m


def model_outputs(
    scored: Mapping[str, dict], starter_thresholds: Mapping[str, float] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(p_fake, decision) per model: the single-branch runs at their thresholds, and the OR fusions; with
    ``starter_thresholds``, also the OR of (a) and (b) at those (the starter bundle's calibrated ones)."""
    from aligngemini.fusion import fuse

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (role, _) in RUNS.items():
        s = scored[name]
        p = s["scores"][role]
        out[name] = (p, np.where(np.isnan(p), False, p >= s["thresholds"][role]))
    for name, (px, se) in FUSIONS.items():
        scores = {"pixel": scored[px]["scores"]["pixel"], "semantic": scored[se]["scores"]["semantic"]}
        thresholds = {
            "pixel": scored[px]["thresholds"]["pixel"],
            "semantic": scored[se]["thresholds"]["semantic"],
        }
        fr = fuse(scores, thresholds, "or")
        out[name] = (fr.p_fake, fr.fake)
    if starter_thresholds:
        scores = {
            "pixel": scored["pixel_pure"]["scores"]["pixel"],
            "semantic": scored["semantic_pure"]["scores"]["semantic"],
        }
        fr = fuse(scores, dict(starter_thresholds), "or")  # the hard OR decision; no uncertain band
        out[STARTER_ROW] = (fr.p_fake, fr.fake)
    return out


def results_table(tests: TestSets, outputs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    labels = tests.labels
    table: dict[str, dict] = {}
    for model in [m for m in (*MODELS, STARTER_ROW) if m in outputs]:
        p, d = outputs[model]
        row = {test: measure_cell(labels[idx], p[idx], d[idx]) for test, idx in tests.index.items()}
        pair = [row[t]["balanced_acc"] for t in ("esrgan", "semantic_val")]
        row["mean_i_ii"] = {"balanced_acc": float(np.mean(pair)) if None not in pair else None}
        table[model] = row
    return table


def check_fusion_through_detector(bundle_dir: Path, items: Sequence[Any], fused: np.ndarray, k: int) -> dict:
    """The fused bundle's own ``Detector.predict`` on ``k`` test images must give the fused scores
    computed here from the two branches' cached scores (same rule, same thresholds)."""
    from aligngemini.detector import Detector

    if k <= 0:
        return {"checked": 0}
    pick = np.linspace(0, len(items) - 1, min(k, len(items))).round().astype(int)
    detector = Detector.load(bundle_dir, device="cpu")
    verdicts = detector.predict([str(items[i].path) for i in pick], batch_size=len(pick))
    got = np.array([np.nan if v.p_fake is None else v.p_fake for v in verdicts], dtype=np.float64)
    diff = float(np.nanmax(np.abs(got - fused[pick]))) if len(pick) else 0.0
    return {"checked": int(len(pick)), "max_abs_diff": diff, "agree": bool(diff < 1e-4)}


# --------------------------------------------------------------------------------------------------
# Findings (computed from the table, not written by hand) and the report


def _near_chance(x: float | None) -> bool | None:
    return None if x is None else abs(x - 0.5) <= CHANCE_BAND


def findings(table: Mapping[str, dict]) -> dict[str, Any]:
    def b(model: str, test: str) -> float | None:
        return table[model][test]["balanced_acc"]

    def gap(a: float | None, c: float | None) -> float | None:
        return None if a is None or c is None else round(a - c, 4)

    blind = {
        "pixel_pure_on_semantic_val": {"balanced_acc": b("pixel_pure", "semantic_val")},
        "semantic_pure_on_esrgan": {"balanced_acc": b("semantic_pure", "esrgan")},
    }
    for v in blind.values():
        v["near_chance"] = _near_chance(v["balanced_acc"])
    ortho_vs_mixed = {}
    for role, own, other in (("pixel", "esrgan", "semantic_val"), ("semantic", "semantic_val", "esrgan")):
        pure, mixed = f"{role}_pure", f"{role}_mixed"
        ortho_vs_mixed[role] = {
            test: {
                "pure": b(pure, test),
                "mixed": b(mixed, test),
                "pure_minus_mixed": gap(b(pure, test), b(mixed, test)),
            }
            for test in (own, other, "union", "vae_val")
        }
    fusions = {}
    for fusion, (px, se) in FUSIONS.items():
        best = max((x for x in (b(px, "union"), b(se, "union")) if x is not None), default=None)
        fusions[fusion] = {
            "union": b(fusion, "union"),
            "best_single_branch_union": best,
            "gain_over_best_branch": gap(b(fusion, "union"), best),
            "mean_i_ii": table[fusion]["mean_i_ii"]["balanced_acc"],
        }
    fusions["pure_minus_mixed_union"] = gap(b("fusion_pure", "union"), b("fusion_mixed", "union"))
    return {
        "chance_band": CHANCE_BAND,
        "blind_spots": blind,
        "orthogonal_vs_mixed": ortho_vs_mixed,
        "fusion": fusions,
    }


def working_text(res: Mapping[str, Any]) -> str:
    w = res.get("last_working_invocation")
    if not w:
        return ""
    return f"{w['seconds'] / 60:.1f} min for the last invocation that built, trained or scored ({w['utc']}); "


def _yes(x: bool | str | None) -> str:
    return {True: "yes", False: "no", None: "undefined", "tie": "tie"}[x]


def claim_lines(f: Mapping[str, Any]) -> list[str]:
    """One line per claim of the paper, each answered from the numbers."""
    bs, om, fu = f["blind_spots"], f["orthogonal_vs_mixed"], f["fusion"]
    both_blind = None
    if None not in (bs[k]["near_chance"] for k in bs):
        both_blind = all(bs[k]["near_chance"] for k in bs)

    def better(x: float | None) -> bool | str | None:
        return None if x is None else ("tie" if x == 0 else x > 0)

    gain = fu["fusion_pure"]["gain_over_best_branch"]
    return [
        f"1. Each pure expert is near chance on the other's test: {_yes(both_blind)} "
        f"(pixel (a) on (ii) {_pct(bs['pixel_pure_on_semantic_val']['balanced_acc'])}, "
        f"semantic (b) on (i) {_pct(bs['semantic_pure_on_esrgan']['balanced_acc'])}).",
        "2. Orthogonal supervision beats mixed, on the union (iii): "
        f"pixel {_yes(better(om['pixel']['union']['pure_minus_mixed']))} "
        f"({_signed(om['pixel']['union']['pure_minus_mixed'])} points), "
        f"semantic {_yes(better(om['semantic']['union']['pure_minus_mixed']))} "
        f"({_signed(om['semantic']['union']['pure_minus_mixed'])}); "
        "on each branch's own in-distribution test (the pixel set's val pairs for pixel, (ii) for semantic): "
        f"pixel {_yes(better(om['pixel']['vae_val']['pure_minus_mixed']))} "
        f"({_signed(om['pixel']['vae_val']['pure_minus_mixed'])}), "
        f"semantic {_yes(better(om['semantic']['semantic_val']['pure_minus_mixed']))} "
        f"({_signed(om['semantic']['semantic_val']['pure_minus_mixed'])}).",
        f"3. The OR of the two pure experts beats either alone on the union (iii): {_yes(better(gain))} "
        f"({_signed(gain)} points over the best single branch); OR of pure minus OR of mixed: "
        f"{_signed(fu['pure_minus_mixed_union'])} points.",
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def render_markdown(res: Mapping[str, Any]) -> str:
    table, f = res["table"], res["findings"]
    titles = column_titles(res)
    lines = [
        "# The paper in miniature: orthogonal vs mixed supervision, and OR fusion",
        "",
        f"Machine: {res['machine']}. Time: {res['experiment_seconds'] / 60:.1f} min for the whole experiment "
        "(every stage timed when its work was done, including runs reused from other commands); "
        f"{working_text(res)}{res['total_seconds'] / 60:.1f} min for the invocation that wrote this report "
        "(it reuses finished work). "
        "Thresholds: each branch's exported threshold (0.5, uncalibrated); fusion: OR. "
        f"Load average at the end (1/5/15 min): {res.get('load_average_1_5_15min_at_end')} on 2 cores "
        "(other work shared the CPU, so times are upper bounds).",
        "",
        "Command:",
        "",
        "```",
        res["command"],
        "```",
        "",
        "## Balanced accuracy, % (AUC in brackets)",
        "",
        "| model | " + " | ".join(titles[t] for t in TESTS) + " | mean of (i), (ii) |",
        "| --- | " + " | ".join("---" for _ in TESTS) + " | --- |",
    ]
    for model in table:
        cells = []
        for t in TESTS:
            m = table[model][t]
            auc = "" if m.get("auc") is None else f" ({m['auc']:.3f})"
            cells.append(f"{_pct(m['balanced_acc'])}{auc}")
        mean = _pct(table[model]["mean_i_ii"]["balanced_acc"])
        lines.append(f"| {MODEL_TITLES[model]} | " + " | ".join(cells) + f" | {mean} |")
    lines += [
        "",
        "## The paper's three claims, checked against this table (computed, not written by hand)",
        "",
    ]
    lines += claim_lines(f)
    lines += [
        "",
        "### Blind spots: each pure expert on the other's test",
        "",
        "| expert | test | balanced acc | within 50 +/- " + f"{100 * CHANCE_BAND:.0f} |",
        "| --- | --- | --- | --- |",
    ]
    bs = f["blind_spots"]
    for key, model, test in (
        ("pixel_pure_on_semantic_val", "pixel_pure", "semantic_val"),
        ("semantic_pure_on_esrgan", "semantic_pure", "esrgan"),
    ):
        v = bs[key]
        near = {True: "yes", False: "no", None: "n/a"}[v["near_chance"]]
        lines.append(f"| {MODEL_TITLES[model]} | {titles[test]} | {_pct(v['balanced_acc'])} | {near} |")
    lines += [
        "",
        "### Orthogonal vs mixed supervision: balanced accuracy, pure / mixed (pure minus mixed, points)",
        "",
        "| branch | " + " | ".join(titles[t] for t in TESTS) + " |",
        "| --- | " + " | ".join("---" for _ in TESTS) + " |",
    ]
    for role, tests in f["orthogonal_vs_mixed"].items():
        cells = [
            f"{_pct(tests[t]['pure'])} / {_pct(tests[t]['mixed'])} ({_signed(tests[t]['pure_minus_mixed'])})"
            for t in TESTS
        ]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### OR fusion on the union (iii)",
        "",
        "| fusion | balanced acc | best single branch | gain (points) |",
        "| --- | --- | --- | --- |",
    ]
    for fusion in FUSIONS:
        v = f["fusion"][fusion]
        lines.append(
            f"| {MODEL_TITLES[fusion]} | {_pct(v['union'])} | {_pct(v['best_single_branch_union'])} | "
            f"{_signed(v['gain_over_best_branch'])} |"
        )
    lines.append("")
    check = res.get("fusion_check") or {}
    for name, c in check.items():
        if c.get("checked"):
            lines.append(
                f"- Check: the {name} bundle's own Detector.predict on {c['checked']} test images gave the same "
                f"fused scores (max |diff| {c['max_abs_diff']:.2e})."
            )
    lines += [
        "",
        "## Per test: real and fake accuracy",
        "",
        "| model | test | balanced acc (95% CI) | real acc | fake acc | AUC | AP | n real | n fake |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in table:
        for t in TESTS:
            m = table[model][t]
            ci = m.get("bacc_ci95")
            ci_text = f" ({_pct(ci[0])}-{_pct(ci[1])})" if ci else ""
            auc = "n/a" if m.get("auc") is None else f"{m['auc']:.3f}"
            ap = "n/a" if m.get("ap") is None else f"{m['ap']:.3f}"
            lines.append(
                f"| {MODEL_TITLES[model]} | {titles[t]} | {_pct(m['balanced_acc'])}{ci_text} | "
                f"{_pct(m['real_acc'])} | {_pct(m['fake_acc'])} | {auc} | {ap} | {m['n_real']} | {m['n_fake']} |"
            )
    lines += ["", "## Data", ""]
    for key, info in res["data"].items():
        lines.append(f"- {key}: `{json.dumps(info, sort_keys=True, default=str)}`")
    lines += ["", "## Runs", ""]
    for name in RUNS:
        info = res["runs"][name]
        summary = info.get("summary") or {}
        lines.append(
            f"- {MODEL_TITLES[name]}: {info['source']}, `{info['dir']}`; {summary.get('steps')} steps, "
            f"{summary.get('seconds')} s of training; seed {summary.get('recipe', {}).get('train', {}).get('seed')}; "
            f"trained on `{summary.get('recipe', {}).get('data', {}).get('manifest')}`"
        )
    lines += [
        "",
        "## Stage times (seconds)",
        "",
        "| stage | when its work was done | this invocation |",
        "| --- | --- | --- |",
    ]
    for rec in res["stages"]:
        done = rec.get("seconds_when_done") or rec.get("seconds_elsewhere") or rec["seconds"]
        where = " (another command)" if rec.get("seconds_elsewhere") else ""
        lines.append(f"| {rec['stage']} | {float(done):.1f}{where} | {rec['seconds']:.1f} |")
    lines.append(f"| total | {res['experiment_seconds']:.1f} | {res['total_seconds']:.1f} |")
    lines += ["", "Seeds: " + json.dumps(res["seeds"], sort_keys=True), ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# --------------------------------------------------------------------------------------------------
# The command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from aligngemini.paths import data_dir

    ap = argparse.ArgumentParser(
        prog="python benchmarks/orthogonality.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="where orthogonality.json/.md go"
    )
    ap.add_argument(
        "--work", type=Path, help="sets, runs, bundles, score cache (default: DATA/orthogonality)"
    )
    ap.add_argument(
        "--corpus", type=Path, help="starter corpus manifest (default: DATA/starter/manifest.jsonl)"
    )
    ap.add_argument(
        "--pixel-set",
        type=Path,
        help="pure-pixel set dir (default: first of DATA/pixel-starter, DATA/audit-starter/pixel)",
    )
    ap.add_argument(
        "--semantic-set",
        type=Path,
        help="pure-semantic set dir (default: first of DATA/semantic-starter, DATA/audit-starter/semantic)",
    )
    ap.add_argument(
        "--esrgan-set",
        type=Path,
        help="a ready test-(i) set dir (real/fake pairs, manifest.jsonl); default: build it from --corpus",
    )
    ap.add_argument(
        "--esrgan", default=DEFAULT_ESRGAN, help=f"held-out generator for test (i) (default {DEFAULT_ESRGAN})"
    )
    ap.add_argument(
        "--esrgan-limit", type=int, default=150, help="at most this many val reals for test (i) (150)"
    )
    ap.add_argument(
        "--esrgan-crop",
        type=int,
        default=256,
        help="crop of each val real for test (i), never resized (256: ESRGAN costs ~1-3 s per 256 px crop "
        "on 2 CPU cores; 0: the pixel set's own crop size)",
    )
    ap.add_argument("--pixel-recipe", type=Path, default=ROOT / "recipes" / "pixel-starter.yaml")
    ap.add_argument("--semantic-recipe", type=Path, default=ROOT / "recipes" / "semantic-starter.yaml")
    ap.add_argument(
        "--pixel-opt", action="append", default=[], metavar="KEY=VALUE", help="pixel recipe override"
    )
    ap.add_argument(
        "--semantic-opt", action="append", default=[], metavar="KEY=VALUE", help="semantic recipe override"
    )
    ap.add_argument(
        "--pixel-infer",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an inference setting of every pixel branch, trained runs unchanged (as 'assemble --set "
        "pixel.KEY=VALUE'), e.g. crop.phases=4",
    )
    ap.add_argument(
        "--reuse-pixel", type=Path, help="a finished 'aligngemini train' run of the pixel recipe: model (a)"
    )
    ap.add_argument("--reuse-semantic", type=Path, help="a finished run of the semantic recipe: model (b)")
    ap.add_argument("--retrain", action="store_true", help="retrain runs in --work even when finished")
    ap.add_argument("--split", default="val", help="held-out split name (val)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the ESRGAN test-set build (0)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per scoring batch (16)")
    ap.add_argument(
        "--fusion-check", type=int, default=6, help="images the fused bundles re-score end to end (6)"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.work = (args.work or data_dir("orthogonality")).expanduser()
    args.corpus = (args.corpus or data_dir("starter") / "manifest.jsonl").expanduser()
    args.default_pixel_sets = [data_dir("pixel-starter"), data_dir("audit-starter") / "pixel"]
    args.default_semantic_sets = [data_dir("semantic-starter"), data_dir("audit-starter") / "semantic"]
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from aligngemini.eval.score_cache import ScoreCache

    t_start = time.perf_counter()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages(work / "stage_ledger.json")
    progress = not args.quiet
    notes: list[str] = []
    data: dict[str, Any] = {}

    def find_pixel_set() -> Path:
        return find_set(
            args.pixel_set, args.default_pixel_sets, "pure-pixel set",
            "build one with 'aligngemini data build-pixel' (or benchmarks/audit_starter.py) or pass --pixel-set",
        )  # fmt: skip

    # Test (i) first: it needs only the corpus, so it can be built while the training sets are being made.
    if args.esrgan_set is not None:
        esrgan_set = find_set(args.esrgan_set, [], "ESRGAN test set", "check --esrgan-set")
        data["esrgan_set"] = {"dir": str(esrgan_set), "given": True}
    else:
        if not args.corpus.is_file():
            raise ExperimentError(
                f"{args.corpus}: no starter corpus manifest; run 'aligngemini data fetch-starter'"
            )
        esrgan_set = work / f"test-{args.esrgan.replace(':', '-')}-{args.split}"
        crop = args.esrgan_crop or set_crop_size(find_pixel_set(), 256)
        with stages.stage(
            "build test (i): ESRGAN reconstructions of val reals", generator=args.esrgan
        ) as rec:
            data["esrgan_set"] = info = build_esrgan_set(
                args.corpus, esrgan_set, args.esrgan, split=args.split, crop_size=crop,
                limit=args.esrgan_limit, seed=args.seed, progress=progress,
            )  # fmt: skip
            if info["pairs_written_now"]:
                rec["work"] = "more" if info["pairs_done_before"] else "all"
            if info["stale_rows_left_out"]:
                notes.append(
                    f"test (i): {info['stale_rows_left_out']} rows of {esrgan_set} come from reals no longer "
                    f"in the {args.split!r} split; left out"
                )

    with stages.stage("locate sets"):
        pixel_set = find_pixel_set()
        semantic_set = find_set(
            args.semantic_set, args.default_semantic_sets, "pure-semantic set",
            "build one with 'aligngemini data build-semantic' (or benchmarks/audit_starter.py) or pass --semantic-set",
        )  # fmt: skip
        for key, folder in (("pixel_set", pixel_set), ("semantic_set", semantic_set)):
            data[key] = {"dir": str(folder), "rows": len(read_jsonl(folder / "manifest.jsonl"))}
            if (folder / "build.json").is_file():  # the builder's config: what the set is
                data[key]["build_config"] = json.loads((folder / "build.json").read_text()).get("config")
        # Test (i) must come from a generator the pixel expert never trained on: a pixel set built with the
        # same one (the starter's TAEF2 + ESRGAN x2 set and the default test) would make "unseen" false.
        test_manifest = Path(data["esrgan_set"].get("manifest") or esrgan_set / "manifest.jsonl")
        trained = pair_generators(pixel_set / "manifest.jsonl")
        held_out = pair_generators(test_manifest)
        data["pixel_set"]["generators"] = sorted(trained)
        data["esrgan_set"]["generators"] = sorted(held_out)
        if trained & held_out:
            raise ExperimentError(
                f"test (i) {test_manifest} is made by {sorted(trained & held_out)}, which the pixel set "
                f"{pixel_set} also holds, so it is not a held-out generator; pass --esrgan with another "
                "one (e.g. esrgan:thick:x2) and a --work directory of its own"
            )

    with stages.stage("write mixed manifest"):
        data["mixed"] = write_mixed_manifest(
            pixel_set / "manifest.jsonl", semantic_set / "manifest.jsonl", work / "mixed" / "manifest.jsonl"
        )

    # The mixed runs first: a run reused from another command (--reuse-*) may still be finishing meanwhile.
    plans = {
        "pixel_mixed": (args.pixel_recipe, args.pixel_opt, work / "mixed" / "manifest.jsonl", None),
        "semantic_mixed": (args.semantic_recipe, args.semantic_opt, work / "mixed" / "manifest.jsonl", None),
        "pixel_pure": (args.pixel_recipe, args.pixel_opt, pixel_set / "manifest.jsonl", args.reuse_pixel),
        "semantic_pure": (args.semantic_recipe, args.semantic_opt, semantic_set / "manifest.jsonl", args.reuse_semantic),
    }  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    for name, (recipe, opts, manifest, reuse) in plans.items():
        with stages.stage(f"train {name}") as rec:
            overrides = [*opts, f"data.manifest={manifest}"]
            runs[name] = train_or_reuse(
                recipe, overrides, work / "runs" / name, reuse=reuse, retrain=args.retrain, progress=progress
            )
            rec["source"] = runs[name]["source"]
            rec["work"] = {"trained here": "all", "resumed here": "more"}.get(rec["source"])
            if reuse is not None:  # trained by another command: its own recorded training time
                rec["seconds_elsewhere"] = runs[name]["summary"].get("seconds")
        if reuse is not None:
            from aligngemini.config import load_config

            used = runs[name]["summary"].get("recipe") or {}
            trained_on = str(used.get("data", {}).get("manifest"))
            if data_path(trained_on).resolve() != manifest.resolve():
                notes.append(f"{name} was reused from {reuse}, trained on {trained_on}, not on {manifest}")
            differ = recipe_differences(load_config(recipe, overrides), used)
            if differ:
                notes.append(f"{name} was reused from {reuse}, whose recipe differs from {recipe}: {differ}")

    comparable = {}
    for role in ("pixel", "semantic"):  # pure and mixed must differ only in their data
        differ = recipe_differences(
            runs[f"{role}_pure"]["summary"].get("recipe") or {},
            runs[f"{role}_mixed"]["summary"].get("recipe") or {},
        )
        comparable[role] = {"same_recipe_but_data": not differ, "differences_pure_vs_mixed": differ}
        if differ:
            notes.append(f"the {role} pure and mixed runs differ in more than their data: {differ}")

    with stages.stage("bundles") as rec:
        bundles: dict[str, Path] = {}
        for name, (role, _) in RUNS.items():
            card = f"# {name}\n\n{MODEL_TITLES[name]}; made by benchmarks/orthogonality.py from {runs[name]['dir']}.\n"
            bundles[name] = bundle_from_runs(
                work / "bundles" / name, name, {role: Path(runs[name]["dir"])}, card, args.pixel_infer
            )
        for name, (px, se) in FUSIONS.items():
            card = f"# {name}\n\n{MODEL_TITLES[name]} (OR rule); made by benchmarks/orthogonality.py.\n"
            bundles[name] = bundle_from_runs(
                work / "bundles" / name,
                name,
                {"pixel": Path(runs[px]["dir"]), "semantic": Path(runs[se]["dir"])},
                card,
                args.pixel_infer,
            )

    starter = starter_bundle_match(bundles["fusion_pure"])
    if starter:
        notes.append(starter[0])

    with stages.stage("read test sets"):
        esrgan_manifest = Path(data["esrgan_set"].get("manifest") or esrgan_set / "manifest.jsonl")
        tests = load_test_sets(esrgan_manifest, semantic_set, pixel_set, split=args.split)
        for t, idx in tests.index.items():
            lab = tests.labels[idx]
            data.setdefault("tests", {})[t] = {
                "n_real": int((lab == 0).sum()),
                "n_fake": int((lab == 1).sum()),
            }
        data["tests"]["unique_images"] = len(tests.items)

    cache = ScoreCache(work / "scores.sqlite")
    scored: dict[str, dict] = {}
    for name in RUNS:
        with stages.stage(f"score {name}") as rec:
            scored[name] = score_model(
                bundles[name], tests.items, cache, batch_size=args.batch_size, progress=progress
            )
            rec["images_scored"] = scored[name]["n_scored"]
            rec["images_from_cache"] = scored[name]["n_cached"]
            if scored[name]["n_scored"]:
                rec["work"] = "more" if scored[name]["n_cached"] else "all"
        if scored[name]["errors"]:
            notes.append(
                f"{name}: {len(scored[name]['errors'])} image(s) could not be scored: {scored[name]['errors']}"
            )

    with stages.stage("fuse and measure") as rec:
        outputs = model_outputs(scored, starter[1] if starter else None)
        table = results_table(tests, outputs)
        found = findings(table)

    fusion_check = {}
    with stages.stage("check fused bundles through Detector") as rec:
        for name in FUSIONS:
            fusion_check[name] = check_fusion_through_detector(
                bundles[name], tests.items, outputs[name][0], args.fusion_check
            )
            if fusion_check[name].get("agree") is False:
                notes.append(
                    f"{name}: Detector.predict disagrees with the fused scores: {fusion_check[name]}"
                )

    total = time.perf_counter() - t_start
    experiment = sum(
        float(r.get("seconds_when_done") or r.get("seconds_elsewhere") or r["seconds"])
        for r in stages.records
    )
    working = stages.close_invocation(total)
    return {
        "experiment": "orthogonality (AlignGemini's central claim, in miniature)",
        "machine": MACHINE,
        "platform": f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}, "
        f"python {platform.python_version()}",
        "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],  # CPU shared with other work
        "command": shlex.join(["python", "benchmarks/orthogonality.py", *argv]),
        "git_commit": git_commit(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - total)),
        "total_seconds": round(total, 1),
        "experiment_seconds": round(experiment, 1),
        "last_working_invocation": working,
        "stages": stages.records,
        "seeds": {
            "esrgan_build": args.seed,
            **{
                f"train_{n}": (r["summary"].get("recipe") or {}).get("train", {}).get("seed")
                for n, r in runs.items()
            },
        },
        "thresholds": {n: s["thresholds"] for n, s in scored.items()},
        "data": data,
        "runs": {
            n: {
                "dir": r["dir"],
                "source": r["source"],
                "summary": {
                    k: r["summary"].get(k)
                    for k in ("task", "steps", "epochs", "samples_seen", "seconds", "final_val", "recipe")
                },
            }
            for n, r in runs.items()
        },  # fmt: skip
        "pure_vs_mixed_recipes": comparable,
        "bundles": {
            n: {"dir": str(p), "weights_sha256": json.loads((p / "config.json").read_text()).get("files")}
            for n, p in bundles.items()
        },
        "table": table,
        "findings": found,
        "fusion_check": fusion_check,
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        res = run(args, argv)
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "orthogonality.json").write_text(
        json.dumps(res, indent=2, default=_json_default) + "\n", encoding="utf-8"
    )
    (out / "orthogonality.md").write_text(render_markdown(res), encoding="utf-8")
    print(
        f"wrote {out / 'orthogonality.json'} and {out / 'orthogonality.md'} ({res['total_seconds']:.0f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
