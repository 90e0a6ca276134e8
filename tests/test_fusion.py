"""Fusion rules: the OR rule decides exactly as the paper's, fused scores rank, the band is honoured."""

from __future__ import annotations

import numpy as np
import pytest

from aligngemini.fusion import centre_on_threshold, fuse


def test_or_rule_fires_when_any_branch_passes_its_own_threshold() -> None:
    scores = {"pixel": np.array([0.9, 0.1, 0.6, 0.2]), "semantic": np.array([0.1, 0.8, 0.1, 0.2])}
    res = fuse(scores, {"pixel": 0.5, "semantic": 0.7}, rule="or")
    assert res.fake.tolist() == [True, True, True, False]
    assert res.verdicts == ["fake", "fake", "fake", "real"]
    assert res.fired == [["pixel"], ["semantic"], ["pixel"], []]
    # the fused score crosses 0.5 exactly where the rule fires
    assert ((res.p_fake >= 0.5) == res.fake).all()


def test_or_rule_matches_bruteforce_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    p, s = rng.random(500), rng.random(500)
    tp, ts = 0.3, 0.8
    res = fuse({"pixel": p, "semantic": s}, {"pixel": tp, "semantic": ts})
    assert (res.fake == ((p >= tp) | (s >= ts))).all()
    assert ((res.p_fake >= 0.5) == res.fake).all()


def test_centring_maps_threshold_to_half_and_is_monotone() -> None:
    x = np.linspace(0.01, 0.99, 50)
    c = centre_on_threshold(x, 0.2)
    assert np.all(np.diff(c) > 0)
    assert centre_on_threshold(np.array([0.2]), 0.2)[0] == pytest.approx(0.5)


def test_noisy_or_and_mean_rank_by_agreement() -> None:
    scores = {"pixel": np.array([0.9, 0.9]), "semantic": np.array([0.9, 0.1])}
    th = {"pixel": 0.5, "semantic": 0.5}
    noisy = fuse(scores, th, rule="noisy-or").p_fake
    mean = fuse(scores, th, rule="mean").p_fake
    assert noisy[0] > noisy[1] and mean[0] > mean[1]
    assert noisy[0] == pytest.approx(1 - 0.1 * 0.1)
    assert mean[1] == pytest.approx(0.5)


def test_single_branch_and_missing_scores() -> None:
    res = fuse({"pixel": np.array([0.7, np.nan])}, {"pixel": 0.5})
    assert res.verdicts == ["fake", "error"]
    assert np.isnan(res.p_fake[1])
    both = fuse({"pixel": np.array([np.nan]), "semantic": np.array([0.9])}, {"pixel": 0.5, "semantic": 0.5})
    assert both.verdicts == ["fake"] and both.fired == [["semantic"]]


def test_uncertain_band() -> None:
    scores = {"pixel": np.array([0.45, 0.55, 0.95, 0.05])}
    res = fuse(scores, {"pixel": 0.5}, uncertain_band=(0.4, 0.6))
    assert res.verdicts == ["uncertain", "uncertain", "fake", "real"]
    with pytest.raises(ValueError, match="uncertain_band"):
        fuse(scores, {"pixel": 0.5}, uncertain_band=(0.6, 0.7))


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown fusion rule"):
        fuse({"pixel": np.array([0.1])}, {"pixel": 0.5}, rule="and")
    with pytest.raises(ValueError, match="no threshold"):
        fuse({"pixel": np.array([0.1])}, {})


def test_stack_rule_is_a_logistic_model_of_the_centred_logits() -> None:
    scores = {"pixel": np.array([0.9, 0.2, 0.5]), "semantic": np.array([0.3, 0.8, np.nan])}
    th = {"pixel": 0.5, "semantic": 0.4}
    params = {"weights": {"pixel": 2.0, "semantic": 0.5}, "bias": -0.25}
    res = fuse(scores, th, rule="stack", params=params)

    def logit(p: float) -> float:
        return float(np.log(p) - np.log1p(-p))

    z0 = -0.25 + 2.0 * (logit(0.9) - logit(0.5)) + 0.5 * (logit(0.3) - logit(0.4))
    assert res.p_fake[0] == pytest.approx(1 / (1 + np.exp(-z0)))
    assert res.p_fake[2] == pytest.approx(1 / (1 + np.exp(0.25)))  # a missing branch adds nothing
    assert res.fake.tolist() == [bool(res.p_fake[0] >= 0.5), bool(res.p_fake[1] >= 0.5), False]
    assert res.fired == [["pixel"], ["semantic"], ["pixel"]]  # "fired" keeps each branch's own threshold
    with pytest.raises(ValueError, match="no weight"):
        fuse(scores, th, rule="stack", params={"weights": {"pixel": 1.0}})


def test_every_rule_is_registered_once_with_help() -> None:
    from aligngemini.fusion import RULES

    assert set(RULES) == {"or", "noisy-or", "mean", "stack"}
    assert all(r.help for r in RULES.values())
