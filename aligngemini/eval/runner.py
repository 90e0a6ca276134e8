"""Score a labelled image set with a detector (through the score cache), fuse, and measure.

The runner relies on the detector contract only: ``branches`` (roles), ``config`` (thresholds, fusion),
``bundle_id`` and ``score_loaded(list[LoadedImage]) -> {role: p_fake array}``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aligngemini.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    LoadedImage,
    decode_bytes,
)
from aligngemini.detector import one_thread_per_worker
from aligngemini.eval.layouts import EvalItem, EvalSet
from aligngemini.eval.metrics import Metrics, binary_metrics, summarize
from aligngemini.eval.provenance_census import census
from aligngemini.eval.robustness import CLEAN, Perturbation, Sweep
from aligngemini.eval.score_cache import ScoreCache, branch_model_keys, file_sha256
from aligngemini.fusion import FusionResult, fuse
from aligngemini.provenance import Provenance, read_provenance

log = logging.getLogger(__name__)
ROLES = ("pixel", "semantic")


# --------------------------------------------------------------------------------------------------
# What the detector decides with


@dataclass
class FusionSettings:
    thresholds: dict[str, float]
    rule: str = "or"
    uncertain_band: tuple[float, float] | None = None
    params: dict[str, Any] = field(
        default_factory=dict
    )  # the rule's fitted parameters (stack: weights, bias)

    def to_dict(self) -> dict[str, Any]:
        band = list(self.uncertain_band) if self.uncertain_band else None
        out = {"thresholds": dict(self.thresholds), "rule": self.rule, "uncertain_band": band}
        return {**out, **({"params": self.params} if self.params else {})}


def fusion_settings(
    detector: Any,
    *,
    rule: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    uncertain_band: tuple[float, float] | None | str = "bundle",
) -> FusionSettings:
    """The bundle's thresholds and fusion, with optional overrides (re-fusing without re-scoring)."""
    config = getattr(detector, "config", None) or {}
    sections = config.get("branches") or {}
    base = {role: float((sections.get(role) or {}).get("threshold", 0.5)) for role in detector.branches}
    if hasattr(detector, "thresholds"):
        base.update({r: float(t) for r, t in dict(detector.thresholds).items() if r in detector.branches})
    for role, value in (thresholds or {}).items():
        if role not in detector.branches:
            raise ValueError(
                f"threshold for {role!r}, but the bundle's branches are {sorted(detector.branches)}"
            )
        base[role] = float(value)
    fusion = config.get("fusion") or {}
    band: Any = fusion.get("uncertain_band") if uncertain_band == "bundle" else uncertain_band
    chosen = rule or str(fusion.get("rule", "or"))
    params = (
        {k: fusion[k] for k in ("weights", "bias") if k in fusion} if chosen == fusion.get("rule") else {}
    )
    return FusionSettings(base, chosen, tuple(band) if band else None, params)


# --------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class ScoreTable:
    """Per-branch p_fake for each item (NaN where the image could not be scored)."""

    roles: list[str]
    scores: dict[str, np.ndarray]
    errors: dict[int, str] = field(default_factory=dict)
    sha256: list[str | None] = field(default_factory=list)
    perturb: str = CLEAN
    n_cached: int = 0
    n_scored: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.sha256), dtype=bool)
        for role in self.roles:
            mask &= ~np.isnan(self.scores[role])
        if self.errors:
            mask[list(self.errors)] = False
        return mask


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Sequence[Any], ahead: int
) -> Iterator[Any]:
    """``pool.map`` that keeps at most ``ahead`` results in flight (decoded images are large)."""
    pending: deque[Future[Any]] = deque()
    it = iter(items)
    for x in it:
        pending.append(pool.submit(fn, x))
        if len(pending) >= ahead:
            break
    while pending:
        yield pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))


@dataclass
class HashedFiles:
    """Every file read once: its sha256 (the cache key) or why it could not be read, and, when asked for, what
    it declares about its origin (``provenance``: one entry per item, None where nothing could be read)."""

    shas: list[str | None]
    errors: dict[int, str]
    provenance: list[Provenance | None] | None = None


