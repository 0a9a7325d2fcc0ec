"""A weight-shared supernet: one network that contains every architecture of a search space.

Once-for-all (Cai et al., ICLR 2020) and BigNAS (Yu et al., ECCV 2020) train one network whose
subnets are the candidates of a search; a subnet is an :class:`ArchSpec` whose weights are exact
slices of the supernet's. Here a :class:`SuperNet` is made from a space (its options, input shape
and class count) by walking every choice the space offers, stage by stage, and keeping, at every
block position, the largest shape each unit of each block type ever takes there:

- **depth**: a stage of ``k`` blocks runs the first ``k`` block positions of that stage;
- **widths**: leading channel slices (input, inner and output widths, the stem, the hidden layer);
- **kernels**: centre crops of the largest kernel (OFA's elastic kernel). OFA's kernel transform
  matrices (a learned ``k^2 x k^2`` map per layer and kernel step, applied to the crop) are an
  option, ``kernel_transform``, off by default: see :class:`SuperNet` for why;
- **LightLayer ranks**: a layer that is low-rank in some subnets holds one factor pair of the
  largest rank, and a rank ``r`` uses its leading ``r`` components (the reduce convolution's first
  ``r`` filters and the expand convolution's first ``r`` input channels); a layer that is dense
  in some subnets (rank ratio 1) holds a dense weight of its own besides;
- **block types**: where a space offers several kinds at a position (``resnet``: basic or
  bottleneck), each kind has its own weights there;
- **BatchNorm**: one BN per unit, of the largest width; a subnet uses the leading slices of its
  affine parameters and running statistics. While the supernet trains, BN normalises each subnet
  with the batch statistics of its own sliced channels; the running statistics it accumulates
  are a blend of every subnet and are not meant to be used: a subnet is evaluated after
  recalibrating them (``objectives.recalibrate_bn``).

A subnet runs inside the supernet (:meth:`SuperNet.set_active`, then ``forward``) or on its own:
:meth:`SuperNet.extract` builds the spec with :func:`build_model` and loads the sliced weights,
so both compute the same function (a test holds their outputs equal).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._build import LightNet, build_model, check_input_shape
from ._layers import rank_from_ratio
from ._registry import SearchSpace, SpaceError, enumerate_choices, space_class
from ._spec import ArchSpec, Block, SpecError

__all__ = ["SuperNet"]

#: Block types a supernet can hold (those the builder knows how to slice).
_KINDS = ("conv", "basic", "bottleneck", "inverted")
#: Width symbols of a unit (``search_spaces._blocks.Unit``) -> what a message calls them.
_FIELD = {"in": "input width", "mid": "mid_channels", "mid2": "mid2_channels", "out": "out_channels"}


# ----------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Unit:
    """One convolution of a subnet: what the builder makes of it (a ``ConvBNAct``)."""

    name: str
    cin: int
    cout: int
    kernel: int
    stride: int
    rank: int | None  # None: dense (or depthwise)
    depthwise: bool
    act: bool
    reads: str = "in"
    writes: str = "out"


@dataclass(frozen=True)
class _BlockPlan:
    type: str
    units: tuple[_Unit, ...]
    shortcut: _Unit | None  # a projection (basic/bottleneck when shapes change)
    residual: bool
    final_act: bool


@dataclass(frozen=True)
class _HeadPlan:
    cin: int
    hidden: int | None
    rank: int | None
    dropout: float


@dataclass(frozen=True)
class _Plan:
    stem: _Unit
    stages: tuple[tuple[_BlockPlan, ...], ...]
    head: _HeadPlan


def _conv(name: str, cin: int, cout: int, k: int, stride: int, ratio: float, act: bool, reads: str,
          writes: str) -> _Unit:
    return _Unit(name, cin, cout, k, stride, rank_from_ratio(ratio, k * k * cin, cout), False, act, reads, writes)


def _block_plan(cin: int, b: Block) -> _BlockPlan:
    """The units the builder (``search_spaces._build``) makes of block ``b`` entering at width ``cin``."""
    r, k, s = b.rank_ratio, b.kernel, b.stride
    units: tuple[_Unit, ...]
    if b.type == "conv":
        return _BlockPlan("conv", (_conv("conv1", cin, b.out_channels, k, s, r, True, "in", "out"),), None,
                          False, False)
    if b.type in ("basic", "bottleneck"):
        mid = int(b.mid_channels)  # type: ignore[arg-type]
        if b.type == "basic":
            units = (_conv("conv1", cin, mid, k, s, r, True, "in", "mid"),
                     _conv("conv2", mid, b.out_channels, k, 1, r, False, "mid", "out"))
        else:
            mid2 = int(b.mid2_channels)  # type: ignore[arg-type]
            units = (_conv("conv1", cin, mid, 1, 1, r, True, "in", "mid"),
                     _conv("conv2", mid, mid2, k, s, r, True, "mid", "mid2"),
                     _conv("conv3", mid2, b.out_channels, 1, 1, r, False, "mid2", "out"))
        shortcut = None if s == 1 and cin == b.out_channels else \
            _Unit("shortcut", cin, b.out_channels, 1, s, None, False, False)
        return _BlockPlan(b.type, units, shortcut, True, True)
    if b.type == "inverted":
        mid = int(b.mid_channels)  # type: ignore[arg-type]
        units = ((_conv("expand", cin, mid, 1, 1, r, True, "in", "mid"),) if mid != cin else ()) + (
            _Unit("dw", mid, mid, k, s, None, True, True, "mid", "mid"),
            _conv("project", mid, b.out_channels, 1, 1, r, False, "mid", "out"))
        return _BlockPlan("inverted", units, None, b.is_residual(cin), False)
    raise SpecError(f"block type {b.type!r}: a supernet holds {', '.join(map(repr, _KINDS))} blocks only")


def _head_plan(cin: int, spec: ArchSpec) -> _HeadPlan:
    h = spec.head
    rank = rank_from_ratio(h.rank_ratio, cin, h.hidden) if h.hidden is not None else None
    return _HeadPlan(cin, h.hidden, rank, h.dropout)


def _plan(spec: ArchSpec, in_channels: int) -> _Plan:
    s = spec.stem
    stem = _Unit("stem", in_channels, s.out_channels, s.kernel, s.stride, None, False, True, "in", "out")
    cin, stages = s.out_channels, []
    for stage in spec.stages:
        blocks = []
        for b in stage.blocks:
            blocks.append(_block_plan(cin, b))
            cin = b.out_channels
        stages.append(tuple(blocks))
    return _Plan(stem, tuple(stages), _head_plan(cin, spec))


# ----------------------------------------------------------------------------------- capacities


@dataclass
class _Cap:
    """The largest shape one unit takes over a space, and which forms it needs."""

    cin: int = 0
    cout: int = 0
    kernels: set[int] = field(default_factory=set)
    strides: set[int] = field(default_factory=set)
    dense: bool = False
    rank: int = 0
    depthwise: bool = False

    def add(self, u: _Unit) -> None:
        self.cin, self.cout = max(self.cin, u.cin), max(self.cout, u.cout)
        self.kernels.add(u.kernel)
        self.strides.add(u.stride)
        self.depthwise = u.depthwise
        if u.rank is None:
            self.dense = True
        else:
            self.rank = max(self.rank, u.rank)


@dataclass
class _HeadCap:
    direct: int = 0  # widest input of a head without a hidden layer (0: no such head)
    cin: int = 0  # widest input of the hidden layer
    hidden: int = 0
    dense: bool = False
    rank: int = 0

    def add(self, p: _HeadPlan) -> None:
        if p.hidden is None:
            self.direct = max(self.direct, p.cin)
            return
        self.cin, self.hidden = max(self.cin, p.cin), max(self.hidden, p.hidden)
        if p.rank is None:
            self.dense = True
        else:
            self.rank = max(self.rank, p.rank)


def _key(g: dict[str, Any]) -> tuple:
    return tuple(sorted(g.items()))


def _explore(space: SearchSpace) -> tuple[_Cap, list[list[dict[str, dict[str, _Cap]]]], _HeadCap]:
    """Walk every choice of ``space`` stage by stage (the widths entering a stage are few) and keep
    the largest shape of every unit of every block type at every position."""
    c_in = space.input_shape[0]
    stem = _Cap()
    states: dict[tuple, tuple[dict[str, Any], int]] = {}
    for _, g in enumerate_choices(space.suggest_globals):
        s = space.stem(g)
        stem.add(_Unit("stem", c_in, s.out_channels, s.kernel, s.stride, None, False, True))
        states[(_key(g), s.out_channels)] = (g, s.out_channels)
    stages: list[list[dict[str, dict[str, _Cap]]]] = []
    for i in range(len(space.stage_strides)):
        positions: list[dict[str, dict[str, _Cap]]] = []
        seen: set[tuple[int, int, Block]] = set()
        nxt: dict[tuple, tuple[dict[str, Any], int]] = {}
        for g, cin in states.values():
            def stage_of(t: Any, i: int = i, g: dict[str, Any] = g, cin: int = cin) -> Any:
                return space.suggest_stage(t, i, g, cin)

            for _, stage in enumerate_choices(stage_of):
                c = cin
                for j, b in enumerate(stage.blocks):
                    if (j, c, b) not in seen:
                        seen.add((j, c, b))
                        while len(positions) <= j:
                            positions.append({})
                        plan = _block_plan(c, b)
                        caps = positions[j].setdefault(b.type, {})
                        for u in plan.units + ((plan.shortcut,) if plan.shortcut else ()):
                            caps.setdefault(u.name, _Cap()).add(u)
                    c = b.out_channels
                nxt[(_key(g), c)] = (g, c)
        stages.append(positions)
        states = nxt
    head = _HeadCap()
    for g, cin in states.values():
        def head_of(t: Any, g: dict[str, Any] = g, cin: int = cin) -> Any:
            return space.suggest_head(t, g, cin)

        for _, h in enumerate_choices(head_of):
            rank = rank_from_ratio(h.rank_ratio, cin, h.hidden) if h.hidden is not None else None
            head.add(_HeadPlan(cin, h.hidden, rank, h.dropout))
    return stem, stages, head


# --------------------------------------------------------------------------------------- modules


def _kaiming_conv(shape: Sequence[int]) -> nn.Parameter:
    w = torch.empty(*shape)
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    return nn.Parameter(w)


def _linear(out_f: int, in_f: int, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    layer = nn.Linear(in_f, out_f, bias=bias)  # torch's default initialisation, as the builder's
    return layer.weight, layer.bias


def _t(x: torch.Tensor | None) -> torch.Tensor:
    """``x``, known to be there (a weight or BN buffer the plan uses)."""
    assert x is not None
    return x


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x) if name == "relu" else F.relu6(x)


class _SuperConv(nn.Module):
    """One unit of the supernet: a dense weight, a low-rank factor pair and/or a depthwise weight
    of the largest shape, the unit's BN, and (optionally) OFA's kernel transform matrices."""

    def __init__(self, cap: _Cap, kernel_transform: bool) -> None:
        super().__init__()
        self.kmax = max(cap.kernels)
        self.kernels = tuple(sorted(cap.kernels, reverse=True))
        self.stride = next(iter(cap.strides))
        self.cin, self.cout, self.rank_max = cap.cin, cap.cout, cap.rank
        self.has_dense, self.depthwise = cap.dense, cap.depthwise
        k = self.kmax
        if cap.depthwise:
            self.weight = _kaiming_conv((cap.cout, 1, k, k))
        elif cap.dense:
            self.weight = _kaiming_conv((cap.cout, cap.cin, k, k))
        else:
            self.register_parameter("weight", None)
        if cap.rank:
            self.reduce = _kaiming_conv((cap.rank, cap.cin, k, k))
            self.expand = _kaiming_conv((cap.cout, cap.rank, 1, 1))
        else:
            self.register_parameter("reduce", None)
            self.register_parameter("expand", None)
        self.bn = nn.BatchNorm2d(cap.cout)
        # OFA: a k^2 x k^2 matrix per step from one kernel to the next smaller, per kernel-bearing weight
        self.transforms = nn.ParameterDict()
        if kernel_transform and len(self.kernels) > 1:
            for which in ("weight", "reduce"):
                if getattr(self, which) is None:
                    continue
                for big, small in zip(self.kernels, self.kernels[1:], strict=False):
                    self.transforms[f"{which}_{big}to{small}"] = nn.Parameter(torch.eye(small * small))

    def kernel(self, w: torch.Tensor, k: int, which: str) -> torch.Tensor:
        """The ``k x k`` kernel of weight ``w`` (channels already sliced): its centre crop, through
        the transform matrices when the supernet has them."""
        if k == self.kmax:
            return w
        if not self.transforms:
            off = (self.kmax - k) // 2
            return w[..., off:off + k, off:off + k]
        for big, small in zip(self.kernels, self.kernels[1:], strict=False):
            off = (big - small) // 2
            w = w[..., off:off + small, off:off + small]
            m = self.transforms[f"{which}_{big}to{small}"]
            w = F.linear(w.reshape(*w.shape[:-2], small * small), m).reshape(*w.shape[:-2], small, small)
            if small == k:
                return w
        raise AssertionError(f"kernel {k} not in {self.kernels}")  # checked before

    def weights(self, u: _Unit) -> dict[str, torch.Tensor]:
        """The unit's sliced weights under the builder's names (relative to its ``conv``)."""
        if u.depthwise:
            return {"weight": self.kernel(self.weight[:u.cout], u.kernel, "weight")}
        if u.rank is None:
            return {"reduce.weight": self.kernel(self.weight[:u.cout, :u.cin], u.kernel, "weight")}
        return {"reduce.weight": self.kernel(self.reduce[:u.rank, :u.cin], u.kernel, "reduce"),
                "expand.weight": self.expand[:u.cout, :u.rank]}

    def bn_state(self, c: int) -> dict[str, torch.Tensor]:
        bn = self.bn
        return {"weight": bn.weight[:c], "bias": bn.bias[:c], "running_mean": _t(bn.running_mean)[:c],
                "running_var": _t(bn.running_var)[:c], "num_batches_tracked": _t(bn.num_batches_tracked)}

    def forward(self, x: torch.Tensor, u: _Unit, act: str) -> torch.Tensor:
        w = self.weights(u)
        pad = u.kernel // 2
        if u.depthwise:
            y = F.conv2d(x, w["weight"], None, u.stride, pad, 1, u.cout)
        else:
            y = F.conv2d(x, w["reduce.weight"], None, u.stride, pad)
            if u.rank is not None:
                y = F.conv2d(y, w["expand.weight"])
        bn, c = self.bn, u.cout
        momentum = 0.0
        if bn.training and bn.track_running_stats:
            tracked = _t(bn.num_batches_tracked)
            tracked.add_(1)
            momentum = 1.0 / float(tracked) if bn.momentum is None else bn.momentum
        y = F.batch_norm(y, _t(bn.running_mean)[:c], _t(bn.running_var)[:c], bn.weight[:c], bn.bias[:c],
                         bn.training or not bn.track_running_stats, momentum, bn.eps)
        return _act(act, y) if u.act else y


class _SuperBlock(nn.Module):
    """One block type at one position: its units (and shortcut projection) of the largest shapes."""

    def __init__(self, caps: dict[str, _Cap], kernel_transform: bool) -> None:
        super().__init__()
        self.convs = {name: _SuperConv(cap, kernel_transform) for name, cap in caps.items()}  # typed view
        self.units = nn.ModuleDict(self.convs)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, p: _BlockPlan, act: str) -> torch.Tensor:
        skip = None
        if p.residual:
            skip = self.convs["shortcut"](x, p.shortcut, act) if p.shortcut is not None else x
        y = x
        for u in p.units:
            y = self.convs[u.name](y, u, act)
        if skip is not None:
            y = y + skip if p.final_act else skip + y
        return _act(act, y) if p.final_act else y


class _SuperHead(nn.Module):
    """Pool, optional hidden linear (dense and/or low-rank, one bias), classifier(s)."""

    def __init__(self, cap: _HeadCap, num_classes: int) -> None:
        super().__init__()
        self.cap = cap
        self.direct_weight: torch.Tensor | None = None
        self.direct_bias: torch.Tensor | None = None
        self.hidden_weight: torch.Tensor | None = None
        self.hidden_reduce: torch.Tensor | None = None
        self.hidden_expand: torch.Tensor | None = None
        self.hidden_bias: torch.Tensor | None = None
        self.classifier_weight: torch.Tensor | None = None
        self.classifier_bias: torch.Tensor | None = None
        if cap.direct:
            self.direct_weight, self.direct_bias = _linear(num_classes, cap.direct)
        if cap.hidden:
            self.hidden_weight = _linear(cap.hidden, cap.cin)[0] if cap.dense else None
            if cap.rank:
                self.hidden_reduce = _linear(cap.rank, cap.cin, bias=False)[0]
                self.hidden_expand = _linear(cap.hidden, cap.rank, bias=False)[0]
            self.hidden_bias = _linear(cap.hidden, cap.cin)[1]
            self.classifier_weight, self.classifier_bias = _linear(num_classes, cap.hidden)

    def weights(self, p: _HeadPlan) -> dict[str, torch.Tensor]:
        """The head's sliced weights under the builder's names (relative to ``head``)."""
        if p.hidden is None:
            return {"classifier.weight": _t(self.direct_weight)[:, :p.cin], "classifier.bias": _t(self.direct_bias)}
        h, bias = p.hidden, _t(self.hidden_bias)
        if p.rank is None:
            out = {"hidden.reduce.weight": _t(self.hidden_weight)[:h, :p.cin], "hidden.reduce.bias": bias[:h]}
        else:
            out = {"hidden.reduce.weight": _t(self.hidden_reduce)[:p.rank, :p.cin],
                   "hidden.expand.weight": _t(self.hidden_expand)[:h, :p.rank], "hidden.expand.bias": bias[:h]}
        out.update({"classifier.weight": _t(self.classifier_weight)[:, :h],
                    "classifier.bias": _t(self.classifier_bias)})
        return out

    def forward(self, x: torch.Tensor, p: _HeadPlan, act: str) -> torch.Tensor:
        w = self.weights(p)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if p.hidden is not None:
            if p.rank is None:
                x = F.linear(x, w["hidden.reduce.weight"], w["hidden.reduce.bias"])
            else:
                x = F.linear(F.linear(x, w["hidden.reduce.weight"]), w["hidden.expand.weight"],
                             w["hidden.expand.bias"])
            x = _act(act, x)
        if p.dropout > 0:
            x = F.dropout(x, p.dropout, self.training)
        return F.linear(x, w["classifier.weight"], w["classifier.bias"])


# -------------------------------------------------------------------------------------- supernet


class _Extreme:
    """A define-by-run trial taking the largest (or smallest) value of every numeric choice and
    leaving the others (block types) to ``inner``."""

    def __init__(self, inner: Any, largest: bool) -> None:
        self.inner, self.largest = inner, largest

    def suggest_int(self, name: str, low: int, high: int, **_kw: Any) -> int:
        return high if self.largest else low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
            return max(choices) if self.largest else min(choices)
        return self.inner.suggest_categorical(name, choices)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


class SuperNet(nn.Module):
    """A weight-shared network containing every architecture of a search space.

    Build it with :meth:`from_space`. :meth:`set_active` picks the subnet ``forward`` runs (the
    largest at first); :meth:`extract` makes a subnet a stand-alone :class:`LightNet` with exactly
    the sliced weights. A spec belongs to the supernet when it is a network of the supernet's
    space whose every block, width, kernel, stride and rank fits the weights held at its position
    (:meth:`check` says what does not); per-block widths below the largest (a pruned network)
    fit too.

    Kernel transforms (``kernel_transform``): OFA learns, per layer, a ``25 x 25`` and a ``9 x 9``
    matrix mapping the centre of a 7x7 kernel to a 5x5 one and of that to a 3x3, so that a small
    kernel need not equal the centre of the large one. They cost ``k^4`` parameters per layer and a
    matrix product per kernel-bearing weight per step, need progressive shrinking in OFA's recipe,
    and the spaces here offer two kernels (3 and 5) at most per layer. Off by default; the benchmark
    (``bench/bench_supernet.py --kernel-transform``) measures both.

    Example:
        >>> from search_spaces import get_space
        >>> net = SuperNet.from_space(get_space("plain", max_depth=2), (1, 8, 8), 10)
        >>> spec = net.smallest()
        >>> net.set_active(spec)
        >>> model = net.extract(spec)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> bool(torch.allclose(net.eval()(x), model.eval()(x)))
        True
    """

    def __init__(self, space: SearchSpace, num_classes: int = 10, *, kernel_transform: bool = False) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise SpecError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
        self.space, self.num_classes = space, num_classes
        self.input_shape = tuple(space.input_shape)
        self.act = space.act
        self.kernel_transform = bool(kernel_transform)
        stem, stages, head = _explore(space)
        bad = sorted({t for positions in stages for pos in positions for t in pos if t not in _KINDS})
        if bad:
            raise SpaceError(f"space '{space.name}' offers block type(s) {bad} a supernet cannot hold; "
                             f"accepted: {', '.join(_KINDS)}")
        self.stem = _SuperConv(stem, False)
        # the block modules by stage, position and type (a plain list: ``stages`` registers them)
        self._grid: list[list[dict[str, _SuperBlock]]] = [
            [{t: _SuperBlock(caps, self.kernel_transform) for t, caps in pos.items()} for pos in positions]
            for positions in stages]
        self.stages = nn.ModuleList(nn.ModuleList(nn.ModuleDict(pos) for pos in positions)  # type: ignore[arg-type]
                                    for positions in self._grid)
        self.head = _SuperHead(head, num_classes)
        self._plans: dict[str, _Plan] = {}
        self._extremes: dict[bool, ArchSpec] = {}
        self.set_active(self.largest())

    @classmethod
    def from_space(cls, space: SearchSpace, input_shape: Sequence[int] | None = None, num_classes: int = 10, *,
                   kernel_transform: bool = False) -> SuperNet:
        """The supernet of ``space`` for inputs ``input_shape`` (C, H, W) and ``num_classes``.

        A space made for another input shape is remade for ``input_shape`` with the same options
        (its strides follow the input).

        Raises:
            SpecError: a bad input shape or class count.
            SpaceError: a space with a block type a supernet cannot hold.
        """
        if input_shape is not None and tuple(check_input_shape(input_shape)) != tuple(space.input_shape):
            space = type(space)(tuple(input_shape), **dataclasses.asdict(space.options))
        return cls(space, num_classes, kernel_transform=kernel_transform)

    # ------------------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        """What remakes this supernet's structure (:meth:`from_config`): space, options, input
        shape, classes, kernel transforms. Plain data (lists), JSON-serialisable."""
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.space.options).items()}
        return {"space": self.space.name, "options": options, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "kernel_transform": self.kernel_transform}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SuperNet:
        """The supernet of a :meth:`config` (freshly initialised: load its ``state_dict`` next)."""
        space = space_class(config["space"])(tuple(config["input_shape"]), **config["options"])
        return cls(space, int(config["num_classes"]), kernel_transform=bool(config.get("kernel_transform", False)))

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (f"SuperNet(space='{self.space.name}', input={_shape_text(self.input_shape)}, "
                f"classes={self.num_classes}, params={n:,}, kernel_transform={self.kernel_transform})")

    # ------------------------------------------------------------------------------ sampling
    def sample(self, rng: random.Random | int) -> ArchSpec:
        """A subnet drawn uniformly at every choice of the space (``rng``: a ``random.Random`` or a seed)."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self.space.sample(rng)

    def _extreme(self, largest: bool) -> ArchSpec:
        if largest not in self._extremes:
            best: tuple[int, ArchSpec] | None = None
            for _, spec in enumerate_choices(lambda t: self.space.suggest(_Extreme(t, largest))):  # type: ignore[arg-type]
                with torch.device("meta"):
                    n = sum(p.numel() for p in build_model(spec, self.input_shape, self.num_classes).parameters())
                if best is None or (n > best[0] if largest else n < best[0]):
                    best = (n, spec)
            assert best is not None
            self._extremes[largest] = best[1]
        return self._extremes[largest]

    def largest(self) -> ArchSpec:
        """The subnet taking the largest value of every choice (depth, width, kernel, expansion,
        hidden width, rank ratio 1), and, of the block types, the one with the most parameters."""
        return self._extreme(True)

    def smallest(self) -> ArchSpec:
        """The subnet taking the smallest value of every choice and the block type with the fewest
        parameters."""
        return self._extreme(False)

    # ------------------------------------------------------------------------------ membership
    def _where(self) -> str:
        return f"supernet of space '{self.space.name}' for input {_shape_text(self.input_shape)}"

    def _fail(self, path: str, what: str) -> SpecError:
        return SpecError(f"{path}: {what} ({self._where()})")

    def _check_unit(self, conv: _SuperConv, u: _Unit, path: str) -> None:
        for dim, symbol, cap in (("cin", u.reads, conv.cin), ("cout", u.writes, conv.cout)):
            value = getattr(u, dim)
            if value > cap:
                name = _FIELD.get(symbol, symbol)
                if u.name == "stem" and dim == "cin":
                    raise self._fail("input_shape", f"{value} input channels, accepted: {cap}")
                target = f"{path}.{name}" if symbol != "in" else f"{path} ({name})"
                raise self._fail(target, f"{value} is above this supernet's largest, {cap} (accepted: 1..{cap})")
        if u.kernel not in conv.kernels:
            raise self._fail(f"{path}.kernel", f"got {u.kernel}, accepted: {', '.join(map(str, sorted(conv.kernels)))}")
        if u.stride != conv.stride:
            raise self._fail(f"{path}.stride", f"got {u.stride}, this position strides by {conv.stride} (accepted: "
                             f"{conv.stride}; strides follow the input size)")
        if not u.depthwise:
            if u.rank is None and not conv.has_dense:
                raise self._fail(f"{path}.rank_ratio", f"a dense {u.name} (rank ratio 1) has no weights here; "
                                 f"accepted: low-rank up to rank {conv.rank_max}")
            if u.rank is not None and u.rank > conv.rank_max:
                accepted = f"ranks up to {conv.rank_max}" if conv.rank_max else "dense layers only (rank ratio 1)"
                raise self._fail(f"{path}.rank_ratio", f"{u.name} of rank {u.rank}; accepted: {accepted}")

    def _build_plan(self, spec: ArchSpec) -> _Plan:
        if not isinstance(spec, ArchSpec):
            raise SpecError(f"spec: expected an ArchSpec, got {type(spec).__name__}")
        if spec.family != self.space.name:
            raise self._fail("family", f"a {spec.family!r} network is not in this supernet; accepted: networks of "
                             f"space '{self.space.name}'")
        if spec.act != self.act:
            raise self._fail("act", f"got {spec.act!r}, accepted: {self.act!r}")
        if len(spec.stages) != len(self._grid):
            raise self._fail("stages", f"{len(spec.stages)} stages, accepted: {len(self._grid)}")
        plan = _plan(spec, self.input_shape[0])
        self._check_unit(self.stem, plan.stem, "stem")
        for i, (stage, blocks) in enumerate(zip(self._grid, plan.stages, strict=True)):
            if len(blocks) > len(stage):
                raise self._fail(f"stages[{i}].blocks", f"{len(blocks)} blocks, accepted: 1..{len(stage)}")
            for j, (position, p) in enumerate(zip(stage, blocks, strict=False)):
                path = f"stages[{i}].blocks[{j}]"
                if p.type not in position:
                    raise self._fail(f"{path}.type", f"got {p.type!r}, accepted: {', '.join(map(repr, position))}")
                block = position[p.type]
                for u in p.units + ((p.shortcut,) if p.shortcut else ()):
                    if u.name not in block.convs:
                        raise self._fail(path, f"its {u.name} has no weights in this supernet (no network of the "
                                         "space has one at this position)")
                    self._check_unit(block.convs[u.name], u, path)
        h, cap = plan.head, self.head.cap
        if h.hidden is None:
            if not cap.direct:
                raise self._fail("head.hidden", f"none, accepted: 1..{cap.hidden}")
            if h.cin > cap.direct:
                raise self._fail("stages[-1] out_channels", f"{h.cin} is above this supernet's largest, {cap.direct}")
        else:
            if not cap.hidden:
                raise self._fail("head.hidden", f"got {h.hidden}, accepted: none (no hidden layer)")
            if h.hidden > cap.hidden:
                raise self._fail("head.hidden", f"{h.hidden} is above this supernet's largest, {cap.hidden} "
                                 f"(accepted: 1..{cap.hidden})")
            if h.cin > cap.cin:
                raise self._fail("stages[-1] out_channels", f"{h.cin} is above this supernet's largest, {cap.cin}")
            if h.rank is None and not cap.dense:
                raise self._fail("head.rank_ratio", f"a dense hidden layer has no weights here; accepted: low-rank "
                                 f"up to rank {cap.rank}")
            if h.rank is not None and h.rank > cap.rank:
                accepted = f"ranks up to {cap.rank}" if cap.rank else "a dense layer only (rank ratio 1)"
                raise self._fail("head.rank_ratio", f"hidden layer of rank {h.rank}; accepted: {accepted}")
        return plan

    def _plan_of(self, spec: ArchSpec, input_shape: Sequence[int] | None = None) -> _Plan:
        if input_shape is not None and tuple(input_shape) != self.input_shape:
            raise SpecError(f"input_shape: got {_shape_text(input_shape)}, accepted: {_shape_text(self.input_shape)} "
                            f"({self._where()})")
        key = spec.hash if isinstance(spec, ArchSpec) else ""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._build_plan(spec)
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def check(self, spec: ArchSpec, input_shape: Sequence[int] | None = None) -> None:
        """Raise :class:`SpecError` (one line: the field, what is wrong, what is accepted) unless
        ``spec`` (for inputs ``input_shape``, default the supernet's) is a subnet of this supernet."""
        self._plan_of(spec, input_shape)

    def contains(self, spec: ArchSpec, input_shape: Sequence[int] | None = None) -> bool:
        """Whether :meth:`check` accepts ``spec``."""
        try:
            self._plan_of(spec, input_shape)
        except SpecError:
            return False
        return True

    # ------------------------------------------------------------------------------ running
    def set_active(self, spec: ArchSpec) -> None:
        """Make ``forward`` run the subnet ``spec``. Raises :class:`SpecError` when it is not one."""
        self._active_plan = self._plan_of(spec)
        self._active = spec

    @property
    def active(self) -> ArchSpec:
        """The subnet ``forward`` runs."""
        return self._active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan, act = self._active_plan, self.act
        x = self.stem(x, plan.stem, act)
        for stage, blocks in zip(self._grid, plan.stages, strict=True):
            for position, p in zip(stage, blocks, strict=False):  # the first len(blocks) positions
                x = position[p.type](x, p, act)
        return self.head(x, plan.head, act)

    # ------------------------------------------------------------------------------ ranks
    def dense_of(self, spec: ArchSpec) -> ArchSpec:
        """``spec`` with every LightLayer dense (rank ratio 1: blocks and the head's hidden layer).
        Raises :class:`SpecError` when that is not a subnet (the space offers no ratio 1 somewhere)."""
        stages = tuple(dataclasses.replace(st, blocks=tuple(dataclasses.replace(b, rank_ratio=1.0) for b in st.blocks))
                       for st in spec.stages)
        dense = dataclasses.replace(spec, stages=stages, head=dataclasses.replace(spec.head, rank_ratio=1.0))
        self.check(dense)
        return dense

    def has_factors_of_dense(self) -> bool:
        """Whether some layer holds both a dense weight and low-rank factors, and every subnet has a dense
        counterpart (the space offers rank ratio 1 everywhere): what :meth:`factors_from_dense` and the
        dense-first training (``objectives.train_supernet``'s ``dense_epochs``) need."""
        both = any(c.weight is not None and c.reduce is not None for c in self._convs()) or (
            self.head.hidden_weight is not None and self.head.hidden_reduce is not None)
        if not both:
            return False
        try:
            self.dense_of(self.smallest())
        except SpecError:
            return False
        return True

    def _convs(self) -> list[_SuperConv]:
        return [m for m in self.modules() if isinstance(m, _SuperConv)]

    @torch.no_grad()
    def factors_from_dense(self) -> int:
        """Set every layer's low-rank factor pair to the truncated SVD of its dense weight (at the largest
        widths and kernel; singular values shared as square roots, as ``LightConv2d.from_dense`` does), so
        that a rank ``r`` subnet starts from the best rank-``r`` approximation of the dense layer the
        supernet has trained. OFA's kernel transforms of the dense weight are copied to the factor's.
        Returns the layers set."""
        from ._layers import _svd_factors

        n = 0
        for conv in self._convs():
            if conv.weight is None or conv.reduce is None or conv.depthwise:
                continue
            w = conv.weight
            expand, reduce = _svd_factors(w.reshape(w.shape[0], -1), conv.reduce.shape[0])
            conv.reduce.copy_(reduce.reshape(conv.reduce.shape).to(conv.reduce.dtype))
            _t(conv.expand).copy_(expand.reshape(_t(conv.expand).shape).to(conv.reduce.dtype))
            for key, m in conv.transforms.items():
                if key.startswith("weight_"):
                    conv.transforms["reduce_" + key[len("weight_"):]].copy_(m)
            n += 1
        head = self.head
        if head.hidden_weight is not None and head.hidden_reduce is not None:
            expand, reduce = _svd_factors(head.hidden_weight, head.hidden_reduce.shape[0])
            head.hidden_reduce.copy_(reduce.to(head.hidden_reduce.dtype))
            _t(head.hidden_expand).copy_(expand.to(head.hidden_reduce.dtype))
            n += 1
        return n

    # ------------------------------------------------------------------------------ extraction
    def subnet_state(self, spec: ArchSpec) -> dict[str, torch.Tensor]:
        """The weights and BN buffers of subnet ``spec`` under the names of ``build_model(spec)``
        (detached copies, contiguous)."""
        plan = self._plan_of(spec)
        out: dict[str, torch.Tensor] = {}

        def unit(prefix: str, conv: _SuperConv, u: _Unit) -> None:
            for k, v in conv.weights(u).items():
                out[f"{prefix}.conv.{k}"] = v
            for k, v in conv.bn_state(u.cout).items():
                out[f"{prefix}.bn.{k}"] = v

        unit("stem", self.stem, plan.stem)
        flat = 0
        for stage, blocks in zip(self._grid, plan.stages, strict=True):
            for position, p in zip(stage, blocks, strict=False):
                block = position[p.type]
                for u in p.units + ((p.shortcut,) if p.shortcut else ()):
                    unit(f"blocks.{flat}.{u.name}", block.convs[u.name], u)
                flat += 1
        for k, v in self.head.weights(plan.head).items():
            out[f"head.{k}"] = v
        with torch.no_grad():
            return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in out.items()}

    def extract(self, spec: ArchSpec) -> LightNet:
        """The stand-alone network of ``spec`` (``build_model(spec, input_shape, num_classes)``)
        holding exactly the supernet's sliced weights and BN statistics, on the supernet's device,
        in eval mode. Raises :class:`SpecError` when ``spec`` is not a subnet."""
        state = self.subnet_state(spec)
        with torch.device("meta"):
            model = build_model(spec, self.input_shape, self.num_classes)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def state_bytes(self) -> int:
        """Bytes of the supernet's weights and buffers (what its ``state_dict`` holds)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())
