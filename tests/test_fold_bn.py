"""BatchNorm folding for inference: same outputs, fewer layers, and a guard against pairs that are not pairs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from aligngemini.branches.pixel.fold_bn import fold_batchnorm, fold_checked

torch.set_num_threads(2)


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_timm_efficientnet_folds_every_pair_and_keeps_its_outputs() -> None:
    model = _with_statistics(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x)
    n_bn = _bn_count(model)
    kept, folded = fold_checked(model, x)
    assert (
        folded == n_bn > 0 and _bn_count(kept) == 0 and _bn_count(model) == n_bn
    )  # the original is untouched
    with torch.inference_mode():
        torch.testing.assert_close(kept(x), want, atol=1e-4, rtol=1e-4)
    # the activation that timm fuses into its BatchNorm layer is still applied
    assert any(isinstance(m, nn.ReLU6) for m in kept.modules())


def test_plain_batchnorm_without_affine_and_conv_with_bias() -> None:
    model = _with_statistics(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Conv2d(4, 2, 1)
        )
    )
    x = torch.randn(3, 3, 9, 9)
    with torch.inference_mode():
        want = model(x)
        assert fold_batchnorm(model) == 1
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    assert isinstance(model[1], nn.Identity)


class _Reordered(nn.Module):
    """Declares conv then bn, but applies bn to the input and conv after it: not a foldable pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_pair_by_declaration_only_is_left_unfolded() -> None:
    model = _with_statistics(_Reordered())
    x = torch.randn(2, 3, 8, 8)
    kept, folded = fold_checked(model, x)
    assert folded == 0 and kept is model and isinstance(model.bn, nn.BatchNorm2d)


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train())


def test_a_model_without_batchnorm_is_returned_uncopied() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LayerNorm([4, 6, 6])).eval()
    kept, folded = fold_checked(model, torch.randn(1, 3, 8, 8))
    assert kept is model and folded == 0
