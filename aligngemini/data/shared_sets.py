"""Image sets that live in a local folder beside the project rather than in a package registry: each has
its own ``manifest.csv``, its own caveats (its README) and its own rules here, turned into corpus rows.

- ``realorai``: 360 Gemini 3 Pro Image images and 360 Unsplash photos of the same everyday topics, one
  shared resize/JPEG pipeline; split by topic.
- ``wildmix``: AI images of about 30 generators gathered from public repositories, and real photos (camera
  originals among them); each upstream repository is its own source, so that splits and leave-one-out
  evaluations never put one repository on both sides. AI edits of real photos belong to neither class and
  are left out.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from aligngemini.data.curation import CurationRules, Dropped, ImageStats, judge_stats
from aligngemini.data.manifest import ManifestRow

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class StatsSource(Protocol):
    def get(self, sha: str, data: bytes) -> ImageStats: ...


def default_shared_path(name: str) -> Path:
    """``../shared/datasets/NAME`` relative to the repository holding this package (a development checkout)."""
    return Path(__file__).resolve().parents[3] / "shared" / "datasets" / name


# ---- realorai ----------------------------------------------------------------------------------------------

# realorai's files are numbered in the order the upstream scripts fetched (Unsplash) and generated (Gemini)
# them: topic by topic, about 20 images per topic, in both classes. A block of 20 indices is therefore a
# topic (boundaries drift by a few images; blocks 7-13 hold the same topics in a slightly different order
# per class). Checked by eye on contact sheets of both folders.
REALORAI_BLOCK = 20
REALORAI_TOPICS = {0: "nature", 1: "architecture", 2: "people", 3: "animals", 4: "food", 5: "travel",
                   6: "street-photography", 14: "the-holidays-illustrations", 15: "hand-drawn",
                   16: "fashion-beauty", 17: "textures-patterns"}  # fmt: skip
# The README's caveat: ~5-10% of real/ are illustrations, 3D renders or patterns. They sit in the topics
# whose names say so; colour and noise statistics do not find them (24 statistics + logistic regression:
# cross-validated AUC 0.67). Rule: drop these topic blocks, from both classes so topics stay matched.
REALORAI_NONPHOTO_BLOCKS = frozenset({14, 15, 17})
# Validation topics, held out of training in both classes (whole topics, aligned in both folders).
REALORAI_VAL_BLOCKS = frozenset({3, 6, 16})
# Statistic rules for realorai: its photos were resized 2x and saved at JPEG q85, which leaves exactly flat
# studio backgrounds and no sensor noise, so the flatness/noise rules would drop real photographs (measured:
# 18 photos vs 0 AI images). Only the grey and palette rules apply.
PHOTO_RULES = CurationRules(
    max_flat_fraction=None, render_noise=None, render_flat_blocks=None, smooth_noise=None
)  # for sets whose files were looked at and are photographs: only the grey and palette rules apply


def realorai_rows(root: Path, stats: StatsSource, progress: Any) -> tuple[list[ManifestRow], list[Dropped]]:
    root = root.resolve()
    known: dict[str, str] = {}
    manifest_csv = root / "manifest.csv"
    if manifest_csv.is_file():
        with open(manifest_csv, newline="") as f:
            known = {r["file"]: r["sha256"] for r in csv.DictReader(f)}
    rows, dropped = [], []
    for folder, label in (("real", "real"), ("ai", "fake")):
        for path in sorted((root / folder).glob("*")):
            if path.suffix.lower() not in IMAGE_EXTS:
                continue
            progress.update(1)
            rel = f"{folder}/{path.name}"
            m = re.search(r"(\d+)$", path.stem)
            block = int(m.group(1)) // REALORAI_BLOCK if m else -1
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if rel in known and known[rel] != sha:
                dropped.append(Dropped("realorai", str(path), "sha256 differs from manifest.csv", label))
                continue
            if block in REALORAI_NONPHOTO_BLOCKS:
                topic = REALORAI_TOPICS.get(block)
                dropped.append(Dropped("realorai", str(path), f"non-photo topic block ({topic})", label))
                continue
            st = stats.get(sha, data)
            reason = judge_stats(st, PHOTO_RULES)
            if reason:
                dropped.append(Dropped("realorai", str(path), reason, label))
                continue
            rows.append(
                ManifestRow(
                    path=str(path),
                    label=label,
                    generator="gemini-3-pro-image-preview" if label == "fake" else None,
                    source="realorai",
                    license=(
                        "Unsplash License (photo), via TeenBiscuits/RealOrAI (Apache-2.0)"
                        if label == "real"
                        else "Apache-2.0 (TeenBiscuits/RealOrAI)"
                    ),  # fmt: skip
                    sha256=sha,
                    width=st.width,
                    height=st.height,
                    format=st.format,
                    split="val" if block in REALORAI_VAL_BLOCKS else "train",
                    group=f"realorai:block{block:02d}",
                    extra={"origin": rel, "topic": REALORAI_TOPICS.get(block), "stats": st.to_dict()},
                )
            )
    return rows, dropped


# ---- wildmix -----------------------------------------------------------------------------------------------

WILDMIX_LABELS = {"ai": "fake", "real": "real"}


def wildmix_excluded(rel: str, label: str) -> str | None:
    """Why a wildmix file is left out: the README's AI edits of real photos (``ai/*_edit_*`` and one notebook
    output) are neither real nor generated. The real photos they were made from stay."""
    name = PurePosixPath(rel).name
    if (label == "fake" and "_edit_" in name) or rel == "gemini-cookbook/ai/image_out_c052_17.jpg":
        return "an AI edit of a real photo (neither class; the dataset's README)"
    return None


def wildmix_rows(root: Path, stats: StatsSource, progress: Any) -> tuple[list[ManifestRow], list[Dropped]]:
    """One row per file of ``root/manifest.csv``; the source is ``wildmix:<repository short name>``. Files are
    checked against ``SHA256SUMS`` when present and read in place (the set is not copied)."""
    root = root.resolve()
    sums: dict[str, str] = {}
    if (root / "SHA256SUMS").is_file():
        for line in (root / "SHA256SUMS").read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name:
                sums[name.lstrip("*")] = digest
    rows, dropped = [], []
    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    for rec in records:
        progress.update(1)
        rel = rec["path"]
        short = rel.split("/", 1)[0]
        source = f"wildmix:{short}"
        label = WILDMIX_LABELS.get(rec["label"])
        path = root / rel
        reason = wildmix_excluded(rel, label or "")
        if label is None:
            reason = reason or f"unknown label {rec['label']!r}"
        if reason is None and not path.is_file():
            reason = "listed in manifest.csv but missing"
        data = b"" if reason else path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if reason is None and rel in sums and sums[rel] != sha:
            reason = "sha256 differs from SHA256SUMS"
        if reason is not None:
            dropped.append(Dropped(source, rel, reason, label))
            continue
        st = stats.get(sha, data)
        rows.append(
            ManifestRow(
                path=str(path),
                label=label,
                generator=None if label == "real" else rec["generator"],
                source=source,
                license=rec["license"],
                sha256=sha,
                width=st.width,
                height=st.height,
                format=st.format,
                group=f"{source}:{PurePosixPath(rel).parent.name}",
                extra={"origin": rel, "upstream": rec["source_repo"], "stats": st.to_dict()},
            )
        )
    return rows, dropped
