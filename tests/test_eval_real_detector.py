"""``aligngemini eval`` and ``calibrate`` through the real Detector with tiny bundles built from the real
branch families (no fakes): the runner depends on the Detector contract only."""

from __future__ import annotations

import json
from pathlib import Path

from aligngemini import cli
from aligngemini.bundle import load_bundle
from tests._eval_fakes import make_blind_spot_tree


def _eval(data: Path, bundle: Path, out: Path, *extra: str) -> dict:
    argv = ["eval", str(data), "--bundle", str(bundle), "--report", str(out), "--device", "cpu", "--quiet",
            "--batch-size", "4", "--workers", "2", *extra]  # fmt: skip
    assert cli.main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_eval_with_a_real_pixel_only_bundle(tiny_pixel_bundle_dir: Path, tmp_path: Path) -> None:
    data = make_blind_spot_tree(tmp_path / "mini")
    report = _eval(data, tiny_pixel_bundle_dir, tmp_path / "r", "--no-plots", "--perturb", "jpeg:50")
    assert report["bundle"] == load_bundle(tiny_pixel_bundle_dir).bundle_id
    assert report["n_scored"] == 13 and report["n_errors"] == 1
    assert report["overall"]["semantic"] is None
    pixel = report["overall"]["pixel"]
    assert pixel["n_real"] == 6 and pixel["n_fake"] == 7 and pixel["auc"] is not None
    assert report["robustness"]["jpeg"]["points"][0]["n_scored"] == 13


def test_eval_and_calibrate_with_a_real_two_branch_bundle(
    tiny_bundle_dir: Path, tmp_path: Path, capsys
) -> None:
    data = make_blind_spot_tree(tmp_path / "mini")
    report = _eval(data, tiny_bundle_dir, tmp_path / "r")
    assert report["overall"]["semantic"] is not None and report["blind_spots"]["fake"]["n"] == 7
    assert (tmp_path / "r" / "branch_scatter.png").is_file()
    out = tmp_path / "cal"
    argv = ["calibrate", str(data), "--bundle", str(tiny_bundle_dir), "--out", str(out), "--target-fpr", "0.2",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    cal = load_bundle(out)
    assert cal.config["calibration"]["after"]["fused"]["fpr"] <= 0.2
    # The calibrated copy reuses every cached score: the second eval scores nothing.
    again = _eval(data, out, tmp_path / "r2", "--no-plots")
    assert again["cache"]["scored"] == 0 and again["cache"]["hits"] == 13
    assert again["overall"]["fused"]["real_acc"] >= 0.8 - 1e-9
