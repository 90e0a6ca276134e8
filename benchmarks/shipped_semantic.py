"""Shared by the benchmarks that vary the semantic tower: the starter corpus's images and the bundle's CLIP
semantic branch as shipped, and how far a variant's scores move from the shipped ones."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from aligngemini.data.manifest import ManifestRow, read_manifest
from aligngemini.detector import Detector
from aligngemini.paths import data_dir


def corpus_and_clip_branch(
    parser: argparse.ArgumentParser, bundle: str, images: int
) -> tuple[Detector, Any, list[ManifestRow]]:
    """The detector, its CLIP semantic branch and ``images`` corpus rows spread over the manifest (0: all);
    ``parser.error`` when the corpus is not fetched or the bundle has no CLIP branch."""
    manifest = data_dir("starter") / "manifest.jsonl"
    if not manifest.is_file():
        parser.error(f"{manifest} not found: run `aligngemini data fetch-starter` first")
    rows = read_manifest(manifest)  # paths made absolute
    if images:
        rows = rows[:: max(1, len(rows) // images)][:images]
    det = Detector.load(bundle, device="cpu")
    branch = det.branches.get("semantic")
    if branch is None or not hasattr(branch, "tower"):
        parser.error(f"bundle {bundle} has no CLIP semantic branch")
    return det, branch, rows


def score_change(scores: np.ndarray, base: np.ndarray, threshold: float) -> dict[str, float | int]:
    """P(fake) change against ``base`` (mean, 99th percentile, largest) and the verdicts that flip."""
    delta = np.abs(scores - base)
    return {"dp_mean": float(delta.mean()), "dp_p99": float(np.quantile(delta, 0.99)), "dp_max": float(delta.max()),
            "verdicts_changed": int(np.sum((scores >= threshold) != (base >= threshold)))}  # fmt: skip
