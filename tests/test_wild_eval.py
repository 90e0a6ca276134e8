"""benchmarks/wild_eval.py: the bootstrap intervals it reports beside its leave-one-source-out table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

we = load_benchmark("wild_eval")


def _calls() -> tuple[dict, dict, list[str], dict]:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    labels, calls = {}, {}
    for f in ("a", "b"):
        perfect = (y == 1, y * 0.8 + 0.1)
        good, worse = perfect[0].copy(), perfect[0].copy()
        if f == "a":  # of fold a's 30 fakes the semantic expert misses nine, the stack those and six more
            good[36:45] = False
            worse[30:45] = False
        noise = rng.random(60)
        labels[f] = y
        calls[f] = {
            "semantic": (perfect[1], good),
            "pixel": (noise, noise >= 0.5),
            "or": (perfect[1], good),
            "stack": (perfect[1], worse),
        }
    dets = ["pixel", "semantic", "or", "stack"]
    summary = {
        "pixel": {"mean_balanced_acc": 0.5},
        "semantic": {"mean_balanced_acc": 0.925},
        "or": {"mean_balanced_acc": 0.925},
        "stack": {"mean_balanced_acc": 0.875},
    }
    return labels, calls, dets, summary


def test_intervals_are_exact_where_nothing_can_move_and_paired_for_differences() -> None:
    labels, calls, dets, summary = _calls()
    iv = we.bootstrap_intervals(labels, calls, dets, summary, n=300)
    assert iv["better_single_expert"] == "semantic"
    assert iv["mean"]["semantic"]["auc"] == (1.0, 1.0)  # its ranking is perfect in every resample
    assert iv["per_fold"]["b"]["semantic"]["balanced_acc"] == (1.0, 1.0)
    same = iv["rule_minus_better_single"]["or"]
    assert same["mean_balanced_acc"] == 0.0 and same["interval"] == (0.0, 0.0)  # paired: identical calls
    worse = iv["rule_minus_better_single"]["stack"]
    assert abs(worse["mean_balanced_acc"] + 0.05) < 1e-12
    lo, hi = worse["interval"]
    assert lo < -0.05 < hi < 0  # paired on the same resamples, the six extra misses are always a loss
    assert iv["per_fold"]["b"]["stack"]["balanced_acc"] == (1.0, 1.0)
    plo, phi = iv["per_fold"]["a"]["pixel"]["auc"]
    assert plo < 0.5 < phi  # noise ranks at chance, and the interval says how loosely on 60 images


def test_the_report_prints_the_intervals_and_the_paired_gains() -> None:
    labels, calls, dets, summary = _calls()
    for d in dets:
        summary[d]["mean_auc"] = 0.5
    iv = we.bootstrap_intervals(labels, calls, dets, summary, n=100)
    res = {f: {"pixel": {"auc": 0.5}} for f in labels}
    text = "\n".join(we.render_intervals(iv, res, summary, dets, sorted(labels)))
    assert "| semantic | 0.925 [" in text
    assert "minus the better single expert (semantic)" in text and "or +0.000 [0.000, 0.000]" in text
    assert "stack -0.050 [" in text
    assert "Pixel AUC per fold: a 0.500 [" in text


def _recorded_csv(path, rows, pixel) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "fold", "generator", "label", "semantic", "pixel"])
        for r, p in zip(rows, pixel, strict=True):
            w.writerow([we.portable(r["path"]), r["source"], r["fold"], "", "real", "0.5", p])


def test_recorded_pixel_scores_are_matched_by_path_and_a_missing_one_is_an_error(tmp_path) -> None:
    rows = [
        {"path": str(tmp_path / n), "source": s, "fold": we.fold_of(s)}
        for n, s in (("a.jpg", "realorai"), ("b.png", "deb:mate-backgrounds=1"), ("c.webp", "realorai"))
    ]
    scores_csv = tmp_path / "earlier_scores.csv"
    _recorded_csv(scores_csv, rows[::-1], ["0.30", "0.20", "0.10"])  # written in another order
    scores, chosen = we.recorded_pixel_scores(rows, scores_csv)
    assert scores.tolist() == [0.10, 0.20, 0.30]
    assert set(chosen) == set(we.FOLDS) and "earlier_scores.csv" in chosen["realorai"]

    _recorded_csv(scores_csv, rows, ["0.10", "", "0.30"])  # a run without pixel scores for one image
    with pytest.raises(SystemExit, match=r"no pixel score for 1 of 3 corpus images \(first: .*b\.png\)"):
        we.recorded_pixel_scores(rows, scores_csv)
    # only the folds a new pixel run may not score are read: the missing one is not among them
    scores, chosen = we.recorded_pixel_scores(rows, scores_csv, ["realorai"])
    assert scores[0] == 0.10 and np.isnan(scores[1]) and scores[2] == 0.30 and list(chosen) == ["realorai"]


def _finished_run(folder: str) -> None:
    """A pixel run folder as far as wild_eval's argument check reads it: a summary with an exported branch."""
    Path(folder).mkdir(parents=True)
    Path(folder, "train_summary.json").write_text(json.dumps({"export": {"family": "pixel-timm"}}))


