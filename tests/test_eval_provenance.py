"""Evaluation never profits from metadata unknowingly: it counts what the files declare per set, scores from
pixels, and lets a signed AI claim decide a verdict only under ``--provenance override``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from provenance_files import A1111, c2pa_signed, make_credentials, png

from aligngemini import cli
from aligngemini.cli import evaluate as commands
from tests._eval_fakes import FakeDetector, make_blind_spot_tree


@pytest.fixture
def declared(tmp_path: Path) -> Path:
    """The blind-spot tree, with the fake that neither branch catches (f6) signed as AI-made with C2PA and one
    real carrying (unsigned) generation parameters."""
    root = make_blind_spot_tree(tmp_path / "mini")
    missed = root / "fake" / "f6.png"
    missed.write_bytes(c2pa_signed(missed.read_bytes(), make_credentials(), mime="image/png")[0])
    (root / "real" / "r9.png").write_bytes(png({"parameters": A1111}, seed=9))
    return root


def _eval(monkeypatch: pytest.MonkeyPatch, data: Path, out: Path, *extra: str) -> dict:
    monkeypatch.setattr(commands, "load_detector", lambda args: FakeDetector())
    assert (
        cli.main(["eval", str(data), "--report", str(out), "--no-cache", "--quiet", "--no-plots", *extra])
        == 0
    )
    return json.loads((out / "report.json").read_text())


def test_eval_counts_provenance_and_scores_pixels_only(monkeypatch, declared: Path, tmp_path: Path) -> None:
    report = _eval(monkeypatch, declared, tmp_path / "report")
    prov = report["provenance"]
    assert prov["mode"] == "report"
    assert prov["overall"] == {"n": 15, "c2pa": 1, "signed": 1, "declared_ai": 2, "declared_capture": 0,
                               "generator_parameters": 1, "xmp_source_type": 0, "any": 2}  # fmt: skip
    assert prov["subsets"]["mini"]["n"] == 15
    off = _eval(monkeypatch, declared, tmp_path / "off", "--provenance", "off")
    assert off["provenance"] is None
    assert report["overall"] == off["overall"]  # reading metadata changed no number
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Provenance the files carry" in md and "was not used in any score" in md


def test_override_decides_the_fused_verdict_and_leaves_scores_alone(
    monkeypatch, declared: Path, tmp_path: Path
) -> None:
    base = _eval(monkeypatch, declared, tmp_path / "report")["overall"]["fused"]
    over = _eval(monkeypatch, declared, tmp_path / "over", "--provenance", "override")
    fused = over["overall"]["fused"]
    assert over["provenance"]["overridden"] == 1
    assert base["fake_acc"] == pytest.approx(6 / 7) and fused["fake_acc"] == pytest.approx(7 / 7)
    assert fused["real_acc"] == base["real_acc"]  # the unsigned parameters on a real decide nothing
    assert fused["auc"] == base["auc"]


def test_one_read_per_file_gives_both_the_hash_and_the_provenance(
    monkeypatch: pytest.MonkeyPatch, declared: Path
) -> None:
    from aligngemini.eval.layouts import read_data
    from aligngemini.eval.runner import hash_items
    from aligngemini.eval.score_cache import file_sha256
    from aligngemini.provenance import read_provenance

    items = read_data([declared]).items
    reads: list[Path] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    hashed = hash_items(items, workers=2, progress=False, provenance=True)
    assert sorted(reads) == sorted(it.path for it in items)  # each file once
    assert hashed.shas == [file_sha256(it.path) for it in items] and not hashed.errors
    monkeypatch.setattr(Path, "read_bytes", original)
    assert hashed.provenance == [read_provenance(it.path.read_bytes()) for it in items]
    assert hash_items(items, workers=2, progress=False).provenance is None
