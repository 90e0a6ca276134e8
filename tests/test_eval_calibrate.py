"""Calibration: thresholds meeting a target FPR (checked by brute force), balanced accuracy, the
uncertain band, and the command writing a calibrated bundle copy without touching the source."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from aligngemini import cli
from aligngemini.bundle import load_bundle, save_bundle
from aligngemini.cli import evaluate as commands
from aligngemini.eval.calibrate import NEVER, calibrate, calibrate_thresholds, choose_uncertain_band
from aligngemini.fusion import fuse
from tests._eval_fakes import FakeDetector, make_blind_spot_tree


def _synthetic(seed: int, n_real: int = 200, n_fake: int = 200) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two branches with complementary fakes: half are visible to pixel only, half to semantic only."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_real, int), np.ones(n_fake, int)]
    pixel = np.r_[
        rng.beta(2, 6, n_real),
        np.where(np.arange(n_fake) % 2 == 0, rng.beta(6, 2, n_fake), rng.beta(2, 6, n_fake)),
    ]
    semantic = np.r_[
        rng.beta(2, 5, n_real),
        np.where(np.arange(n_fake) % 2 == 1, rng.beta(5, 2, n_fake), rng.beta(2, 5, n_fake)),
    ]
    return {"pixel": pixel, "semantic": semantic}, labels


def _rates(
    scores: dict[str, np.ndarray], labels: np.ndarray, th: dict[str, float], rule: str = "or"
) -> tuple[float, float]:
    fake = np.asarray(fuse(scores, th, rule).fake)
    return float(fake[labels == 0].mean()), float(fake[labels == 1].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_or_target_fpr_is_met_and_optimal(seed: int, target: float) -> None:
    scores, labels = _synthetic(seed, 60, 60)
    th = calibrate_thresholds(scores, labels, rule="or", target="fpr", target_fpr=target)
    fpr, tpr = _rates(scores, labels, th)
    assert fpr <= target + 1e-12
    # Brute force over every pair of thresholds that matters (just above each observed score, or never).
    cands = {r: np.r_[0.0, np.nextafter(np.unique(s), np.inf), NEVER] for r, s in scores.items()}
    best = 0.0
    for tp, ts in itertools.product(cands["pixel"], cands["semantic"]):
        fake = (scores["pixel"] >= tp) | (scores["semantic"] >= ts)
        if fake[labels == 0].mean() <= target + 1e-12:
            best = max(best, float(fake[labels == 1].mean()))
    assert tpr == pytest.approx(best)


def test_or_balanced_matches_brute_force() -> None:
    scores, labels = _synthetic(5, 50, 50)
    th = calibrate_thresholds(scores, labels, rule="or", target="balanced")
    fpr, tpr = _rates(scores, labels, th)
    cands = {r: np.r_[np.unique(s), NEVER] for r, s in scores.items()}
    best = max(
        ((1 - ((scores["pixel"] >= a) | (scores["semantic"] >= b))[labels == 0].mean())
         + ((scores["pixel"] >= a) | (scores["semantic"] >= b))[labels == 1].mean()) / 2
        for a, b in itertools.product(cands["pixel"], cands["semantic"])
    )  # fmt: skip
    assert (1 - fpr + tpr) / 2 == pytest.approx(best)


def test_single_branch_and_other_rules() -> None:
    scores, labels = _synthetic(3, 100, 100)
    th = calibrate_thresholds({"pixel": scores["pixel"]}, labels, target="fpr", target_fpr=0.05)
    assert set(th) == {"pixel"}
    assert (scores["pixel"][labels == 0] >= th["pixel"]).mean() <= 0.05
    for rule in ("noisy-or", "mean"):
        th = calibrate_thresholds(scores, labels, rule=rule, target="fpr", target_fpr=0.1)
        fpr, tpr = _rates(scores, labels, th, rule)
        assert fpr <= 0.1 + 1e-12 and tpr > 0.1, rule
        start = {"pixel": 0.5, "semantic": 0.5}
        bal = calibrate_thresholds(scores, labels, rule=rule, target="balanced", current=start)
        f0, t0 = _rates(scores, labels, start, rule)
        f1, t1 = _rates(scores, labels, bal, rule)
        assert (1 - f1 + t1) >= (1 - f0 + t0), rule


def test_calibration_refuses_what_it_cannot_do() -> None:
    scores, labels = _synthetic(0, 10, 10)
    with pytest.raises(ValueError, match="real images"):
        calibrate_thresholds(scores, np.ones(20, int))
    with pytest.raises(ValueError, match="NaN"):
        calibrate_thresholds({"pixel": np.r_[np.nan, scores["pixel"][1:]]}, labels)
    with pytest.raises(ValueError, match="target"):
        calibrate_thresholds(scores, labels, target="auc")


def test_uncertain_band_holds_errors_around_the_decision() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300, int), np.ones(300, int)]
    p = np.clip(np.r_[rng.normal(0.3, 0.15, 300), rng.normal(0.7, 0.15, 300)], 0, 1)
    fake = p >= 0.5
    band = choose_uncertain_band(p, labels, fake, 0.2)
    assert band is not None
    lo, hi = band
    assert lo <= 0.5 <= hi and hi - lo == pytest.approx(0.2)
    inside = (p >= lo) & (p < hi)
    wrong = fake != (labels == 1)
    assert wrong[inside].mean() > wrong.mean() * 2  # the band concentrates the errors
    assert choose_uncertain_band(p, labels, fake, 0) is None
    fr = fuse({"pixel": p}, {"pixel": 0.5}, "or", band)  # fuse accepts it
    assert "uncertain" in fr.verdicts


def test_calibrate_reports_before_and_after() -> None:
    scores, labels = _synthetic(1)
    cal = calibrate(
        scores,
        labels,
        target="fpr",
        target_fpr=0.05,
        current={"pixel": 0.5, "semantic": 0.5},
        uncertain_width=0.1,
    )
    assert cal.after["fused"]["fpr"] <= 0.05 < cal.before["fused"]["fpr"]
    assert cal.uncertain_band is not None and cal.n_real == 200
    d = cal.to_dict()
    assert json.loads(json.dumps(d))["thresholds"] == cal.thresholds


def _tiny_bundle(folder: Path) -> Path:
    cfg = {
        "name": "fake",
        "branches": {r: {"family": f"fake-{r}", "threshold": 0.5} for r in ("pixel", "semantic")},
        "fusion": {"rule": "or", "uncertain_band": None},
    }
    save_bundle(folder, cfg, card="# fake bundle\n")
    return folder


def test_calibrate_command_writes_a_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    data = make_blind_spot_tree(tmp_path / "val")
    src = _tiny_bundle(tmp_path / "bundle")
    before = (src / "config.json").read_text()
    monkeypatch.setattr(commands, "load_detector", lambda args: FakeDetector())
    out = tmp_path / "calibrated"
    argv = ["calibrate", str(data), "--bundle", str(src), "--out", str(out), "--target-fpr", "0.0",
            "--uncertain-width", "0.1", "--cache", str(tmp_path / "c.sqlite"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (src / "config.json").read_text() == before  # the source is never changed
    copy = load_bundle(out)
    th = copy.thresholds()
    assert th["pixel"] > 140 / 255 - 0.05  # above the real with high red: no false positive left
    assert copy.config["fusion"]["uncertain_band"] is not None
    assert copy.config["calibration"]["after"]["fused"]["fpr"] == 0.0
    assert "## Calibration" in copy.card
    assert "calibrated on 6 real / 7 fake" in capsys.readouterr().out
    # An existing output needs --overwrite; the source itself is refused even then.
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0
    bad = [
        "calibrate",
        str(data),
        "--bundle",
        str(src),
        "--out",
        str(src),
        "--overwrite",
        "--no-cache",
        "--quiet",
    ]
    assert cli.main(bad) == 2
    assert "source bundle" in capsys.readouterr().err
    assert (src / "config.json").read_text() == before


def test_stack_calibration_learns_weights_that_rank_better_than_or() -> None:
    from sklearn.metrics import roc_auc_score

    from aligngemini.eval.calibrate import fit_stack

    rng = np.random.default_rng(3)
    n = 400
    labels = np.r_[np.zeros(n, int), np.ones(n, int)]
    # both branches carry a weak, independent signal: summing them separates better than either alone
    pixel = 1 / (1 + np.exp(-(rng.normal(0, 1, 2 * n) + 0.8 * labels)))
    semantic = 1 / (1 + np.exp(-(rng.normal(0, 1, 2 * n) + 0.8 * labels)))
    scores = {"pixel": pixel, "semantic": semantic}
    stack = calibrate(scores, labels, rule="stack", target="balanced")
    orr = calibrate(scores, labels, rule="or", target="balanced")
    assert set(stack.params["weights"]) == {"pixel", "semantic"} and all(
        w > 0 for w in stack.params["weights"].values()
    )
    auc = {
        name: roc_auc_score(labels, fuse(scores, cal.thresholds, cal.rule, params=cal.params).p_fake)
        for name, cal in (("stack", stack), ("or", orr))
    }
    best_single = max(roc_auc_score(labels, pixel), roc_auc_score(labels, semantic))
    assert (
        auc["stack"] > auc["or"] + 0.02 and auc["stack"] > best_single + 0.04
    )  # measured 0.804 / 0.770 / 0.739
    assert stack.after["fused"]["balanced_acc"] >= orr.after["fused"]["balanced_acc"]
    tight = fit_stack(scores, labels, stack.thresholds, target="fpr", target_fpr=0.05)
    fr = fuse(scores, stack.thresholds, "stack", params=tight)
    assert fr.fake[labels == 0].mean() <= 0.05


def test_calibrate_stack_writes_the_fitted_rule_into_the_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    import shutil

    from aligngemini.detector import Detector

    data = make_blind_spot_tree(tmp_path / "val")
    src = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, src)
    out = tmp_path / "stacked"
    argv = ["calibrate", str(data), "--bundle", str(src), "--out", str(out), "--rule", "stack", "--target", "balanced",
            "--no-cache", "--quiet", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    fusion = load_bundle(out).config["fusion"]
    assert fusion["rule"] == "stack" and set(fusion["weights"]) == {"pixel", "semantic"} and "bias" in fusion
    det = Detector.load(out, device="cpu")
    images = [p for p in sorted(data.rglob("*.png")) if p.name != "broken.png"][:4]
    scores = det.score_loaded([det.load_input(p) for p in images])
    want = fuse(scores, det.thresholds, "stack", params=fusion).p_fake
    got = [v.p_fake for v in det.verdicts_from_scores(["a", "b", "c", "d"], scores)]
    np.testing.assert_allclose(got, want)


def test_calibrate_from_a_scores_csv_needs_no_detector(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    src = _tiny_bundle(tmp_path / "bundle")
    monkeypatch.setattr(
        commands, "load_detector", lambda args: pytest.fail("scores were given: nothing to score")
    )
    scores, labels = _synthetic(1)
    csv_path = tmp_path / "scores.csv"
    lines = ["path,label,pixel,semantic"] + [
        f"i{i}.jpg,{'fake' if y else 'real'},{p:.6f},{s:.6f}"
        for i, (y, p, s) in enumerate(zip(labels, scores["pixel"], scores["semantic"], strict=True))
    ]
    lines.append("unscored.jpg,real,,0.3")  # a branch without a score: the row is left out
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cal"
    argv = ["calibrate", "--scores", str(csv_path), "--bundle", str(src), "--out", str(out), "--target", "balanced",
            "--rule", "stack"]  # fmt: skip
    assert cli.main(argv) == 0
    copy = load_bundle(out)
    assert copy.config["fusion"]["rule"] == "stack" and copy.config["calibration"]["n_real"] == 200
    assert copy.config["calibration"]["data"] == [str(csv_path)]
    assert "1 row(s)" in capsys.readouterr().err
    assert cli.main(["calibrate", str(tmp_path), "--scores", str(csv_path), "--bundle", str(src), "--out",
                     str(tmp_path / "x")]) == 2  # fmt: skip
    assert "not both" in capsys.readouterr().err


def test_stack_never_learns_that_looking_generated_means_real() -> None:
    from aligngemini.eval.calibrate import fit_stack

    rng = np.random.default_rng(7)
    n = 300
    labels = np.r_[np.zeros(n, int), np.ones(n, int)]
    semantic = 1 / (1 + np.exp(-(rng.normal(0, 1, 2 * n) + 1.5 * labels)))
    inverted = 1 / (1 + np.exp(-(rng.normal(0, 1, 2 * n) - 1.0 * labels)))  # an expert backwards on this data
    params = fit_stack({"pixel": inverted, "semantic": semantic}, labels, {"pixel": 0.5, "semantic": 0.5})
    assert params["weights"]["pixel"] == 0.0 and params["weights"]["semantic"] > 0


def test_balance_weights_give_each_class_of_each_group_the_same_total() -> None:
    from sklearn.utils.class_weight import compute_sample_weight

    from aligngemini.eval.calibrate import balance_weights

    labels = np.array([0] * 6 + [1] * 2 + [0] * 1 + [1] * 3)
    groups = np.array(["big"] * 8 + ["small"] * 4)
    np.testing.assert_allclose(balance_weights(labels), compute_sample_weight("balanced", labels))
    w = balance_weights(labels, groups)
    totals = {(g, c): w[(groups == g) & (labels == c)].sum() for g in ("big", "small") for c in (0, 1)}
    np.testing.assert_allclose(list(totals.values()), [len(w) / 4] * 4)


def test_stack_fit_by_group_lets_a_small_source_count() -> None:
    """A branch blind on one large source and informative on a small one: pooled, the large source's images
    drown its evidence; weighed by source, each source counts once and the branch keeps more weight."""
    from aligngemini.eval.calibrate import fit_stack

    rng = np.random.default_rng(11)
    big, small = 900, 60
    labels = np.r_[
        np.zeros(big // 2, int), np.ones(big // 2, int), np.zeros(small // 2, int), np.ones(small // 2, int)
    ]
    groups = np.array(["big"] * big + ["small"] * small)
    signal = np.where(groups == "small", 2.5, 0.0) * labels  # the pixel expert sees the small source only
    pixel = 1 / (1 + np.exp(-(rng.normal(0, 1, big + small) + signal)))
    semantic = 1 / (1 + np.exp(-(rng.normal(0, 1, big + small) + 1.0 * labels)))
    scores, t = {"pixel": pixel, "semantic": semantic}, {"pixel": 0.5, "semantic": 0.5}
    pooled = fit_stack(scores, labels, t)["weights"]
    by_group = fit_stack(scores, labels, t, groups=groups)["weights"]
    assert by_group["pixel"] > 2 * pooled["pixel"]
    cal = calibrate(scores, labels, rule="stack", target="balanced", groups=groups)
    assert cal.params == fit_stack(scores, labels, cal.thresholds, groups=groups)  # calibrate passes them on


def _two_sources(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A large source whose scores sit high for both classes and a small one whose sit low: one threshold
    cannot suit both, and pooled images let the large source choose it."""
    rng = np.random.default_rng(seed)
    big, small = 800, 80
    labels = np.r_[
        np.zeros(big // 2, int), np.ones(big // 2, int), np.zeros(small // 2, int), np.ones(small // 2, int)
    ]
    groups = np.array(["big"] * big + ["small"] * small)
    z = rng.normal(0, 0.5, big + small) + 1.5 * labels + np.where(groups == "big", 0.5, -0.5)
    return 1 / (1 + np.exp(-z)), labels, groups


def _mean_group_balanced(fake: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    out = []
    for g in np.unique(groups):
        m = groups == g
        out.append((fake[m & (labels == 1)].mean() + (~fake[m & (labels == 0)]).mean()) / 2)
    return float(np.mean(out))


@pytest.mark.parametrize("rule", ["or", "mean"])  # the exact OR search and the coordinate search
def test_balanced_thresholds_by_group_weigh_each_source_equally(rule: str) -> None:
    semantic, labels, groups = _two_sources(5)
    pixel = np.random.default_rng(6).uniform(0, 0.01, labels.size)  # a branch with nothing to tell
    scores = {"pixel": pixel, "semantic": semantic}
    pooled = calibrate_thresholds(scores, labels, rule=rule, target="balanced")
    grouped = calibrate_thresholds(scores, labels, rule=rule, target="balanced", groups=groups)
    assert grouped["semantic"] < pooled["semantic"]  # the small source's low scores pull it down

    def mean_group(th: dict[str, float]) -> float:
        return _mean_group_balanced(np.asarray(fuse(scores, th, rule).fake), labels, groups)

    assert mean_group(grouped) > mean_group(pooled) + 0.02
    # Without groups the result is the pooled one, however the groups would have been labelled.
    assert calibrate_thresholds(scores, labels, rule=rule, target="balanced", groups=None) == pooled


def test_calibrate_fits_every_threshold_by_group_for_the_stack_too() -> None:
    semantic, labels, groups = _two_sources(7)
    pixel = np.random.default_rng(8).uniform(0, 1, labels.size)
    scores = {"pixel": pixel, "semantic": semantic}
    pooled = calibrate(scores, labels, rule="stack", target="balanced")
    grouped = calibrate(scores, labels, rule="stack", target="balanced", groups=groups)
    own = calibrate_thresholds({"semantic": semantic}, labels, target="balanced", groups=groups)["semantic"]
    assert grouped.thresholds["semantic"] == own != pooled.thresholds["semantic"]


def test_calibrate_balances_by_a_column_of_the_scores_csv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    src = _tiny_bundle(tmp_path / "bundle")
    monkeypatch.setattr(commands, "load_detector", lambda args: pytest.fail("scores were given"))
    semantic, labels, groups = _two_sources(9)
    pixel = np.random.default_rng(10).uniform(0, 0.01, labels.size)
    csv_path = tmp_path / "scores.csv"
    rows = ["path,label,fold,pixel,semantic"] + [
        f"i{i}.jpg,{'fake' if y else 'real'},{g},{p:.6f},{s:.6f}"
        for i, (y, g, p, s) in enumerate(zip(labels, groups, pixel, semantic, strict=True))
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    base = [
        "calibrate",
        "--scores",
        str(csv_path),
        "--bundle",
        str(src),
        "--target",
        "balanced",
        "--rule",
        "or",
    ]
    assert cli.main([*base, "--out", str(tmp_path / "pooled")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "by-fold"), "--balance-by", "fold"]) == 0
    pooled, by_fold = load_bundle(tmp_path / "pooled"), load_bundle(tmp_path / "by-fold")
    want = calibrate_thresholds(
        {"pixel": pixel, "semantic": semantic}, labels, rule="or", target="balanced", groups=groups
    )
    assert by_fold.thresholds()["semantic"] == pytest.approx(want["semantic"], abs=1e-6)
    assert by_fold.thresholds()["semantic"] < pooled.thresholds()["semantic"]
    assert "'fold' group weighed equally" in (tmp_path / "by-fold" / "MODEL_CARD.md").read_text()
    capsys.readouterr()
    # A group with one class cannot be balanced, and a grouping needs the balanced target.
    one_class = csv_path.read_text().replace(",small,", ",tiny,", 1)
    (tmp_path / "one.csv").write_text(one_class)
    argv = ["calibrate", "--scores", str(tmp_path / "one.csv"), "--bundle", str(src), "--target", "balanced",
            "--balance-by", "fold", "--out", str(tmp_path / "x")]  # fmt: skip
    assert cli.main(argv) == 2 and "['tiny'] hold only one class" in capsys.readouterr().err
    assert cli.main([*base[:-4], "--balance-by", "fold", "--out", str(tmp_path / "y")]) == 2
    assert "--target balanced" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_calibrated_bundle_calibrated_again_keeps_one_calibration_section(tmp_path: Path) -> None:
    src = _tiny_bundle(tmp_path / "bundle")
    scores, labels = _synthetic(2)
    csv_path = tmp_path / "scores.csv"
    rows = ["path,label,pixel,semantic"] + [
        f"i{i}.jpg,{'fake' if y else 'real'},{p:.6f},{s:.6f}"
        for i, (y, p, s) in enumerate(zip(labels, scores["pixel"], scores["semantic"], strict=True))
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    once, twice = tmp_path / "once", tmp_path / "twice"
    argv = ["calibrate", "--scores", str(csv_path), "--target", "balanced", "--rule", "or"]
    assert cli.main([*argv, "--bundle", str(src), "--out", str(once)]) == 0
    assert (
        cli.main(
            [*argv, "--bundle", str(once), "--out", str(twice), "--target-fpr", "0.1", "--target", "fpr"]
        )
        == 0
    )
    card = (twice / "MODEL_CARD.md").read_text()
    assert card.count("## Calibration") == 1 and "false-positive rate <= 10.0%" in card
    head = (src / "MODEL_CARD.md").read_text().rstrip("\n")
    assert card.startswith(head) and (once / "MODEL_CARD.md").read_text().startswith(head)