def hash_items(
    items: Sequence[EvalItem], *, workers: int = 4, progress: bool = True, provenance: bool = False
) -> HashedFiles:
    """sha256 of every file; with ``provenance`` its metadata read from the same bytes (one read per file)."""

    def one(i: int) -> tuple[int, str | None, Provenance | None, str | None]:
        path = items[i].path
        try:
            # without provenance, or too big to decode: hash it in chunks, read no metadata
            if not provenance or path.stat().st_size > DEFAULT_MAX_BYTES:
                return i, file_sha256(path), None, None
            data = path.read_bytes()
            return i, hashlib.sha256(data).hexdigest(), read_provenance(data), None
        except OSError as exc:
            return i, None, None, f"cannot read: {exc.strerror or exc}"

    out = HashedFiles([None] * len(items), {}, [None] * len(items) if provenance else None)
    with ThreadPoolExecutor(max_workers=workers) as pool, _progress(len(items), "hashing", progress) as bar:
        for i, sha, prov, err in _bounded_map(pool, one, range(len(items)), 4 * workers):
            out.shas[i] = sha
            if out.provenance is not None:
                out.provenance[i] = prov
            if err:
                out.errors[i] = err
            bar.update(1)
    return out


def score_items(
    detector: Any,
    items: Sequence[EvalItem],
    *,
    perturbation: Perturbation | None = None,
    cache: ScoreCache | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    hashed: HashedFiles | None = None,
    max_pixels: int | None = None,
) -> ScoreTable:
    """Per-branch scores of ``items`` (perturbed on the fly), from the cache where it has them.
    An unreadable or unscorable image is recorded in ``errors`` and does not stop the run."""
    t0 = time.perf_counter()
    default_workers = getattr(detector, "default_workers", None)
    workers = workers or (default_workers() if callable(default_workers) else min(8, os.cpu_count() or 2))
    # A real Detector splits CPU preparation (crops, resizing) from scoring: the workers then prepare too,
    # as detect does, and only the models run on the scoring side.
    prepare = getattr(detector, "prepare", None) if hasattr(detector, "score_prepared") else None
    roles = list(detector.branches)
    keys = branch_model_keys(detector)
    perturb_key = perturbation.key if perturbation else CLEAN
    if perturbation is not None and perturbation.is_identity:
        perturbation = None
    max_pixels = max_pixels or int(getattr(detector, "max_pixels", DEFAULT_MAX_PIXELS))
    hashed = hashed if hashed is not None else hash_items(items, workers=workers, progress=progress)
    shas, hash_errors = hashed.shas, hashed.errors
    n = len(items)
    scores = {role: np.full(n, np.nan) for role in roles}
    errors = dict(hash_errors)
    hits = cache.get([s for s in shas if s], keys, perturb_key) if cache is not None else {}
    todo: list[int] = []
    for i, sha in enumerate(shas):
        if i in errors:
            continue
        if sha in hits:
            for role in roles:
                scores[role][i] = hits[sha][role]
        else:
            todo.append(i)
    n_cached = n - len(errors) - len(todo)

    def load(i: int) -> tuple[int, Any]:
        item = items[i]
        try:
            data = item.path.read_bytes()
            img = decode_bytes(data, str(item.path), max_pixels=max_pixels, sha256=shas[i])
            if perturbation is not None:
                img = perturbation.apply(img, max_pixels=max_pixels)
            return i, (prepare(img) if prepare is not None else img)
        except ImageLoadError as exc:
            return i, exc.reason
        except OSError as exc:
            return i, f"cannot read: {exc.strerror or exc}"

    desc = "scoring" if perturb_key == CLEAN else f"scoring {perturb_key}"
    with (
        ThreadPoolExecutor(max_workers=workers, initializer=one_thread_per_worker) as pool,
        _progress(n, desc, progress) as bar,
    ):
        bar.update(n_cached + len(hash_errors))
        batch: list[tuple[int, Any]] = []

        def flush() -> None:
            if not batch:
                return
            written = _score_batch(detector, batch, roles, scores, errors)
            if cache is not None and written:
                cache.put([(shas[i], {r: scores[r][i] for r in roles}) for i in written], keys, perturb_key)
            bar.update(len(batch))
            batch.clear()

        for i, loaded in _bounded_map(pool, load, todo, max(2 * batch_size, 2 * workers)):
            if isinstance(loaded, str):
                errors[i] = loaded
                bar.update(1)
                continue
            batch.append((i, loaded))
            if len(batch) >= batch_size:
                flush()
        flush()
    n_new = len(todo) - (len(errors) - len(hash_errors))  # newly scored by the model; failures excluded
    return ScoreTable(
        roles, scores, errors, list(shas), perturb_key, n_cached, n_new, time.perf_counter() - t0
    )


