"""The cost model's operation list computed from an ``ArchSpec``'s shapes alone.

No model is built and nothing is traced: each block type has a function that lists the
operations its module runs (``search_spaces._build``), in execution order, with the counts the
traced reference (:func:`objectives.cost._cost.trace_layers`) records from the built model. The tests
hold the two equal, row for row, over every registered space, block type, LightLayer rank and
many input shapes; thop agrees with both on conv/linear MACs and params.

Conventions (those of the traced path, see ``objectives.cost._cost``):

* a convolution's MACs are output elements x (input channels / groups) x kernel area, a linear
  layer's output features x input features (thop's convention);
* BatchNorm's two parameters per channel are fused into the preceding operation; activations,
  dropout and flatten are free;
* ``live`` is the operation's input + output + the skip tensor of the enclosing residual block
  when the input is not that tensor (the shortcut runs first, see ``search_spaces._build``).

The functions are split by segment (stem, one block, head) so that the exact minimum of a space
(:mod:`objectives.cost._feasibility`) can cost a stage without building whole specs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from search_spaces import ArchSpec, Block, Stem, rank_from_ratio
from search_spaces import Head as HeadSpec

__all__ = ["Op", "analytic_layers", "block_ops", "head_ops", "stem_ops"]


class Op(NamedTuple):
    """The one record of an operation (batch 1): what it is and its counts in elements, the same on
    every device; and, as a row of a cost report (``CostReport.rows``), its cost on the report's
    device (bytes at the device's data type; None until costed). A named tuple: thousands are made
    per second when a space is assessed."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    in_elems: int
    out_elems: int
    live_elems: int
    weight_bytes: int | None = None
    traffic_bytes: int | None = None
    live_bytes: int | None = None
    latency_ms: float | None = None
    energy_uj: float | None = None


def _out_hw(hw: tuple[int, int], kernel: int, stride: int) -> tuple[int, int]:
    """Spatial size after a convolution padded by ``kernel // 2`` (``search_spaces._build``)."""
    pad = kernel // 2
    return ((hw[0] + 2 * pad - kernel) // stride + 1, (hw[1] + 2 * pad - kernel) // stride + 1)


class _Ops:
    """Collects the operations of one segment; ``held`` is the skip tensor's element count that
    an operation must add to its live set (0 outside residual blocks, or when its input is the
    skip tensor itself)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def conv(self, name: str, cin: int, cout: int, kernel: int, stride: int, hw: tuple[int, int], *,
             rank_ratio: float = 1.0, depthwise: bool = False, held: int = 0, held_after: int | None = None
             ) -> tuple[int, int]:
        """A ``ConvBNAct``: dense, LightConv2d pair (rank) or depthwise, then BN fused into the
        last operation. ``held`` applies to the first operation, ``held_after`` (default
        ``held``) to the second one of a low-rank pair, whose input is the first one's output.
        Returns the output spatial size."""
        ohw = _out_hw(hw, kernel, stride)
        ie, area, oarea = cin * hw[0] * hw[1], kernel * kernel, ohw[0] * ohw[1]
        in_shape = (cin, hw[0], hw[1])
        if depthwise:
            oe = cout * oarea
            self.ops.append(Op(f"{name}.conv", "dwconv" if cin > 1 else "conv", in_shape, (cout, *ohw),
                               oe * area, cout * area + 2 * cout, ie, oe, ie + oe + held))
            return ohw
        rank = rank_from_ratio(rank_ratio, area * cin, cout)
        if rank is None:
            oe = cout * oarea
            self.ops.append(Op(f"{name}.conv.reduce", "conv", in_shape, (cout, *ohw), oe * cin * area,
                               cout * cin * area + 2 * cout, ie, oe, ie + oe + held))
            return ohw
        re, oe = rank * oarea, cout * oarea
        self.ops.append(Op(f"{name}.conv.reduce", "conv", in_shape, (rank, *ohw), re * cin * area,
                           rank * cin * area, ie, re, ie + re + held))
        second = held if held_after is None else held_after
        self.ops.append(Op(f"{name}.conv.expand", "conv", (rank, *ohw), (cout, *ohw), oe * rank,
                           cout * rank + 2 * cout, re, oe, re + oe + second))
        return ohw

    def add(self, name: str, c: int, hw: tuple[int, int]) -> None:
        oe = c * hw[0] * hw[1]
        self.ops.append(Op(f"{name}.add", "add", (c, *hw), (c, *hw), 0, 0, 2 * oe, oe, 2 * oe))

    def linear(self, name: str, fin: int, fout: int, *, bias: bool = True) -> None:
        self.ops.append(Op(name, "linear", (fin,), (fout,), fout * fin, fout * fin + (fout if bias else 0),
                           fin, fout, fin + fout))


def stem_ops(stem: Stem, input_shape: tuple[int, int, int]) -> tuple[list[Op], tuple[int, int]]:
    """Operations of the stem and the spatial size after it."""
    o = _Ops()
    hw = o.conv("stem", input_shape[0], stem.out_channels, stem.kernel, stem.stride,
                (input_shape[1], input_shape[2]))
    return o.ops, hw


def _plain(o: _Ops, p: str, cin: int, b: Block, hw: tuple[int, int]) -> tuple[int, int]:
    return o.conv(f"{p}.conv1", cin, b.out_channels, b.kernel, b.stride, hw, rank_ratio=b.rank_ratio)


def _shortcut(o: _Ops, p: str, cin: int, b: Block, hw: tuple[int, int]) -> int:
    """The shortcut of a basic/bottleneck block (run first); the skip tensor's element count,
    and 0 held by the body's first operation when the skip is the block input itself."""
    if b.stride == 1 and cin == b.out_channels:
        return 0
    ohw = o.conv(f"{p}.shortcut", cin, b.out_channels, 1, b.stride, hw)
    return b.out_channels * ohw[0] * ohw[1]


def _basic(o: _Ops, p: str, cin: int, b: Block, hw: tuple[int, int]) -> tuple[int, int]:
    assert b.mid_channels is not None
    projected = _shortcut(o, p, cin, b, hw)
    skip = projected or cin * hw[0] * hw[1]
    first = projected  # identity skip: conv1 reads the skip tensor itself
    mhw = o.conv(f"{p}.conv1", cin, b.mid_channels, b.kernel, b.stride, hw, rank_ratio=b.rank_ratio,
                 held=first, held_after=skip)
    ohw = o.conv(f"{p}.conv2", b.mid_channels, b.out_channels, b.kernel, 1, mhw, rank_ratio=b.rank_ratio, held=skip)
    o.add(p, b.out_channels, ohw)
    return ohw


def _bottleneck(o: _Ops, p: str, cin: int, b: Block, hw: tuple[int, int]) -> tuple[int, int]:
    assert b.mid_channels is not None and b.mid2_channels is not None
    projected = _shortcut(o, p, cin, b, hw)
    skip = projected or cin * hw[0] * hw[1]
    r = b.rank_ratio
    hw1 = o.conv(f"{p}.conv1", cin, b.mid_channels, 1, 1, hw, rank_ratio=r, held=projected, held_after=skip)
    hw2 = o.conv(f"{p}.conv2", b.mid_channels, b.mid2_channels, b.kernel, b.stride, hw1, rank_ratio=r, held=skip)
    ohw = o.conv(f"{p}.conv3", b.mid2_channels, b.out_channels, 1, 1, hw2, rank_ratio=r, held=skip)
    o.add(p, b.out_channels, ohw)
    return ohw


def _inverted(o: _Ops, p: str, cin: int, b: Block, hw: tuple[int, int]) -> tuple[int, int]:
    assert b.mid_channels is not None
    mid, r = b.mid_channels, b.rank_ratio
    residual = b.is_residual(cin)
    skip = cin * hw[0] * hw[1] if residual else 0
    if mid != cin:
        o.conv(f"{p}.expand", cin, mid, 1, 1, hw, rank_ratio=r, held=0, held_after=skip)
        dw_held = skip
    else:
        dw_held = 0  # nn.Identity hands the block input itself to the depthwise convolution
    ohw = o.conv(f"{p}.dw", mid, mid, b.kernel, b.stride, hw, depthwise=True, held=dw_held)
    o.conv(f"{p}.project", mid, b.out_channels, 1, 1, ohw, rank_ratio=r, held=skip)
    if residual:
        o.add(p, b.out_channels, ohw)
    return ohw


#: Block type -> the function listing its operations (the cost-model twin of
#: ``search_spaces._build._BLOCKS``).
_BLOCK_OPS: dict[str, Callable[[_Ops, str, int, Block, tuple[int, int]], tuple[int, int]]] = {
    "conv": _plain,
    "basic": _basic,
    "bottleneck": _bottleneck,
    "inverted": _inverted,
}


def block_ops(index: int, cin: int, block: Block, hw: tuple[int, int]) -> tuple[list[Op], tuple[int, int]]:
    """Operations of block ``index`` (flat over stages) with input width ``cin`` at spatial
    size ``hw``, and the spatial size after it."""
    o = _Ops()
    ohw = _BLOCK_OPS[block.type](o, f"blocks.{index}", cin, block, hw)
    return o.ops, ohw


def head_ops(head: HeadSpec, cin: int, hw: tuple[int, int], num_classes: int) -> list[Op]:
    """Global average pooling, the optional hidden (Light)Linear, the classifier."""
    o = _Ops()
    ie = cin * hw[0] * hw[1]
    o.ops.append(Op("head.pool", "pool", (cin, *hw), (cin, 1, 1), 0, 0, ie, cin, ie + cin))
    width = cin
    if head.hidden is not None:
        rank = rank_from_ratio(head.rank_ratio, cin, head.hidden)
        if rank is None:
            o.linear("head.hidden.reduce", cin, head.hidden)
        else:
            o.linear("head.hidden.reduce", cin, rank, bias=False)
            o.linear("head.hidden.expand", rank, head.hidden)
        width = head.hidden
    o.linear("head.classifier", width, num_classes)
    return o.ops


@functools.lru_cache(maxsize=16384)
def analytic_layers(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> tuple[Op, ...]:
    """Every operation of ``spec``'s network for one input of ``input_shape``, in execution
    order, computed from shapes alone (equal to the traced reference, row for row)."""
    ops, hw = stem_ops(spec.stem, input_shape)
    cin = spec.stem.out_channels
    for i, b in enumerate(spec.blocks):
        more, hw = block_ops(i, cin, b, hw)
        ops.extend(more)
        cin = b.out_channels
    ops.extend(head_ops(spec.head, cin, hw, num_classes))
    return tuple(ops)
