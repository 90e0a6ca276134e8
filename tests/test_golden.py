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
# A branch computing in bf16 rounds every layer's output to 8 bits of mantissa, so a different kernel path
# moves its score more: at most 0.008 in P(fake) (fused 0.006) over oneDNN's AVX2, AVX-512 and AVX-512-BF16
# paths and ATen's AVX2 kernels on the dev box (ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY).
TOLERANCE_BF16 = 0.02


def test_starter_scores_on_the_examples_match_the_golden_file(starter_env: Path) -> None:
    from aligngemini.detector import Detector

    golden = json.loads(GOLDEN.read_text())
    det = Detector.load("starter", device="cpu", dtype="fp32")
    assert det.bundle_id == golden["bundle_id"], (
        "the starter bundle changed: if on purpose, run `python scripts/update_golden.py` and commit the file"
    )
    paths = sorted(golden["scores"])
    verdicts = det.predict([str(ROOT / p) for p in paths])
    tol = {role: TOLERANCE_BF16 if cfg.get("precision") == "bf16" else TOLERANCE
           for role, cfg in det.config["branches"].items()}  # fmt: skip
    fused_tol = max(tol.values())
    for rel, v in zip(paths, verdicts, strict=True):
        want = golden["scores"][rel]
        assert v.error is None, (rel, v.error)
        for role in ("pixel", "semantic"):
            assert v.branches[role].p_fake == pytest.approx(want[role], abs=tol[role]), (rel, role)
        assert v.p_fake == pytest.approx(want["fused"], abs=fused_tol), rel
        assert v.verdict == want["verdict"], rel