def _score_batch(
    detector: Any,
    batch: list[tuple[int, Any]],
    roles: list[str],
    scores: dict[str, np.ndarray],
    errors: dict[int, str],
) -> list[int]:
    """Score one batch (decoded images, or images already through ``detector.prepare``); on failure, image by
    image so one bad input cannot sink the rest. Returns the indices scored. If every image of a batch fails
    on its own, the detector is broken: raise."""
    idx = [i for i, _ in batch]
    score = detector.score_loaded if isinstance(batch[0][1], LoadedImage) else detector.score_prepared
    try:
        out = _checked(score([img for _, img in batch]), roles, len(batch))
        for role in roles:
            scores[role][idx] = out[role]
        return idx
    except Exception as batch_exc:  # noqa: BLE001 - isolate the image that breaks the batch
        if len(batch) == 1:
            errors[idx[0]] = f"scoring failed: {type(batch_exc).__name__}: {batch_exc}"
            return []
        log.warning("batch scoring failed (%s); scoring its %d images one by one", batch_exc, len(batch))
    done: list[int] = []
    last: Exception | None = None
    for i, img in batch:
        try:
            out = _checked(score([img]), roles, 1)
        except Exception as exc:  # noqa: BLE001
            errors[i] = f"scoring failed: {type(exc).__name__}: {exc}"
            last = exc
            continue
        for role in roles:
            scores[role][i] = out[role][0]
        done.append(i)
    if not done and last is not None:
        raise RuntimeError(f"the detector failed on every image of a batch; last error: {last}") from last
    return done


def _checked(out: Mapping[str, Any], roles: list[str], n: int) -> dict[str, np.ndarray]:
    missing = [r for r in roles if r not in out]
    if missing:
        raise ValueError(f"score_loaded returned no scores for branch(es) {missing}")
    res = {r: np.asarray(out[r], dtype=np.float64).reshape(-1) for r in roles}
    for r, arr in res.items():
        if arr.shape[0] != n:
            raise ValueError(f"score_loaded returned {arr.shape[0]} scores for {n} images (branch {r})")
    return res


# --------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Measured:
    overall: dict[str, Metrics | None]
    subsets: dict[str, dict[str, Metrics | None]]
    summary: dict[str, dict[str, Any] | None]
    fused: FusionResult | None  # over the scored items (table.ok)
    blind_spots: dict[str, Any] | None


def _fused_metrics(labels: np.ndarray, fr: FusionResult, idx: np.ndarray) -> Metrics:
    m = binary_metrics(labels[idx], fr.p_fake[idx], decisions=fr.fake[idx])
    verdicts = np.array(fr.verdicts, dtype=object)[idx] if len(idx) else np.array([], dtype=object)
    uncertain = verdicts == "uncertain"
    if uncertain.any():
        m["uncertain_rate"] = float(uncertain.mean())
        kept = idx[~uncertain]
        decided = binary_metrics(labels[kept], fr.p_fake[kept], decisions=fr.fake[kept])
        m["decided_balanced_acc"] = decided["balanced_acc"]
    return m


