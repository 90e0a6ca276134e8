"""The purity audit: numbers that say the pixel set and the semantic set are orthogonal.

Cross checks (must sit near chance):
  pixel probe on the semantic set       -> the chain removed pixel cues
  embedding probe on the pixel set      -> each pair shares its scene
Sanity checks (must sit clearly above chance, or the cross checks prove nothing):
  pixel probe on the pixel set, embedding probe on the semantic set
Also: per-class format/size/JPEG-quality statistics with a metadata probe, counts per class and
source, and content separability of the semantic set measured across sources and generators (a
cross-validated figure is reported beside it only as the optimistic reference).

Every probe is trained on the set's ``train`` split and measured on its ``val`` split (disjoint
sources, by construction of the starter corpus); the report says which split each number is from.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from aligngemini.data.build.balance import Embedder, EmbeddingCache, content_view, embed_rows, embedder_id
from aligngemini.data.build.common import MANIFEST_NAME, row_path, stable_id
from aligngemini.data.build.probes import (
    PixelProbeConfig,
    ProbeResult,
    cross_validated_auc,
    out_of_group_scores,
    run_embedding_probe,
    run_pixel_probe,
    summarize,
)
from aligngemini.data.manifest import ManifestRow, read_manifest
from aligngemini.decode import estimate_jpeg_quality, load_image

LABEL_INDEX = {"real": 0, "fake": 1}


@dataclass
class AuditConfig:
    pixel_probe: PixelProbeConfig = field(default_factory=PixelProbeConfig)
    max_images_per_class: int = 300  # per split, for the pixel probe (time and memory bound)
    train_split: str = "train"
    eval_split: str = "val"
    fallback_eval_fraction: float = 0.3  # used when a set has no eval split: a split by group
    content_view: int = 64  # embedding probes see images reduced to this short side (0: full image)
    chance_margin: float = 0.08  # near chance: |balanced accuracy - 0.5| <= margin
    clearly_above: float = 0.65  # sanity: balanced accuracy >= this and its 95% interval above 0.5
    seed: int = 0


class AuditError(ValueError):
    """A set that cannot be audited; the message names the directory and what is missing."""


@dataclass
class ImageSet:
    name: str
    root: Path
    rows: list[ManifestRow]

    @classmethod
    def load(cls, name: str, root: str | Path) -> ImageSet:
        root = Path(root).expanduser()
        manifest = root / MANIFEST_NAME if root.is_dir() else root
        if not manifest.is_file():
            raise AuditError(f"{root}: no {MANIFEST_NAME}; build it with 'aligngemini data build-{name}'")
        rows = [r for r in read_manifest(manifest) if r.label in LABEL_INDEX]
        if not rows:
            raise AuditError(f"{manifest}: no rows labelled real or fake")
        return cls(name, manifest.parent, rows)

    def path(self, row: ManifestRow) -> Path:
        return row_path(row, self.root)


def labels_of(rows: Sequence[ManifestRow]) -> np.ndarray:
    return np.asarray([LABEL_INDEX[r.label] for r in rows], dtype=np.int64)


def split_rows(
    rows: Sequence[ManifestRow], cfg: AuditConfig
) -> tuple[list[ManifestRow], list[ManifestRow], str]:
    """(train rows, eval rows, how they were split). Uses the manifest's splits when both exist, else a
    deterministic split by group (a pair never straddles it)."""
    train = [r for r in rows if r.split == cfg.train_split]
    ev = [r for r in rows if r.split == cfg.eval_split]
    if (
        train
        and ev
        and {r.label for r in ev} == set(LABEL_INDEX)
        and {r.label for r in train} == set(LABEL_INDEX)
    ):
        shared = sorted({str(r.source) for r in train} & {str(r.source) for r in ev})
        sources = f"sources shared: {', '.join(shared)}" if shared else "sources disjoint"
        return train, ev, f"'{cfg.eval_split}' split, trained on '{cfg.train_split}' ({sources})"
    cut = int(cfg.fallback_eval_fraction * 1000)
    in_eval = [int(stable_id("audit-split", r.group or r.path, length=8), 16) % 1000 < cut for r in rows]
    train = [r for r, e in zip(rows, in_eval, strict=True) if not e]
    ev = [r for r, e in zip(rows, in_eval, strict=True) if e]
    return (
        train,
        ev,
        (
            f"random {cfg.fallback_eval_fraction:.0%} by group (the manifest has no usable "
            f"'{cfg.train_split}'/'{cfg.eval_split}' splits): optimistic, sources appear on both sides"
        ),
    )


def _cap_per_class(rows: Sequence[ManifestRow], cap: int, seed: int) -> list[ManifestRow]:
    rng = np.random.default_rng(seed)
    out: list[ManifestRow] = []
    for label in LABEL_INDEX:
        of = [r for r in rows if r.label == label]
        if len(of) > cap:
            keep = sorted(rng.choice(len(of), size=cap, replace=False).tolist())
            of = [of[i] for i in keep]
        out.extend(of)
    return out


class _LazyImages:
    """Images decoded on demand, so the pixel probe holds only its crops in memory."""

    def __init__(self, image_set: ImageSet, rows: Sequence[ManifestRow]):
        self.image_set = image_set
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Image.Image:
        return load_image(self.image_set.path(self.rows[i])).image


# --------------------------------------------------------------------------------------------------
# statistics


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 25, 50, 75, 100])
    return dict(zip(("min", "p25", "median", "p75", "max"), (round(float(v), 3) for v in q), strict=True))


def file_facts(path: Path) -> dict[str, Any]:
    """Format, size, JPEG quality and bytes per pixel from the header (pixels are not decoded)."""
    with Image.open(path) as img:
        fmt = img.format
        w, h = img.size
        quality = estimate_jpeg_quality(img) if fmt == "JPEG" else None
    return {
        "format": fmt,
        "width": w,
        "height": h,
        "jpeg_quality": quality,
        "bpp": path.stat().st_size * 8 / (w * h),
    }


def set_statistics(
    image_set: ImageSet, *, progress: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-class counts (by split, source, generator) and distributions of format, size, JPEG quality
    and bytes per pixel; also returns the per-row facts for the metadata probe."""
    facts = []
    for row in tqdm(
        image_set.rows, desc=f"stats ({image_set.name})", unit="img", file=sys.stderr, disable=not progress
    ):
        facts.append(file_facts(image_set.path(row)))
    per_class: dict[str, Any] = {}
    for label in LABEL_INDEX:
        idx = [i for i, r in enumerate(image_set.rows) if r.label == label]
        rows = [image_set.rows[i] for i in idx]
        fs = [facts[i] for i in idx]
        qualities = [f["jpeg_quality"] for f in fs if f["jpeg_quality"] is not None]
        per_class[label] = {
            "n": len(idx),
            "by_split": dict(sorted(Counter(str(r.split) for r in rows).items())),
            "by_source": dict(sorted(Counter(str(r.source) for r in rows).items())),
            "by_generator": dict(sorted(Counter(str(r.generator) for r in rows if r.generator).items())),
            "format": dict(sorted(Counter(str(f["format"]) for f in fs).items())),
            "width": _quantiles([f["width"] for f in fs]),
            "height": _quantiles([f["height"] for f in fs]),
            "short_side": _quantiles([min(f["width"], f["height"]) for f in fs]),
            "jpeg_quality": _quantiles(qualities),
            "jpeg_quality_counts": dict(sorted(Counter(qualities).items())),
            "bits_per_pixel": _quantiles([f["bpp"] for f in fs]),
        }
    by_split_source: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label, source), n in sorted(
        Counter((str(r.split), r.label, str(r.source)) for r in image_set.rows).items()
    ):
        by_split_source[split][f"{label}:{source}"] = n
    return {"per_class": per_class, "counts_by_split": dict(by_split_source)}, facts


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def pair_fidelity(
    image_set: ImageSet, view: int, *, max_pairs: int = 300, seed: int = 0, view_method: str = "aa"
) -> dict[str, Any] | None:
    """PSNR between each real and its reconstruction, at full size and at the embedding probes' content
    view: how visible the generator's change is at the scale a CLIP probe looks at. None when the set has
    no (real, fake) groups of equal size."""
    by_group: dict[str, dict[str, list[ManifestRow]]] = defaultdict(lambda: {"real": [], "fake": []})
    for r in image_set.rows:
        if r.group:
            by_group[str(r.group)][r.label].append(r)
    pairs = [(g["real"][0], f) for g in by_group.values() if len(g["real"]) == 1 for f in g["fake"]]
    pairs = [(r, f) for r, f in pairs if (r.width, r.height) == (f.width, f.height)]
    if not pairs:
        return None
    if len(pairs) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(pick.tolist())]
    full, small = [], []
    for real_row, fake_row in pairs:
        real = load_image(image_set.path(real_row)).image
        fake = load_image(image_set.path(fake_row)).image
        if real.size != fake.size:
            continue
        full.append(_psnr(np.asarray(real), np.asarray(fake)))
        if view:
            small.append(
                _psnr(
                    np.asarray(content_view(real, view, view_method)),
                    np.asarray(content_view(fake, view, view_method)),
                )
            )
    return {
        "pairs": len(full),
        "psnr_db": _quantiles(full),
        "view": view,
        "psnr_db_at_view": _quantiles(small),
    }


