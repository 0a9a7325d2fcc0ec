"""The block registry: what each block type of an ``ArchSpec`` is, in one place.

As timm keys its block builders by type (``_block_registry`` in ``timm/models/byobnet.py``), a
:class:`BlockKind` says everything about a block type that is read off the spec: which widths
it has, the units it runs and which width each reads and writes, whether it adds a skip
connection, and how many weight layers it puts on the main path. Validation, the builder, the
analytic cost model and model surgery read it instead of branching on type names; the builder's
modules (``search_spaces._build``) and the cost model's operation lists (``objectives.cost._analytic``)
are keyed by the same names, and a test holds the three together.

Widths are named symbolically: ``in`` (the block's input width), ``mid``, ``mid2`` (its inner
widths, the spec's ``mid_channels`` and ``mid2_channels``) and ``out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._spec import Block

__all__ = ["WIDTH_FIELDS", "BlockKind", "Unit", "block_kind", "list_blocks", "register_block"]

#: Symbolic inner width -> the ``Block`` field that holds it.
WIDTH_FIELDS = {"mid": "mid_channels", "mid2": "mid2_channels"}


@dataclass(frozen=True)
class Unit:
    """One convolution unit of a block (a ``ConvBNAct`` of the built model).

    Attributes:
        name: its module name inside the block (``conv1``, ``dw``, ...).
        reads: the width it reads (``in``, ``mid``, ``mid2``).
        writes: the width it writes (``mid``, ``mid2``, ``out``).
        act: whether an activation follows it (its output channels can then be all zero).
        only_if_expanded: present only when the block's ``mid`` differs from ``in`` (the
            inverted block's expand convolution, which the builder leaves out otherwise).
    """

    name: str
    reads: str
    writes: str
    act: bool = True
    only_if_expanded: bool = False


@dataclass(frozen=True)
class BlockKind:
    """A block type.

    Attributes:
        name: the ``Block.type`` it is registered under.
        widths: its inner widths (``mid``, ``mid2``: the spec fields of :data:`WIDTH_FIELDS` it
            needs; the others must be null).
        units: its convolution units in execution order (a shortcut projection is not listed:
            it reads ``in`` and writes ``out``, widths surgery never cuts).
        residual: whether it adds a skip connection, given the block and its input width.
        summary: one line for documentation and error messages.
        chains: no skip path ever touches its input or output (a plain convolution): its
            ``in`` and ``out`` are widths a neighbour of the same kind may share with it.
    """

    name: str
    widths: tuple[str, ...]
    units: tuple[Unit, ...]
    residual: Callable[[Block, int], bool]
    summary: str
    chains: bool = False

    def depth(self) -> int:
        """Weight layers it always puts on the main path (an inverted block's optional expand
        convolution is not counted, as the spec's ``depth`` has always done)."""
        return sum(not u.only_if_expanded for u in self.units)

    def inner(self, block: Block) -> tuple[int, ...]:
        """The block's inner widths (``mid``, ``mid2``), in order; empty when it has none."""
        return tuple(int(getattr(block, WIDTH_FIELDS[w])) for w in self.widths)

    def expands(self) -> bool:
        """Whether a unit exists only when ``mid`` differs from ``in`` (then ``mid`` may not
        become ``in``: the builder would drop that unit and build another network)."""
        return any(u.only_if_expanded for u in self.units)

    def active_units(self, block: Block, in_channels: int) -> tuple[Unit, ...]:
        """The units the built block has for this input width."""
        return tuple(u for u in self.units if not (u.only_if_expanded and block.mid_channels == in_channels))


_REGISTRY: dict[str, BlockKind] = {}


def register_block(kind: BlockKind) -> BlockKind:
    """Register a block type (the builder and the cost model must know its name too)."""
    if kind.name in _REGISTRY:
        raise ValueError(f"block type {kind.name!r} is registered already")
    _REGISTRY[kind.name] = kind
    return kind


def list_blocks() -> tuple[str, ...]:
    """The registered block types, in registration order."""
    return tuple(_REGISTRY)


def block_kind(name: str) -> BlockKind:
    """The registered block type ``name``; ``KeyError`` naming the accepted ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"got {name!r}, accepted: {', '.join(_REGISTRY)}") from None


register_block(BlockKind(
    "conv", (), (Unit("conv1", "in", "out"),), lambda b, cin: False,
    "one k x k convolution + BN + activation (the plain space, VGG-like)", chains=True))
register_block(BlockKind(
    "basic", ("mid",), (Unit("conv1", "in", "mid"), Unit("conv2", "mid", "out", act=False)),
    lambda b, cin: True,
    "ResNet basic block: two k x k convolutions and a skip (He et al., CVPR 2016)"))
register_block(BlockKind(
    "bottleneck", ("mid", "mid2"),
    (Unit("conv1", "in", "mid"), Unit("conv2", "mid", "mid2"), Unit("conv3", "mid2", "out", act=False)),
    lambda b, cin: True,
    "ResNet bottleneck: 1x1 reduce, k x k, 1x1 expand, and a skip (He et al., CVPR 2016)"))
register_block(BlockKind(
    "inverted", ("mid",),
    (Unit("expand", "in", "mid", only_if_expanded=True), Unit("dw", "mid", "mid"),
     Unit("project", "mid", "out", act=False)),
    lambda b, cin: b.stride == 1 and cin == b.out_channels,
    "MobileNetV2 inverted residual: 1x1 expand, k x k depthwise, 1x1 project; a skip when the shapes "
    "match (Sandler et al., CVPR 2018)"))
