"""LightLayers (Jha et al., PDCAT 2020; docs/methods.md section 4): low-rank dense and conv layers.

A ``k x k`` convolution ``in -> out`` has the reshaped weight ``(k*k*in) x out``. LightConv2d
factorises it as ``(k*k*in) x r`` times ``r x out``: a ``k x k`` convolution to ``r`` channels
followed by a linear ``1 x 1`` convolution to ``out`` channels, with no activation between.
Parameters drop from ``k*k*in*out`` to ``r*(k*k*in + out)`` (+ ``out`` bias).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LightConv2d", "LightLinear", "rank_from_ratio"]


def rank_from_ratio(ratio: float, fan_in: int, fan_out: int) -> int | None:
    """Rank for a ratio of the full rank ``min(fan_in, fan_out)``; ``None`` means dense.

    ``fan_in`` is ``k*k*in`` for a convolution. The rank is at least 1.

    >>> rank_from_ratio(0.5, 9 * 16, 32), rank_from_ratio(1.0, 9 * 16, 32)
    (16, None)
    """
    if ratio >= 1.0:
        return None
    return max(1, int(round(ratio * min(fan_in, fan_out))))


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 2-D weight ``out x fan_in`` into ``out x rank`` and ``rank x fan_in`` factors.

    Truncated SVD with the singular values shared as square roots; ranks above the full rank
    are padded with zeros so the product is still the best approximation (Eckart-Young).
    """
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    red = torch.zeros(rank, w.shape[1], dtype=torch.float64, device=w.device)
    exp = torch.zeros(w.shape[0], rank, dtype=torch.float64, device=w.device)
    red[:r] = root[:, None] * vh[:r]
    exp[:, :r] = u[:, :r] * root[None, :]
    return exp, red


class LightConv2d(nn.Module):
    """A ``k x k`` convolution of rank ``rank`` (``None``: the ordinary dense convolution).

    Args:
        in_channels, out_channels, kernel_size, stride: as ``nn.Conv2d``.
        rank: inner width ``r``; ``None`` builds a single dense ``nn.Conv2d``.
        padding: defaults to ``kernel_size // 2`` ("same" for odd kernels at stride 1).
        bias: bias on the last convolution.

    Example:
        >>> layer = LightConv2d(16, 32, 3, rank=4)
        >>> sum(p.numel() for p in layer.parameters()) == 4 * (3 * 3 * 16 + 32)
        True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 rank: int | None = None, padding: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or None, got {rank}")
        pad = kernel_size // 2 if padding is None else padding
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.rank = kernel_size, stride, rank
        if rank is None:
            self.reduce = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=bias)
            self.expand: nn.Module = nn.Identity()
        else:
            self.reduce = nn.Conv2d(in_channels, rank, kernel_size, stride, pad, bias=False)
            self.expand = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int | None) -> LightConv2d:
        """Factorise a trained ``nn.Conv2d`` by truncated SVD of its reshaped weight.

        At full rank (``rank >= min(k*k*in, out)``) the output equals ``conv``'s within float
        tolerance; the reconstruction error falls as ``rank`` grows (Eckart-Young).

        Raises:
            ValueError: for grouped or dilated convolutions, or non-square kernels/strides.
        """
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("from_dense supports ungrouped, undilated convolutions only")
        kh, kw = conv.kernel_size
        if kh != kw or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise ValueError("from_dense supports square kernels, strides and paddings only")
        if not isinstance(conv.padding[0], int):
            raise ValueError("from_dense needs an integer padding")
        out_c, in_c = conv.out_channels, conv.in_channels
        layer = cls(in_c, out_c, kh, conv.stride[0], rank=rank, padding=conv.padding[0],
                    bias=conv.bias is not None)
        layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            if rank is None:
                layer.reduce.weight.copy_(conv.weight)
                if conv.bias is not None:
                    layer.reduce.bias.copy_(conv.bias)  # type: ignore[union-attr]
                return layer
            exp, red = _svd_factors(conv.weight.reshape(out_c, in_c * kh * kw), rank)
            layer.reduce.weight.copy_(red.reshape(rank, in_c, kh, kw))
            assert isinstance(layer.expand, nn.Conv2d)
            layer.expand.weight.copy_(exp.reshape(out_c, rank, 1, 1))
            if conv.bias is not None:
                layer.expand.bias.copy_(conv.bias)  # type: ignore[union-attr]
        return layer


class LightLinear(nn.Module):
    """A linear layer of rank ``rank``: ``in -> rank -> out`` with no activation between.

    ``rank=None`` is the ordinary ``nn.Linear``. Parameters: ``rank*(in + out)`` (+ ``out`` bias).
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or None, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        if rank is None:
            self.reduce = nn.Linear(in_features, out_features, bias=bias)
            self.expand: nn.Module = nn.Identity()
        else:
            self.reduce = nn.Linear(in_features, rank, bias=False)
            self.expand = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int | None) -> LightLinear:
        """Factorise a trained ``nn.Linear`` by truncated SVD (see ``LightConv2d.from_dense``)."""
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        layer = layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            if rank is None:
                layer.reduce.weight.copy_(linear.weight)
                if linear.bias is not None:
                    layer.reduce.bias.copy_(linear.bias)
                return layer
            exp, red = _svd_factors(linear.weight, rank)
            layer.reduce.weight.copy_(red)
            assert isinstance(layer.expand, nn.Linear)
            layer.expand.weight.copy_(exp)
            if linear.bias is not None:
                layer.expand.bias.copy_(linear.bias)
        return layer