def metadata_probe(image_set: ImageSet, facts: list[dict[str, Any]], cfg: AuditConfig) -> ProbeResult:
    """A shallow tree ensemble on format, width, height, aspect and JPEG quality: if it beats chance,
    the file's container says the label."""
    from sklearn.ensemble import RandomForestClassifier

    formats = sorted({str(f["format"]) for f in facts})

    def features(i: int) -> list[float]:
        f = facts[i]
        onehot = [1.0 if str(f["format"]) == fm else 0.0 for fm in formats]
        return [f["width"], f["height"], f["width"] / f["height"], f["jpeg_quality"] or 0, *onehot]

    index = {id(r): i for i, r in enumerate(image_set.rows)}
    train, ev, how = split_rows(image_set.rows, cfg)
    xtr = np.asarray([features(index[id(r)]) for r in train])
    xev = np.asarray([features(index[id(r)]) for r in ev])
    ytr, yev = labels_of(train), labels_of(ev)
    started = time.perf_counter()
    clf = RandomForestClassifier(
        n_estimators=100, max_depth=4, class_weight="balanced", random_state=cfg.seed
    )
    clf.fit(xtr, ytr)
    return summarize(
        "metadata-forest",
        how,
        ytr,
        yev,
        clf.predict_proba(xev)[:, 1],
        train_scores=clf.predict_proba(xtr)[:, 1],
        seconds=time.perf_counter() - started,
        notes={"features": ["width", "height", "aspect", "jpeg_quality", *[f"format={f}" for f in formats]]},
    )