def measure(
    evalset: EvalSet,
    table: ScoreTable,
    settings: FusionSettings,
    roles: Sequence[str] = ROLES,
    forced_fake: np.ndarray | None = None,
) -> Measured:
    """Metrics overall and per subset, for the fused decision and for each branch alone. A role the
    detector lacks gets None. Items that could not be scored are left out of every metric. ``forced_fake``
    marks items whose fused decision provenance overrides to fake (only when asked: ``--provenance override``);
    their scores, and so every AUC, stay the pixels'."""
    labels = evalset.labels
    ok = table.ok
    present = [r for r in table.roles]
    all_roles = list(dict.fromkeys([*roles, *present]))
    ok_idx = np.flatnonzero(ok)
    fr: FusionResult | None = None
    if ok_idx.size:
        fr_ok = fuse(
            {r: table.scores[r][ok_idx] for r in present},
            settings.thresholds,
            settings.rule,
            settings.uncertain_band,
            settings.params,
        )
        # Spread back to full length so that subsets can index with item indices.
        n = len(labels)
        p = np.full(n, np.nan)
        fake = np.zeros(n, dtype=bool)
        verdicts = ["error"] * n
        fired: list[list[str]] = [[] for _ in range(n)]
        p[ok_idx] = fr_ok.p_fake
        fake[ok_idx] = fr_ok.fake
        for j, i in enumerate(ok_idx):
            verdicts[i] = fr_ok.verdicts[j]
            fired[i] = fr_ok.fired[j]
        for i in np.flatnonzero(forced_fake & ok) if forced_fake is not None else []:
            fake[i], verdicts[i], fired[i] = True, "fake", [*fired[i], "provenance"]
        fr = FusionResult(p, fake, verdicts, fired)

    def block(idx: np.ndarray) -> dict[str, Metrics | None]:
        idx = idx[ok[idx]]
        out: dict[str, Metrics | None] = {}
        out["fused"] = (
            _fused_metrics(labels, fr, idx)
            if fr is not None
            else binary_metrics(labels[idx], np.zeros(len(idx)))
        )
        for role in all_roles:
            if role in present:
                out[role] = binary_metrics(
                    labels[idx], table.scores[role][idx], threshold=settings.thresholds[role]
                )
            else:
                out[role] = None
        return out

    overall = block(np.arange(len(labels)))
    subsets = {name: block(idx) for name, idx in evalset.subset_indices().items()}
    summary: dict[str, dict[str, Any] | None] = {}
    for role in ["fused", *all_roles]:
        per = {name: s[role] for name, s in subsets.items()}
        summary[role] = summarize(per) if any(v is not None for v in per.values()) else None
    return Measured(
        overall, subsets, summary, fr, blind_spots(labels, table, settings) if fr is not None else None
    )


def blind_spots(labels: np.ndarray, table: ScoreTable, settings: FusionSettings) -> dict[str, Any] | None:
    """Which branch catches which fakes (and flags which reals): the two experts' blind spots."""
    if not all(r in table.roles for r in ROLES):
        return None
    ok = table.ok
    px = table.scores["pixel"] >= settings.thresholds["pixel"]
    se = table.scores["semantic"] >= settings.thresholds["semantic"]
    out: dict[str, Any] = {}
    for name, lab in (("fake", 1), ("real", 0)):
        m = ok & (labels == lab)
        out[name] = {
            "n": int(m.sum()),
            "pixel_only": int((m & px & ~se).sum()),
            "semantic_only": int((m & se & ~px).sum()),
            "both": int((m & px & se).sum()),
            "neither": int((m & ~px & ~se).sum()),
        }
    return out


def sample_items(evalset: EvalSet, limit: int | None, seed: int = 0) -> EvalSet:
    """At most ``limit`` items, drawn at random but reproducibly, in their original order."""
    if not limit or limit >= len(evalset.items):
        return evalset
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(evalset.items), size=limit, replace=False))
    return EvalSet(
        [evalset.items[i] for i in keep],
        evalset.inputs,
        [*evalset.notes, f"--limit {limit}: a random sample (seed {seed}) of {len(evalset.items)} images"],
    )