def test_no_pixel_excludes_the_pixel_sources_and_semantic_sets_accumulate(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _finished_run("r")
    args = we.parse_args([])
    assert args.semantic_set == ["data:semantic-wild/manifest.jsonl"]
    args = we.parse_args(
        ["--semantic-set", "x.jsonl", "--semantic-set", "y.jsonl", "--pixel-scores", "s.csv"]
    )
    assert args.semantic_set == ["x.jsonl", "y.jsonl"] and str(args.pixel_scores) == "s.csv"
    both = we.parse_args(
        ["--pixel-run", "r", "--pixel-scores", "s.csv"]
    )  # a new run, the record for the rest
    assert both.pixel_run == ["r"] and str(both.pixel_scores) == "s.csv"
    for clash in (["--pixel-scores", "s.csv", "--no-pixel"], ["--pixel-run", "r", "--no-pixel"]):
        with pytest.raises(SystemExit):
            we.parse_args(clash)


def test_a_second_set_of_heads_is_averaged_in_log_odds(monkeypatch, tmp_path) -> None:
    calls = []

    def fake_log_odds(rows, args, work, opts):
        calls.append((work, list(opts)))
        logit = 0.0 if len(calls) == 1 else 4.0  # the second heads say fake, confidently
        return {
            "oof": np.full(2, logit),
            "nested": {("a", "b"): np.full(1, -2.0 * len(calls))},
            "fold_idx": {},
        }

    monkeypatch.setattr(we, "semantic_log_odds", fake_log_odds)
    args = we.parse_args(
        ["--semantic-opt", "train.epochs=5", "--semantic-average-opt", "model.head_type=mlp"]
    )
    sem = we.semantic_scores([], args, tmp_path)
    assert calls == [
        (tmp_path, ["train.epochs=5"]),
        (tmp_path / "average", ["train.epochs=5", "model.head_type=mlp"]),
    ]
    np.testing.assert_allclose(sem["oof"], 1 / (1 + np.exp(-2.0)))  # mean log-odds 2, not mean probability
    np.testing.assert_allclose(sem["nested"][("a", "b")], 1 / (1 + np.exp(3.0)))
    calls.clear()
    one = we.semantic_scores([], we.parse_args([]), tmp_path)  # no second set: the heads' own P(fake)
    assert len(calls) == 1 and one["oof"].tolist() == [0.5, 0.5]


def test_the_rescale_probe_resamples_the_image_and_refuses_nonpositive_factors(tmp_path, monkeypatch) -> None:
    from PIL import Image

    from aligngemini.decode import load_image

    image = load_image(Image.new("RGB", (40, 20), (10, 200, 30)))
    assert we.rescaled(image, 1.0) is image
    bigger = we.rescaled(image, 1.5)
    assert bigger.image.size == (60, 30) and bigger.facts == image.facts
    assert bigger.image.getpixel((30, 15)) == (10, 200, 30)  # a flat image stays flat
    monkeypatch.chdir(tmp_path)
    _finished_run("runs/a")
    assert we.parse_args(["--pixel-run", "runs/a", "--pixel-rescale", "0.5"]).pixel_rescale == 0.5
    with pytest.raises(SystemExit):
        we.parse_args(["--pixel-run", "runs/a", "--pixel-rescale", "0"])
    with pytest.raises(SystemExit):  # recorded scores cannot be resampled
        we.parse_args(["--pixel-scores", "scores.csv", "--pixel-rescale", "1.5"])


def test_a_record_named_with_a_dot_keeps_its_whole_name(tmp_path) -> None:
    from record_header import write_record

    out = tmp_path / "deeper" / "wild_eval_rescale_1.5"
    write_record(out, {"a": 1}, "# table\n")
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "wild_eval_rescale_1.5.json",
        "wild_eval_rescale_1.5.md",
    ]
    assert json.loads((out.parent / "wild_eval_rescale_1.5.json").read_text()) == {"a": 1}


def test_the_old_stack_by_fold_flag_names_its_successor_before_any_work() -> None:
    with pytest.raises(SystemExit, match="now --by-fold"):
        we.main(["--stack-by-fold", "--corpus", "no-such-manifest.jsonl"])