# --------------------------------------------------------------------------------------------------
# probes on sets


def by_source(result: ProbeResult, eval_rows: Sequence[ManifestRow]) -> dict[str, Any]:
    """Per eval source: how many images, how often the probe was right, its mean P(fake). Says which
    sources carry the signal when a probe sits off chance."""
    if result.eval_scores is None or result.eval_index is None:
        return {}
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, p in zip(result.eval_index, result.eval_scores, strict=True):
        row = eval_rows[int(i)]
        groups[f"{row.label}:{row.source}"].append((LABEL_INDEX[row.label], float(p)))
    out = {}
    for key, items in sorted(groups.items()):
        y = np.asarray([a for a, _ in items])
        p = np.asarray([b for _, b in items])
        out[key] = {
            "n": len(items),
            "accuracy": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
            "mean_p_fake": round(float(p.mean()), 4),
        }
    return out


def pixel_probe_on(image_set: ImageSet, cfg: AuditConfig, *, progress: bool = True) -> ProbeResult:
    train, ev, how = split_rows(image_set.rows, cfg)
    train = _cap_per_class(train, cfg.max_images_per_class, cfg.seed)
    ev = _cap_per_class(ev, cfg.max_images_per_class, cfg.seed + 1)
    result = run_pixel_probe(
        _LazyImages(image_set, train),
        labels_of(train),
        _LazyImages(image_set, ev),
        labels_of(ev),
        cfg.pixel_probe,
        measured_on=how,
        progress=progress,
    )
    result.notes["by_source"] = by_source(result, ev)
    return result


def set_embeddings(
    image_set: ImageSet,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    *,
    view: int = 0,
    view_method: str = "aa",
    progress: bool = True,
) -> tuple[np.ndarray, list[ManifestRow]]:
    emb, kept = embed_rows(
        image_set.rows,
        image_set.root,
        embedder,
        cache=cache,
        view=view,
        view_method=view_method,
        progress=progress,
        desc=f"embed ({image_set.name})",
    )
    return emb, [image_set.rows[i] for i in kept]


def embedding_probe_on(emb: np.ndarray, rows: Sequence[ManifestRow], cfg: AuditConfig) -> ProbeResult:
    index = {id(r): i for i, r in enumerate(rows)}
    train, ev, how = split_rows(rows, cfg)
    result = run_embedding_probe(
        emb[[index[id(r)] for r in train]],
        labels_of(train),
        emb[[index[id(r)] for r in ev]],
        labels_of(ev),
        measured_on=how,
    )
    result.notes["by_source"] = by_source(result, ev)
    return result


