"""Content balance: keep real and AI images that show the same kinds of things.

A semantic set whose photos are landscapes and whose AI images are portraits teaches subject matter.
Two ways to even it out, always within a split (so a split by source stays one):

- ``knn``: a one-to-one matching of AI images to real images that maximises the total cosine similarity
  of their image embeddings (CLIP ViT-B/16 by default); unmatched images and pairs below
  ``min_similarity`` are dropped. Each kept image records its partner.
- ``groups``: keep only subject groups (a manifest field such as ``extra.topic``) present in both
  classes, subsampled to the same count per class in each group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from aligngemini.data.build.common import row_key, row_path
from aligngemini.data.manifest import ManifestRow
from aligngemini.decode import ImageLoadError, load_image

Embedder = Callable[[list[Image.Image]], np.ndarray]
METHODS = ("knn", "groups", "none")


def clip_embedder(batch_size: int = 16, tower: str | None = None) -> Embedder:
    """Image -> CLIP ViT-B/16 embedding, through the semantic branch's loader (imported on first use)."""
    from aligngemini.branches.semantic import clip

    source = tower or getattr(clip, "STARTER_TOWER", None)

    def embed(images: list[Image.Image]) -> np.ndarray:
        return np.asarray(clip.embed_images(images, source, batch_size=batch_size), dtype=np.float32)

    embed.tower = source  # type: ignore[attr-defined]
    embed.name = "clip"  # type: ignore[attr-defined]
    return embed


def embedder_id(embedder: Embedder, name: str | None = None, view: int = 0, method: str = "aa") -> str:
    """A file-name-safe id for an embedder's cache: its given name, a hash of its tower source, and the
    content view with its filter (embeddings of different views must not share a cache). The box view
    keeps the bare ``viewN`` id it had when it was the only one."""
    tower = getattr(embedder, "tower", None)
    base = str(name or getattr(embedder, "name", None) or "embedder")
    if tower:
        base += f"-{hashlib.sha256(str(tower).encode()).hexdigest()[:8]}"
    _check_view_method(method)
    return f"{base}-view{view}{'' if method == 'box' else method}" if view else base


VIEW_METHODS = ("aa", "lanczos", "box")


def _check_view_method(method: str) -> None:
    if method not in VIEW_METHODS:
        raise ValueError(f"view method {method!r}: expected one of {', '.join(VIEW_METHODS)}")


