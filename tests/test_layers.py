"""LightLayers: parameter formula, SVD initialisation, full-rank equivalence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces import LightConv2d, LightLinear, rank_from_ratio


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cin, cout, k, r", [(16, 32, 3, 4), (3, 8, 5, 2), (64, 64, 1, 16), (8, 24, 3, 1)])
def test_lightconv_parameter_formula(cin, cout, k, r):
    layer = LightConv2d(cin, cout, k, rank=r)
    assert n_params(layer) == r * (k * k * cin + cout)
    assert n_params(LightConv2d(cin, cout, k, rank=r, bias=True)) == r * (k * k * cin + cout) + cout
    assert n_params(LightConv2d(cin, cout, k, rank=None)) == k * k * cin * cout


def test_lightconv_is_conv_then_linear_1x1_without_activation():
    layer = LightConv2d(4, 6, 3, stride=2, rank=2)
    assert isinstance(layer.reduce, nn.Conv2d) and layer.reduce.out_channels == 2
    assert layer.reduce.kernel_size == (3, 3) and layer.reduce.stride == (2, 2)
    assert isinstance(layer.expand, nn.Conv2d) and layer.expand.kernel_size == (1, 1)
    x = torch.randn(1, 4, 8, 8)
    # Linear in its input: f(a x) = a f(x) holds only without an activation between the two.
    assert torch.allclose(layer(-2 * x), -2 * layer(x), atol=1e-5)
    assert layer(x).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("fin, fout, r", [(100, 10, 5), (32, 64, 8)])
def test_lightlinear_parameter_formula(fin, fout, r):
    assert n_params(LightLinear(fin, fout, r, bias=False)) == r * (fin + fout)
    assert n_params(LightLinear(fin, fout, r)) == r * (fin + fout) + fout
    assert n_params(LightLinear(fin, fout, None)) == fin * fout + fout


def test_rank_from_ratio():
    assert rank_from_ratio(1.0, 144, 32) is None
    assert rank_from_ratio(0.5, 144, 32) == 16
    assert rank_from_ratio(0.125, 9, 4) == 1  # never below 1


def test_from_dense_error_falls_with_rank_and_full_rank_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=1, padding=1, bias=True)
    x = torch.randn(4, 8, 10, 10)
    ref = conv(x)
    errors = []
    for r in (1, 2, 4, 8, 16):
        light = LightConv2d.from_dense(conv, r)
        assert n_params(light) == r * (9 * 8 + 16) + 16
        errors.append((light(x) - ref).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    full = LightConv2d.from_dense(conv, min(9 * 8, 16))
    assert torch.allclose(full(x), ref, atol=1e-4)
    dense = LightConv2d.from_dense(conv, None)
    assert torch.allclose(dense(x), ref, atol=1e-6)


def test_from_dense_keeps_stride_and_padding():
    conv = nn.Conv2d(3, 6, 5, stride=2, padding=2, bias=False)
    light = LightConv2d.from_dense(conv, 6)
    x = torch.randn(2, 3, 9, 9)
    assert light(x).shape == conv(x).shape
    assert torch.allclose(light(x), conv(x), atol=1e-4)


def test_lightlinear_from_dense():
    torch.manual_seed(1)
    lin = nn.Linear(20, 12)
    x = torch.randn(5, 20)
    errs = [(LightLinear.from_dense(lin, r)(x) - lin(x)).abs().max().item() for r in (2, 6, 12)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4


def test_from_dense_rejects_grouped_conv():
    with pytest.raises(ValueError, match="ungrouped"):
        LightConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=4), 2)