def content_separability(emb: np.ndarray, rows: Sequence[ManifestRow], cfg: AuditConfig) -> dict[str, Any]:
    """How well content alone (a linear probe on embeddings) separates the classes, measured so that
    the test images' sources (or generators) were never seen in training."""
    y = labels_of(rows)
    by_source = [f"{r.label}:{r.source}" for r in rows]
    by_generator = [
        f"fake:{r.generator or r.source}" if r.label == "fake" else f"real:{r.source}" for r in rows
    ]
    split_probe = embedding_probe_on(emb, rows, cfg)
    return {
        "split": {
            "measured_on": split_probe.measured_on,
            "auc": split_probe.auc,
            "balanced_accuracy": round(split_probe.balanced_accuracy, 4),
            "ci95": list(split_probe.ci95),
        },
        "leave_one_source_out": out_of_group_scores(emb, y, by_source),
        "leave_one_generator_out": out_of_group_scores(emb, y, by_generator),
        "cross_validated_auc_optimistic": cross_validated_auc(emb, y, seed=cfg.seed),
    }


# --------------------------------------------------------------------------------------------------
# verdicts and report


def verdict(result: ProbeResult | None, expect: str, cfg: AuditConfig) -> str:
    if result is None:
        return "not run"
    ba = result.balanced_accuracy
    if expect == "chance":
        return "pass" if abs(ba - 0.5) <= cfg.chance_margin else "FAIL"
    lo = result.ci95[0]
    return "pass" if ba >= cfg.clearly_above and (lo != lo or lo > 0.5) else "FAIL"  # lo != lo: NaN


