"""``build_model(spec, input_shape, num_classes)``: an ``ArchSpec`` made into an ``nn.Module``.

Module names are stable and meaningful, because pruning, fusion and the cost model address
layers by them: ``stem``, ``blocks.<i>`` (flat index over all stages), inside a block
``conv1``/``conv2``/``conv3`` (``expand``/``dw``/``project`` for inverted residuals) and
``shortcut``, then ``head.hidden`` and ``head.classifier``. Every convolution is a
``ConvBNAct`` whose ``.conv`` is a ``LightConv2d`` (dense when the rank is ``None``) or a
depthwise ``nn.Conv2d``.

Residual blocks compute their shortcut *before* the body. The result is the same; the order
is the one whose peak memory the cost model reports (only the skip tensor is held).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._layers import LightConv2d, LightLinear, rank_from_ratio
from ._spec import ArchSpec, Block, SpecError

__all__ = ["ConvBNAct", "LightNet", "build_block", "build_model", "check_input_shape"]


def _act(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    return nn.ReLU() if name == "relu" else nn.ReLU6()


class ConvBNAct(nn.Module):
    """Convolution (dense, low-rank or depthwise) + BatchNorm + optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *,
                 rank_ratio: float = 1.0, depthwise: bool = False, act: str | None = "relu") -> None:
        super().__init__()
        if depthwise:
            if cin != cout:
                raise SpecError(f"depthwise convolution needs equal widths, got {cin} -> {cout}")
            self.conv: nn.Module = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=cin,
                                             bias=False)
        else:
            rank = rank_from_ratio(rank_ratio, kernel * kernel * cin, cout)
            self.conv = LightConv2d(cin, cout, kernel, stride, rank=rank)
        self.bn = nn.BatchNorm2d(cout)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Residual(nn.Module):
    """Base of blocks with a skip connection: ``out = act(body(x) + shortcut(x))``."""

    residual = True

    def __init__(self, shortcut: nn.Module, final_act: str | None) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.final_act = _act(final_act)

    def body(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x)
        return self.final_act(self.body(x) + skip)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return ConvBNAct(cin, cout, 1, stride, act=None)


class BasicBlock(_Residual):
    def __init__(self, cin: int, b: Block, act: str) -> None:
        super().__init__(_shortcut(cin, b.out_channels, b.stride), act)
        assert b.mid_channels is not None
        self.conv1 = ConvBNAct(cin, b.mid_channels, b.kernel, b.stride, rank_ratio=b.rank_ratio, act=act)
        self.conv2 = ConvBNAct(b.mid_channels, b.out_channels, b.kernel, 1, rank_ratio=b.rank_ratio,
                               act=None)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class BottleneckBlock(_Residual):
    def __init__(self, cin: int, b: Block, act: str) -> None:
        super().__init__(_shortcut(cin, b.out_channels, b.stride), act)
        assert b.mid_channels is not None and b.mid2_channels is not None
        r = b.rank_ratio
        self.conv1 = ConvBNAct(cin, b.mid_channels, 1, 1, rank_ratio=r, act=act)
        self.conv2 = ConvBNAct(b.mid_channels, b.mid2_channels, b.kernel, b.stride, rank_ratio=r, act=act)
        self.conv3 = ConvBNAct(b.mid2_channels, b.out_channels, 1, 1, rank_ratio=r, act=None)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; residual only when stride is 1 and widths match."""

    def __init__(self, cin: int, b: Block, act: str) -> None:
        super().__init__()
        assert b.mid_channels is not None
        mid, r = b.mid_channels, b.rank_ratio
        self.residual = b.is_residual(cin)
        self.expand = ConvBNAct(cin, mid, 1, 1, rank_ratio=r, act=act) if mid != cin else nn.Identity()
        self.dw = ConvBNAct(mid, mid, b.kernel, b.stride, depthwise=True, act=act)
        self.project = ConvBNAct(mid, b.out_channels, 1, 1, rank_ratio=r, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class PlainBlock(nn.Module):
    residual = False

    def __init__(self, cin: int, b: Block, act: str) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, b.out_channels, b.kernel, b.stride, rank_ratio=b.rank_ratio, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)


_BLOCKS: dict[str, type[nn.Module]] = {
    "conv": PlainBlock,
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "inverted": InvertedResidual,
}


def build_block(cin: int, block: Block, act: str = "relu") -> nn.Module:
    """Build one block given its input width."""
    return _BLOCKS[block.type](cin, block, act)


class Head(nn.Module):
    def __init__(self, cin: int, spec: ArchSpec, num_classes: int) -> None:
        super().__init__()
        h = spec.head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        width = cin
        if h.hidden is not None:
            self.hidden: nn.Module = LightLinear(cin, h.hidden, rank_from_ratio(h.rank_ratio, cin, h.hidden))
            self.hidden_act = _act(spec.act)
            width = h.hidden
        else:
            self.hidden = nn.Identity()
            self.hidden_act = nn.Identity()
        self.dropout = nn.Dropout(h.dropout) if h.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_act(self.hidden(self.flatten(self.pool(x))))
        return self.classifier(self.dropout(x))


class LightNet(nn.Module):
    """The network of an ``ArchSpec``; ``model.spec`` is the spec it was built from."""

    def __init__(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        s = spec.stem
        self.stem = ConvBNAct(input_shape[0], s.out_channels, s.kernel, s.stride, act=spec.act)
        blocks = []
        cin = s.out_channels
        for b in spec.blocks:
            blocks.append(build_block(cin, b, spec.act))
            cin = b.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(cin, spec, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate ``(C, H, W)``; raises :class:`SpecError` naming what is accepted."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise SpecError(f"input_shape: expected three positive integers (C, H, W), got {input_shape!r}")
    return shape  # type: ignore[return-value]


def build_model(spec: ArchSpec, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> LightNet:
    """Build the ``nn.Module`` of ``spec`` for inputs of ``input_shape`` = (C, H, W).

    Every spatial size is valid (strided convolutions keep at least 1x1). Parameters are
    initialised like torchvision's ResNet (Kaiming normal, BN weight 1, bias 0).

    Raises:
        SpecError: if ``input_shape`` or ``num_classes`` is invalid.

    Example:
        >>> from search_spaces import Block, Stage, Stem
        >>> spec = ArchSpec(Stem(8), (Stage((Block("basic", 8, 8),)),))
        >>> build_model(spec, (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    shape = check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    model = LightNet(spec, shape, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
