"""The eval runner end to end on a tiny folder with a fake detector: report schema, plots, errors,
score cache, missing branches, re-fusing without re-scoring."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aligngemini import cli
from aligngemini.cli import evaluate as commands
from aligngemini.eval.layouts import read_data
from aligngemini.eval.metrics import METRIC_KEYS
from aligngemini.eval.runner import fusion_settings, measure, run_evaluation, score_items
from aligngemini.eval.score_cache import ScoreCache, branch_model_keys
from tests._eval_fakes import FakeDetector, make_blind_spot_tree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_blind_spot_tree(tmp_path / "mini")


def _run_cli(monkeypatch: pytest.MonkeyPatch, detector: FakeDetector, argv: list[str]) -> int:
    monkeypatch.setattr(commands, "load_detector", lambda args: detector)
    return cli.main(argv)


def test_eval_end_to_end_report_and_plots(
    monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path, capsys
) -> None:
    det = FakeDetector()
    rep = tmp_path / "report"
    rc = _run_cli(monkeypatch, det, ["eval", str(data), "--report", str(rep), "--cache", str(tmp_path / "c.sqlite"),
                                     "--quiet", "--batch-size", "4", "--perturb", "jpeg:50:90:40", "--perturb", "double-blur:0:1:1"])  # fmt: skip
    assert rc == 0
    report = json.loads((rep / "report.json").read_text())
    for key in ("bundle", "data", "n_images", "overall", "subsets", "summary", "blind_spots", "robustness"):
        assert key in report, key
    assert report["bundle"] == "fake@000"
    assert report["n_images"] == 14 and report["n_scored"] == 13 and report["n_errors"] == 1
    assert report["errors"][0]["path"].endswith("broken.png")
    assert "not a recognised image format" in report["errors"][0]["reason"]
    for det_name in ("fused", "pixel", "semantic"):
        m = report["overall"][det_name]
        assert set(METRIC_KEYS) <= set(m)
        assert (m["n_real"], m["n_fake"]) == (6, 7)
    # Pixel catches 4 fakes (3 red + both), semantic catches 3 (2 green + both); OR catches 6 of 7.
    assert report["overall"]["pixel"]["fake_acc"] == pytest.approx(4 / 7)
    assert report["overall"]["semantic"]["fake_acc"] == pytest.approx(3 / 7)
    assert report["overall"]["fused"]["fake_acc"] == pytest.approx(6 / 7)
    assert report["overall"]["fused"]["real_acc"] == pytest.approx(5 / 6)  # the pixel false alarm
    assert report["blind_spots"]["fake"] == {
        "n": 7,
        "pixel_only": 3,
        "semantic_only": 2,
        "both": 1,
        "neither": 1,
    }
    assert report["subsets"]["mini"]["fused"]["balanced_acc"] == pytest.approx((5 / 6 + 6 / 7) / 2, abs=1e-6)
    assert report["intervals"]["resamples"] == 1000
    for det_name in ("fused", "pixel", "semantic"):  # 13 images: wide intervals around each estimate
        m, iv = report["overall"][det_name], report["intervals"][det_name]
        assert iv["balanced_acc"][0] < m["balanced_acc"] < iv["balanced_acc"][1]
        assert iv["auc"][0] <= m["auc"] <= iv["auc"][1] and iv["auc"][1] - iv["auc"][0] > 0.05
    assert "95% intervals of balanced accuracy (and AUC)" in (rep / "report.md").read_text()
    rob = report["robustness"]
    assert set(rob) == {"jpeg", "double-blur"}
    assert [p["value"] for p in rob["jpeg"]["points"]] == [50, 90]
    assert rob["double-blur"]["points"][0]["perturbation"] == "none"
    assert rob["double-blur"]["points"][1]["perturbation"] == "blur:sigma=1x2"
    for name in ("roc.png", "histograms.png", "branch_scatter.png", "subsets.png", "robustness.png"):
        assert (rep / name).read_bytes()[:8] == PNG_MAGIC, name
        assert name in report["plots"]
    md = (rep / "report.md").read_text()
    assert (
        "## Overall" in md and "## Blind spots" in md and "broken.png" in md and "![roc.png](roc.png)" in md
    )
    assert (rep / "scores.csv").read_text().count("\n") == 15
    assert "balanced acc" in capsys.readouterr().out


def test_score_cache_hit_avoids_rescoring(
    monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite"
    first = FakeDetector()
    assert (
        _run_cli(
            monkeypatch,
            first,
            [
                "eval",
                str(data),
                "--report",
                str(tmp_path / "a"),
                "--cache",
                str(cache),
                "--quiet",
                "--no-plots",
            ],
        )
        == 0
    )
    assert first.images_scored == 13
    second = FakeDetector()
    assert (
        _run_cli(
            monkeypatch,
            second,
            [
                "eval",
                str(data),
                "--report",
                str(tmp_path / "b"),
                "--cache",
                str(cache),
                "--quiet",
                "--no-plots",
            ],
        )
        == 0
    )
    assert second.calls == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["overall"] == b["overall"] and b["cache"]["hits"] == 13 and b["cache"]["scored"] == 0
    # Re-thresholding and re-fusing reuse the cache too, and change the result.
    third = FakeDetector()
    argv = ["eval", str(data), "--report", str(tmp_path / "c"), "--cache", str(cache), "--quiet", "--no-plots",
            "--threshold", "pixel=0.6", "--rule", "mean"]  # fmt: skip
    assert _run_cli(monkeypatch, third, argv) == 0
    assert third.calls == 0
    c = json.loads((tmp_path / "c" / "report.json").read_text())
    assert c["detector"]["fusion"] == {
        "thresholds": {"pixel": 0.6, "semantic": 0.5},
        "rule": "mean",
        "uncertain_band": None,
    }
    assert c["overall"]["pixel"]["real_acc"] == 1.0  # 140/255 = 0.55 no longer fires at 0.6
    # A calibrated copy (new thresholds, same weights) keeps its cache keys; other weights do not.
    copy = FakeDetector(thresholds={"pixel": 0.7})
    assert branch_model_keys(copy) == branch_model_keys(FakeDetector())
    other = FakeDetector()
    other.config["files"] = {"pixel.safetensors": "abc"}
    assert branch_model_keys(other)["pixel"] != branch_model_keys(copy)["pixel"]
    # A branch computing in other arithmetic (bf16 instead of fp32, another device) has scores of its own.
    bf16, fp32 = FakeDetector(), FakeDetector()
    bf16.branches["pixel"] = SimpleNamespace(arithmetic="cpu:bfloat16")
    fp32.branches["pixel"] = SimpleNamespace(arithmetic="cpu:float32")
    assert branch_model_keys(bf16)["pixel"] != branch_model_keys(fp32)["pixel"]
    assert branch_model_keys(bf16)["semantic"] == branch_model_keys(fp32)["semantic"]


def test_perturbed_scores_are_cached_apart(data: Path, tmp_path: Path) -> None:
    from aligngemini.eval.robustness import parse_perturb

    es = read_data([data])
    det = FakeDetector()
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        clean = score_items(det, es.items, cache=cache, progress=False)
        jpeg = score_items(
            det, es.items, cache=cache, progress=False, perturbation=parse_perturb("jpeg:20").points()[0]
        )
        assert det.images_scored == 26
        again = score_items(
            det, es.items, cache=cache, progress=False, perturbation=parse_perturb("jpeg:20").points()[0]
        )
        assert det.images_scored == 26 and again.n_cached == 13
    ok = clean.ok
    assert not np.allclose(clean.scores["pixel"][ok], jpeg.scores["pixel"][ok])
    np.testing.assert_allclose(jpeg.scores["pixel"][ok], again.scores["pixel"][ok])


def test_missing_branch_yields_null_sections(
    monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path
) -> None:
    det = FakeDetector(roles=("pixel",))
    rep = tmp_path / "r"
    assert _run_cli(monkeypatch, det, ["eval", str(data), "--report", str(rep), "--no-cache", "--quiet"]) == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["overall"]["semantic"] is None and report["subsets"]["mini"]["semantic"] is None
    assert report["summary"]["semantic"] is None and report["blind_spots"] is None
    assert report["overall"]["fused"]["fake_acc"] == report["overall"]["pixel"]["fake_acc"]
    assert report["detector"]["missing_branches"] == ["semantic"]
    assert not (rep / "branch_scatter.png").exists() and (rep / "roc.png").exists()


def test_a_batch_failure_is_isolated_to_its_image(tmp_path: Path) -> None:
    from tests._eval_fakes import make_image

    root = tmp_path / "mixed"
    for i in range(3):
        make_image(root / "real" / f"r{i}.png", 40, 40, seed=i)
    make_image(root / "fake" / "odd.png", 200, 40, size=16)
    make_image(root / "fake" / "ok.png", 200, 40)
    es = read_data([root])
    det = FakeDetector(fail_on_width=16)
    table = score_items(det, es.items, progress=False, batch_size=8)
    bad = [i for i, it in enumerate(es.items) if it.path.name == "odd.png"]
    assert list(table.errors) == bad and "scoring failed" in table.errors[bad[0]]
    assert int(table.ok.sum()) == 4
    # A detector that fails on every image of a batch is broken: that is an error, not a report.
    with pytest.raises(RuntimeError, match="failed on every image"):
        usual = [it for it in es.items if it.path.name != "odd.png"]
        score_items(FakeDetector(fail_on_width=24), usual, progress=False, batch_size=8)


def test_measure_uncertain_band_and_subsets(data: Path) -> None:
    es = read_data([data])
    det = FakeDetector()
    table = score_items(det, es.items, progress=False)
    settings = fusion_settings(det, uncertain_band=(0.4, 0.6))
    m = measure(es, table, settings)
    assert 0 < m.overall["fused"]["uncertain_rate"] < 1
    assert m.overall["fused"]["decided_balanced_acc"] is not None
    run = run_evaluation(det, es, settings=settings, progress=False)
    assert run.measured.overall["fused"]["uncertain_rate"] == m.overall["fused"]["uncertain_rate"]


def test_bad_arguments_exit_2(monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path, capsys) -> None:
    det = FakeDetector()
    for extra in (
        ["--perturb", "sharpen:1"],
        ["--threshold", "pixel"],
        ["--threshold", "texture=0.5"],
        ["--limit", "0"],
    ):
        rc = _run_cli(
            monkeypatch,
            det,
            ["eval", str(data), "--report", str(tmp_path / "x"), "--no-cache", "--quiet", *extra],
        )
        assert rc == 2, extra
        assert "error:" in capsys.readouterr().err
    assert (
        _run_cli(
            monkeypatch, det, ["eval", str(tmp_path / "nope"), "--report", str(tmp_path / "x"), "--quiet"]
        )
        == 2
    )


def test_limit_samples_reproducibly(monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path) -> None:
    det = FakeDetector()
    for name in ("a", "b"):
        assert (
            _run_cli(
                monkeypatch,
                det,
                [
                    "eval",
                    str(data),
                    "--report",
                    str(tmp_path / name),
                    "--no-cache",
                    "--quiet",
                    "--no-plots",
                    "--limit",
                    "5",
                ],
            )
            == 0
        )
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["n_images"] == 5 and a["overall"] == b["overall"]
    assert any("--limit 5" in n for n in a["notes"])


def test_the_cli_takes_every_registered_layout_and_rule() -> None:
    from aligngemini.eval.layouts import LAYOUT_CHOICES
    from aligngemini.fusion import RULES

    parser = cli.build_parser()
    for layout in LAYOUT_CHOICES:
        assert parser.parse_args(["eval", "d", "--layout", layout, "--report", "r"]).layout == layout
    for rule in RULES:
        assert parser.parse_args(["eval", "d", "--rule", rule, "--report", "r"]).rule == rule
        assert parser.parse_args(["calibrate", "d", "--rule", rule, "--out", "o"]).rule == rule


def test_nothing_scorable_writes_the_errors_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    for cls in ("real", "fake"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "x.png").write_bytes(b"")
    rep = tmp_path / "r"
    assert (
        _run_cli(
            monkeypatch,
            FakeDetector(),
            ["eval", str(tmp_path / "bad"), "--report", str(rep), "--no-cache", "--quiet"],
        )
        == 1
    )
    report = json.loads((rep / "report.json").read_text())
    assert (
        report["n_errors"] == 2
        and report["overall"]["fused"]["balanced_acc"] is None
        and report["plots"] == []
    )
    assert "empty file" in (rep / "errors.txt").read_text()
    assert "no image could be scored" in capsys.readouterr().err
