"""benchmarks/tower_kernels.py: its baseline tower is the tower as it computed before quick_gelu was folded."""

from __future__ import annotations

import torch
from benchmark_scripts import load_benchmark
from tiny_clip import tiny_clip
from torch import nn

from aligngemini.branches.semantic.tower_kernels import fold_quick_gelu

tk = load_benchmark("tower_kernels")


def test_unfolding_restores_quick_gelu_and_leaves_the_folded_tower_alone() -> None:
    original, folded = tiny_clip(seed=8), tiny_clip(seed=8)
    fold_quick_gelu(folded)
    back = tk.unfolded(folded)
    assert all(isinstance(layer.mlp.activation_fn, nn.SiLU) for layer in folded.vision_model.encoder.layers)
    assert not any(isinstance(m, nn.SiLU) for m in back.modules())
    for a, b in zip(back.state_dict().values(), original.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert tk.name(tk.BASELINE) == "attention sdpa, quick_gelu"


def test_score_change_counts_the_verdicts_that_cross_the_threshold() -> None:
    import numpy as np

    change = load_benchmark("shipped_semantic").score_change(
        np.array([0.1, 0.45, 0.7, 0.9]), np.array([0.1, 0.55, 0.6, 0.4]), 0.5
    )
    assert change["verdicts_changed"] == 2  # 0.55 -> 0.45 and 0.4 -> 0.9 cross 0.5; 0.6 -> 0.7 does not
    assert change["dp_max"] == 0.5 and abs(change["dp_mean"] - 0.175) < 1e-12
