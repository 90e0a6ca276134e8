"""Regenerate tests/golden/starter_examples.json: the shipped starter bundle's scores on examples/.

Run after changing the starter bundle (or anything that moves its scores) on purpose, and commit the file:
    .venv/bin/python scripts/update_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

from aligngemini.decode import iter_image_paths
from aligngemini.detector import Detector

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "starter_examples.json"


def main() -> None:
    det = Detector.load("starter", device="cpu", dtype="fp32")
    paths = [p.relative_to(ROOT).as_posix() for p in iter_image_paths([ROOT / "examples"])]
    scores = {}
    for rel, v in zip(paths, det.predict([str(ROOT / p) for p in paths]), strict=True):
        if v.error is not None:
            raise SystemExit(f"{rel}: {v.error}")
        scores[rel] = {"pixel": v.branches["pixel"].p_fake, "semantic": v.branches["semantic"].p_fake,
                       "fused": v.p_fake, "verdict": v.verdict}  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"bundle_id": det.bundle_id, "scores": scores}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(scores)} images, bundle {det.bundle_id})")


if __name__ == "__main__":
    main()