def run_audit(
    pixel_set: str | Path | None,
    semantic_set: str | Path | None,
    report_dir: str | Path,
    *,
    config: AuditConfig | None = None,
    embedder: Embedder | None = None,
    embedder_name: str = "clip",
    content_manifest: str | Path | None = None,
    embedding_cache: EmbeddingCache | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every check that the given sets allow, write ``report.json`` and ``report.md`` into
    ``report_dir``, and return the report. ``embedder`` defaults to CLIP ViT-B/16 (starter tower);
    embeddings are cached by content hash in ``embedding_cache`` (default: the shared cache for that embedder)."""
    cfg = config or AuditConfig()
    started = time.perf_counter()
    report_dir = Path(report_dir).expanduser()
    report_dir.mkdir(parents=True, exist_ok=True)
    if pixel_set is None and semantic_set is None:
        raise AuditError("give --pixel-set, --semantic-set or both")
    sets = {
        name: ImageSet.load(name, path)
        for name, path in (("pixel", pixel_set), ("semantic", semantic_set))
        if path is not None
    }
    _embedder: Embedder | None = None
    _cache: EmbeddingCache | None = embedding_cache

    def get_embedder() -> tuple[Embedder, EmbeddingCache]:
        nonlocal _embedder, _cache
        if _embedder is None:
            if embedder is None:
                from aligngemini.data.build.balance import clip_embedder

                _embedder = clip_embedder()
            else:
                _embedder = embedder
        if _cache is None:
            _cache = EmbeddingCache.default(embedder_id(_embedder, embedder_name, cfg.content_view))
        return _embedder, _cache

    report: dict[str, Any] = {"config": _jsonable(asdict(cfg)), "sets": {}, "checks": []}
    for name, s in sets.items():
        stats, facts = set_statistics(s, progress=progress)
        meta = metadata_probe(s, facts, cfg)
        report["sets"][name] = {"path": str(s.root), **stats, "metadata_probe": meta.to_dict()}
        fidelity = pair_fidelity(s, cfg.content_view, seed=cfg.seed)
        if fidelity is not None:
            report["sets"][name]["pair_fidelity"] = fidelity
        report["checks"].append(_check(f"metadata probe on the {name} set", name, meta, "chance", cfg))
    for name, s in sets.items():
        result = pixel_probe_on(s, cfg, progress=progress)
        expect = "above" if name == "pixel" else "chance"
        report["checks"].append(_check(f"pixel probe on the {name} set", name, result, expect, cfg))
    for name, s in sets.items():
        emb, rows = set_embeddings(s, *get_embedder(), view=cfg.content_view, progress=progress)
        result = embedding_probe_on(emb, rows, cfg)
        expect = "above" if name == "semantic" else "chance"
        probe_name = f"{embedder_name} probe" + (f" ({cfg.content_view} px view)" if cfg.content_view else "")
        report["checks"].append(_check(f"{probe_name} on the {name} set", name, result, expect, cfg))
        if name == "semantic":
            report["content_separability"] = {"semantic set": content_separability(emb, rows, cfg)}
    if content_manifest is not None:
        source = ImageSet.load("source", content_manifest)
        emb, rows = set_embeddings(source, *get_embedder(), view=cfg.content_view, progress=progress)
        report.setdefault("content_separability", {})[f"input manifest {source.root}"] = content_separability(
            emb, rows, cfg
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    cross = [
        c for c in report["checks"] if c["expect"] == "near chance" and not c["name"].startswith("metadata")
    ]
    sanity = [c for c in report["checks"] if c["expect"] == "clearly above chance"]
    report["orthogonal"] = bool(cross) and all(c["verdict"] == "pass" for c in cross + sanity)
    meta = [c for c in report["checks"] if c["name"].startswith("metadata")]
    report["metadata_clean"] = all(c["verdict"] == "pass" for c in meta)
    (report_dir / "report.json").write_text(
        json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    (report_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _check(name: str, set_name: str, result: ProbeResult, expect: str, cfg: AuditConfig) -> dict[str, Any]:
    return {
        "name": name,
        "set": set_name,
        "expect": "near chance" if expect == "chance" else "clearly above chance",
        "verdict": verdict(result, expect, cfg),
        **result.to_dict(),
    }


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Purity audit", ""]
    lines += [
        "| check | measured on | n eval (real/fake) | balanced acc | 95% CI | AUC | expected | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["checks"]:
        n = f"{c['n_eval']['real']}/{c['n_eval']['fake']}"
        ci = f"{_fmt(c['ci95'][0])}-{_fmt(c['ci95'][1])}"
        lines.append(
            f"| {c['name']} | {c['measured_on']} | {n} | {_fmt(c['balanced_accuracy'])} | {ci} | "
            f"{_fmt(c['auc'])} | {c['expect']} | {c['verdict']} |"
        )
    lines += [
        "",
        f"Orthogonal (every cross check near chance, every sanity check above): **{report['orthogonal']}**; "
        f"file metadata carries no label: **{report['metadata_clean']}**",
        "",
    ]
    for where, cs in report.get("content_separability", {}).items():
        lines += [f"## Content separability ({where})", ""]
        lines.append(
            f"- train->val by source split: AUC {_fmt(cs['split']['auc'])}, balanced acc "
            f"{_fmt(cs['split']['balanced_accuracy'])} ({cs['split']['measured_on']})"
        )
        for key, label in (
            ("leave_one_source_out", "leave one source out"),
            ("leave_one_generator_out", "leave one generator out"),
        ):
            g = cs[key]
            lines.append(
                f"- {label}: pooled AUC {_fmt(g['auc'])}, balanced acc {_fmt(g['balanced_accuracy'])} "
                f"({g['n_scored']}/{g['n_total']} images scored)"
            )
        lines.append(
            f"- cross-validated AUC (optimistic, sources on both sides): "
            f"{_fmt(cs['cross_validated_auc_optimistic'])}"
        )
        lines.append("")
    for set_name, st in report["sets"].items():
        fid = st.get("pair_fidelity")
        if fid:
            at_view = fid["psnr_db_at_view"] or {}
            lines += [
                f"Pairs of the {set_name} set ({fid['pairs']}): PSNR real vs reconstruction, median "
                f"{_fmt(fid['psnr_db']['median'])} dB at full size, {_fmt(at_view.get('median'))} dB at the "
                f"{fid['view']} px view the CLIP probe sees (higher: the change is less visible at that scale).",
                "",
            ]
    lines += ["## Probe accuracy by eval source", ""]
    for c in report["checks"]:
        per = c.get("notes", {}).get("by_source") or {}
        if per:
            cells = ", ".join(f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in per.items())
            lines.append(f"- {c['name']}: {cells}")
    lines += [
        "",
        "## Per-class statistics",
        "",
        "| set | class | n | formats | short side (min/median/max) | JPEG quality (min/median/max) | bits/pixel (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for set_name, s in report["sets"].items():
        for label, st in s["per_class"].items():
            fm = ", ".join(f"{k} {v}" for k, v in st["format"].items())
            ss = st["short_side"] or {}
            jq = st["jpeg_quality"] or {}
            bpp = (st["bits_per_pixel"] or {}).get("median")
            lines.append(
                f"| {set_name} | {label} | {st['n']} | {fm} | {_fmt(ss.get('min'))}/{_fmt(ss.get('median'))}/"
                f"{_fmt(ss.get('max'))} | {_fmt(jq.get('min'))}/{_fmt(jq.get('median'))}/{_fmt(jq.get('max'))} | "
                f"{_fmt(bpp)} |"
            )
    lines += ["", "## Counts by split, class and source", ""]
    for set_name, s in report["sets"].items():
        for split, counts in s["counts_by_split"].items():
            lines.append(f"- {set_name} / {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append("")
    return "\n".join(lines)
