"""Golden outputs of the shipped starter bundle: a change that moves its scores on ``examples/`` fails
here unless ``tests/golden/starter_examples.json`` is regenerated on purpose
(``python scripts/update_golden.py``), as timm and open_clip guard their released weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "starter_examples.json"
# fp32 on CPU; kernels differ a little between CPU generations, so not bit-exact
TOLERANCE = 2e-4


def test_starter_scores_on_the_examples_match_the_golden_file(starter_env: Path) -> None:
    from aligngemini.detector import Detector

    golden = json.loads(GOLDEN.read_text())
    det = Detector.load("starter", device="cpu", dtype="fp32")
    assert det.bundle_id == golden["bundle_id"], (
        "the starter bundle changed: if on purpose, run `python scripts/update_golden.py` and commit the file"
    )
    paths = sorted(golden["scores"])
    verdicts = det.predict([str(ROOT / p) for p in paths])
    for rel, v in zip(paths, verdicts, strict=True):
        want = golden["scores"][rel]
        assert v.error is None, (rel, v.error)
        for role in ("pixel", "semantic"):
            assert v.branches[role].p_fake == pytest.approx(want[role], abs=TOLERANCE), (rel, role)
        assert v.p_fake == pytest.approx(want["fused"], abs=TOLERANCE), rel
        assert v.verdict == want["verdict"], rel