def content_view(image: Image.Image, short: int, method: str = "aa") -> Image.Image:
    """The image reduced so its short side is ``short`` pixels: scene, layout and colour survive,
    pixel-level texture (decoder smoothing, noise, JPEG blocks) does not. A CLIP probe on this view
    measures content; on the full image it also sees image quality, which is a pixel cue.

    Why a Gaussian low-pass before the Lanczos resize: a box filter lets fine texture alias into the small
    image, and CLIP reads it. Measured on the starter pixel set, whose fakes take the real's coarse DCT band
    (``python benchmarks/audit_views.py``, benchmarks/results/audit_views.md): a CLIP probe told real from
    fake at balanced accuracy 0.67 on box views, 0.60 on Lanczos views, 0.51 on these; on the semantic set
    it scored 0.65-0.66 with each, and on pairs without that alignment 0.92 with each. ``method`` "lanczos"
    and "box" are the weaker filters, kept for that comparison."""
    if short <= 0 or min(image.size) <= short:
        return image
    factor = short / min(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    _check_view_method(method)
    if method == "box":
        return image.resize(size, Image.Resampling.BOX)
    if method == "lanczos":
        return image.resize(size, Image.Resampling.LANCZOS)
    # sigma of half the reduction factor: the response at the view's Nyquist is about 0.3
    blurred = image.filter(ImageFilter.GaussianBlur(0.5 / factor))
    return blurred.resize(size, Image.Resampling.LANCZOS)


class EmbeddingCache:
    """Embeddings by image content hash, kept in one ``.npz`` so builds, audits and re-runs share them.

    ``EmbeddingCache.default(id)`` lives under the aligngemini cache directory; ``None`` keeps it in memory."""

    @classmethod
    def default(cls, embedder_key: str) -> EmbeddingCache:
        from aligngemini.paths import cache_dir

        return cls(cache_dir("embeddings") / f"{embedder_key}.npz")

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            with np.load(path) as npz:
                keys = [str(k) for k in npz["keys"]]
                self.data = dict(zip(keys, npz["vectors"], strict=True))

    def save(self) -> None:
        if self.path is None or not self.data:
            return
        keys = sorted(self.data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".part.npz")
        np.savez(tmp, keys=np.array(keys), vectors=np.stack([self.data[k] for k in keys]))
        tmp.replace(self.path)


def embed_rows(
    rows: Sequence[ManifestRow],
    base: Path,
    embedder: Embedder,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 16,
    max_side: int = 1024,
    view: int = 0,
    view_method: str = "aa",
    progress: bool = True,
    desc: str = "embedding",
) -> tuple[np.ndarray, list[int]]:
    """L2-normalised embeddings of the rows that load, and the indices of those rows.

    Images are shrunk to ``max_side`` before embedding (the tower resizes to 224 anyway) to bound memory;
    ``view`` > 0 embeds :func:`content_view` (filter ``view_method``) of each image instead. The cache must
    be the view's own."""
    cache = cache or EmbeddingCache(None)
    keys = [content_key(r, base) for r in rows]
    todo = [i for i, k in enumerate(keys) if k not in cache.data]
    failed: set[int] = set()
    bar = tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images, ok = [], []
        for i in chunk:
            try:
                img = load_image(row_path(rows[i], base)).image
            except ImageLoadError:
                failed.add(i)
                continue
            if view > 0:
                img = content_view(img, view, view_method)
            elif max(img.size) > max_side:
                img = img.copy()
                img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            images.append(img)
            ok.append(i)
        if images:
            vecs = np.asarray(embedder(images), dtype=np.float32)
            if vecs.shape[0] != len(images):
                raise ValueError(f"embedder returned {vecs.shape[0]} vectors for {len(images)} images")
            for i, v in zip(ok, vecs, strict=True):
                cache.data[keys[i]] = v
        bar.update(len(chunk))
    bar.close()
    cache.save()
    kept = [i for i in range(len(rows)) if i not in failed and keys[i] in cache.data]
    if not kept:
        return np.zeros((0, 0), dtype=np.float32), []
    mat = np.stack([cache.data[keys[i]] for i in kept]).astype(np.float32)
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    return mat, kept


def content_key(row: ManifestRow, base: Path) -> str:
    """The row's sha256, or the file's when the manifest lacks it (never the path: caches are shared)."""
    if row.sha256:
        return str(row.sha256)
    path = row_path(row, base)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def knn_match(
    real_emb: np.ndarray, fake_emb: np.ndarray, min_similarity: float | None = None
) -> list[tuple[int, int, float]]:
    """One-to-one (real index, fake index, cosine) pairs maximising total similarity (Hungarian method);
    ``min(n_real, n_fake)`` pairs before the ``min_similarity`` cut. Inputs are L2-normalised rows."""
    from scipy.optimize import linear_sum_assignment

    if len(real_emb) == 0 or len(fake_emb) == 0:
        return []
    sim = real_emb @ fake_emb.T
    ri, fi = linear_sum_assignment(sim, maximize=True)
    pairs = [(int(r), int(f), float(sim[r, f])) for r, f in zip(ri, fi, strict=True)]
    if min_similarity is not None:
        pairs = [p for p in pairs if p[2] >= min_similarity]
    return sorted(pairs)


def field_value(row: ManifestRow, key: str) -> Any:
    """A manifest field by name; ``extra.NAME`` reads from the row's ``extra`` mapping."""
    if key.startswith("extra."):
        return (row.extra or {}).get(key[len("extra.") :])
    return getattr(row, key, None)


def _counts(rows: Sequence[ManifestRow]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), n in sorted(Counter((str(r.split), r.label) for r in rows).items()):
        out[split][label] = n
    return dict(out)


def balance_rows(
    rows: Sequence[ManifestRow],
    method: str,
    *,
    embeddings: np.ndarray | None = None,
    group_key: str = "extra.topic",
    min_similarity: float | None = None,
    seed: int = 0,
) -> tuple[list[ManifestRow], dict[str, Any]]:
    """Content-balanced subset of ``rows`` and a report of what was kept.

    ``embeddings`` (one L2-normalised row per manifest row) are needed for ``knn``."""
    if method not in METHODS:
        raise ValueError(f"unknown balance method {method!r}; choose one of {METHODS}")
    report: dict[str, Any] = {"method": method, "before": _counts(rows)}
    if method == "none":
        kept = list(rows)
    elif method == "knn":
        if embeddings is None or len(embeddings) != len(rows):
            raise ValueError("knn balance needs one embedding per row")
        kept, sims = [], []
        for split in sorted({str(r.split) for r in rows}):
            idx_real = [i for i, r in enumerate(rows) if str(r.split) == split and r.label == "real"]
            idx_fake = [i for i, r in enumerate(rows) if str(r.split) == split and r.label == "fake"]
            for ri, fi, sim in knn_match(embeddings[idx_real], embeddings[idx_fake], min_similarity):
                real, fake = rows[idx_real[ri]], rows[idx_fake[fi]]
                pair = {"content_partner_similarity": round(sim, 4)}
                kept.append(_with_extra(real, {**pair, "content_partner": row_key(fake)}))
                kept.append(_with_extra(fake, {**pair, "content_partner": row_key(real)}))
                sims.append(sim)
        report["pairs"] = len(sims)
        if sims:
            report["similarity"] = {
                "mean": round(float(np.mean(sims)), 4),
                "min": round(float(np.min(sims)), 4),
                "median": round(float(np.median(sims)), 4),
            }
    else:
        rng = np.random.default_rng(seed)
        kept = []
        buckets: dict[tuple[str, Any], dict[str, list[int]]] = defaultdict(lambda: {"real": [], "fake": []})
        for i, r in enumerate(rows):
            value = field_value(r, group_key)
            if value is not None and r.label in ("real", "fake"):
                buckets[(str(r.split), value)][r.label].append(i)
        groups_kept = []
        for (split, value), by_label in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            n = min(len(by_label["real"]), len(by_label["fake"]))
            if n == 0:
                continue
            groups_kept.append(f"{split}:{value}")
            for label in ("real", "fake"):
                chosen = sorted(rng.choice(by_label[label], size=n, replace=False).tolist())
                kept.extend(rows[i] for i in chosen)
        report["group_key"] = group_key
        report["groups_kept"] = groups_kept
    report["after"] = _counts(kept)
    report["dropped_by_source"] = dict(
        sorted(
            (
                Counter(f"{r.label}:{r.source}" for r in rows)
                - Counter(f"{r.label}:{r.source}" for r in kept)
            ).items()
        )
    )
    return kept, report


def _with_extra(row: ManifestRow, extra: dict[str, Any]) -> ManifestRow:
    return dataclasses.replace(row, extra={**(row.extra or {}), **extra})