def error_list(evalset: EvalSet, table: ScoreTable) -> list[dict[str, str]]:
    return [{"path": str(evalset.items[i].path), "reason": r} for i, r in sorted(table.errors.items())]


def item_rows(evalset: EvalSet, table: ScoreTable, fr: FusionResult | None) -> list[dict[str, Any]]:
    """One row per image: what the scores CSV holds."""
    rows = []
    for i, it in enumerate(evalset.items):
        row: dict[str, Any] = {
            "path": str(it.path),
            "benchmark": it.benchmark,
            "subset": it.subset if it.subset is not None else "*",
            "label": "fake" if it.label else "real",
            "sha256": table.sha256[i] if i < len(table.sha256) else None,
        }
        for role in table.roles:
            v = table.scores[role][i]
            row[role] = None if np.isnan(v) else float(v)
        row["fused"] = None if fr is None or np.isnan(fr.p_fake[i]) else float(fr.p_fake[i])
        row["verdict"] = fr.verdicts[i] if fr is not None else "error"
        row["error"] = table.errors.get(i)
        rows.append(row)
    return rows


@dataclass
class SweepPoint:
    perturbation: Perturbation
    table: ScoreTable
    measured: Measured


@dataclass
class EvalRun:
    """Everything one evaluation produced; report.py turns it into files."""

    evalset: EvalSet
    settings: FusionSettings
    table: ScoreTable
    measured: Measured
    detector: dict[str, Any]
    sweeps: list[tuple[Sweep, list[SweepPoint]]] = field(default_factory=list)
    cache_path: str | None = None
    seconds: float = 0.0
    provenance: dict[str, Any] | None = None  # census of what the files declare; None when not read


def describe_detector(detector: Any) -> dict[str, Any]:
    config = getattr(detector, "config", None) or {}
    sections = config.get("branches") or {}
    return {
        "id": str(getattr(detector, "bundle_id", "unknown")),
        "name": config.get("name"),
        "branches": {
            role: {"family": (sections.get(role) or {}).get("family")} for role in detector.branches
        },
        "missing_branches": [r for r in ROLES if r not in detector.branches],
    }


def run_evaluation(
    detector: Any,
    evalset: EvalSet,
    *,
    settings: FusionSettings | None = None,
    sweeps: Sequence[Sweep] = (),
    cache: ScoreCache | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    provenance: str = "report",
) -> EvalRun:
    """Score the clean images and every sweep point (files hashed once), then measure each. Scores come
    from pixels only; ``provenance`` "report" (default) counts what the files declare, "override" also lets
    a validly signed C2PA claim of AI generation decide the clean images' fused verdict, "off" skips it."""
    t0 = time.perf_counter()
    workers = workers or min(8, os.cpu_count() or 2)
    settings = settings or fusion_settings(detector)
    hashed = hash_items(evalset.items, workers=workers, progress=progress, provenance=provenance != "off")
    common = {
        "cache": cache,
        "batch_size": batch_size,
        "workers": workers,
        "progress": progress,
        "hashed": hashed,
    }
    table = score_items(detector, evalset.items, **common)
    census_report, forced = None, None
    if provenance != "off":
        found = hashed.provenance or []
        census_report = {"mode": provenance, **census(found, evalset.subset_indices())}
        if provenance == "override":
            forced = np.array([p is not None and p.signed_ai_claim for p in found], dtype=bool)
            census_report["overridden"] = int((forced & table.ok).sum())
    run = EvalRun(evalset, settings, table, measure(evalset, table, settings, forced_fake=forced),
                  describe_detector(detector), cache_path=str(cache.path) if cache is not None else None,
                  provenance=census_report)  # fmt: skip
    for sweep in sweeps:
        points = []
        for pert in sweep.points():
            t = (
                table
                if pert.is_identity
                else score_items(detector, evalset.items, perturbation=pert, **common)
            )
            points.append(SweepPoint(pert, t, measure(evalset, t, settings)))
        run.sweeps.append((sweep, points))
    run.seconds = time.perf_counter() - t0
    return run
