"""Model surgery on ``ArchSpec`` + weights: channel pruning, block removal, low-rank replacement.

Every operation returns a *new* ``LightNet`` built from a *new* spec, with weights copied or
sliced from the old one. A pruned or fused network is therefore really smaller: its spec has the
smaller widths (or fewer blocks), so the cost model, storage and export see it like any
searched architecture. Nothing is masked.

**What may be cut (channel pruning).** A *width* is prunable when no skip connection adds it
to another tensor, so slicing its producer's output channels and its consumers' input channels
is the whole change (Torch-Pruning's dependency groups, read off the spec instead of traced):

=================  ===================================================  ==========================
block / place      prunable width (measured after the activation of)    producer -> consumer(s)
=================  ===================================================  ==========================
``basic``          ``mid`` (``conv1``)                                   conv1 -> conv2
``bottleneck``     ``mid`` (``conv1``), ``mid2`` (``conv2``)              conv1 -> conv2 -> conv3
``inverted``       ``mid`` (``dw``), only when it has an expand conv      expand -> dw -> project
                   (``mid != in``)
``conv``           ``out`` (``conv1``) when the next block is ``conv``    conv1 -> next conv1 / head
                   or it is the last block
stem               ``stem`` when the first block is ``conv``              stem -> blocks.0.conv1
head               ``hidden`` (``head.hidden_act``)                       hidden -> classifier
=================  ===================================================  ==========================

The first three rows are docs/methods.md section 2 as written: only channels *inside* a residual
block (the input channels of its second, or third, convolution). A block's input and output
widths are never cut, so skip connections still add. The rest extends the rule to the ``plain``
space, where the paper's rule finds nothing: between two plain convolutions (and into the head)
no skip couples the width, so the same exact surgery applies. An ``inverted`` block keeps at
least ``in + 1`` or at most ``in - 1`` expanded channels, never exactly ``in``: at ``mid == in``
the builder drops the expand convolution, which would be a different network.

**Exactness.** A channel that is zero after its activation contributes nothing downstream
(BatchNorm in eval mode, ReLU/ReLU6), so removing it leaves the outputs unchanged whenever it
was zero. Dense and depthwise convolutions are sliced exactly; so is a ``LightConv2d`` whose
rank the builder keeps for the new widths (its ``expand`` output and ``reduce`` input are
sliced). Where the smaller widths give a ``LightConv2d`` a smaller rank (the spec stores a rank
*ratio* per block, e.g. ``basic.conv1`` has rank ``ratio * mid``), the sliced product is
re-factorised by truncated SVD (``LightConv2d.from_dense``), the best approximation at the new
rank (Eckart-Young); the fine-tuning that follows every pruning attempt recovers the rest.

**Block removal (layer fusion).** A block can be removed when its output has the shape of its
input (stride 1, ``in == out``): every other layer keeps its shape, so their weights are copied
unchanged. See :func:`choose_fusion` for the material / carrier rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from ._blocks import WIDTH_FIELDS
from ._build import ConvBNAct, LightNet, build_model
from ._layers import LightConv2d, LightLinear
from ._spec import ArchSpec, Block, Stage

__all__ = [
    "LOW_RANK_LADDER",
    "FusionChoice",
    "Width",
    "apply_low_rank",
    "block_shapes",
    "channel_sparsity",
    "choose_fusion",
    "fusion_candidates",
    "keep_channels",
    "low_rank_plan",
    "prunable_widths",
    "prune_channels",
    "remove_block",
    "transplant",
]

#: Rank ratios the LightLayer step steps down through (the search spaces' choices).
LOW_RANK_LADDER = (1.0, 0.5, 0.25, 0.125)


# ----------------------------------------------------------------------------------- widths
@dataclass(frozen=True)
class Width:
    """A prunable width of a spec.

    Attributes:
        name: ``stem``, ``blocks.<i>.mid``, ``blocks.<i>.mid2``, ``blocks.<i>.out`` or ``head.hidden``.
        size: current number of channels (features for ``head.hidden``).
        act: module whose output (after the activation) holds this width's channels.
        forbidden: a size the width may not take (``inverted``: the block input width).
    """

    name: str
    size: int
    act: str
    forbidden: int | None = None


def prunable_widths(spec: ArchSpec) -> list[Width]:
    """The widths of ``spec`` that channel pruning may cut (see the module docstring).

    Example:
        >>> from search_spaces import Stem
        >>> spec = ArchSpec(Stem(8), (Stage((Block("basic", 8, 4), Block("basic", 8, 6))),))
        >>> [w.name for w in prunable_widths(spec)]
        ['blocks.0.mid', 'blocks.1.mid']
    """
    blocks = spec.blocks
    ins = spec.block_inputs()
    out: list[Width] = []
    if blocks[0].kind.chains:
        out.append(Width("stem", spec.stem.out_channels, "stem"))
    for i, (b, cin) in enumerate(zip(blocks, ins, strict=True)):
        p, kind = f"blocks.{i}", b.kind
        for width in kind.widths:  # inside a block: no skip touches them (docs/methods.md section 2)
            size = int(getattr(b, WIDTH_FIELDS[width]))
            if kind.expands() and size == cin:
                continue  # the expand unit is absent: its width is the block's input
            after = [u.name for u in kind.active_units(b, cin) if u.writes == width and u.act][-1]
            out.append(Width(f"{p}.{width}", size, f"{p}.{after}", forbidden=cin if kind.expands() else None))
        if kind.chains and (i + 1 == len(blocks) or blocks[i + 1].kind.chains):
            after = [u.name for u in kind.units if u.writes == "out"][-1]
            out.append(Width(f"{p}.out", b.out_channels, f"{p}.{after}"))
    if spec.head.hidden is not None:
        out.append(Width("head.hidden", spec.head.hidden, "head.hidden_act"))
    return out


def _io(spec: ArchSpec) -> dict[str, tuple[str | None, str | None]]:
    """Unit name -> (width name it consumes, width name it produces), for prunable widths only."""
    names = {w.name for w in prunable_widths(spec)}

    def w(name: str) -> str | None:
        return name if name in names else None

    io: dict[str, tuple[str | None, str | None]] = {"stem": (None, w("stem"))}
    prev = "stem"
    for i, b in enumerate(spec.blocks):
        p, kind = f"blocks.{i}", b.kind

        def width(symbol: str, prev: str = prev, p: str = p, chains: bool = kind.chains) -> str | None:
            if symbol == "in":  # a block's input and output widths are prunable only between chains
                return w(prev) if chains else None
            if symbol == "out":
                return w(f"{p}.out") if chains else None
            return w(f"{p}.{symbol}")

        for u in kind.units:
            io[f"{p}.{u.name}"] = (width(u.reads), width(u.writes))
        prev = f"{p}.out"
    if spec.head.hidden is not None:
        io["head.hidden"] = (w(prev), w("head.hidden"))
        io["head.classifier"] = (w("head.hidden"), None)
    else:
        io["head.classifier"] = (w(prev), None)
    return io


# ----------------------------------------------------------------------------------- sparsity
@torch.no_grad()
def channel_sparsity(model: LightNet, x: torch.Tensor, *, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Per prunable width, the fraction of exact zeros of each channel after its activation.

    The model runs in eval mode over ``x`` (the validation inputs); for a convolution channel
    the fraction counts every element of its feature map over all inputs (equal to the mean
    over inputs of each map's zero fraction, all maps having one size).

    Returns:
        ``{width name: float tensor of shape (channels,)}`` with values in [0, 1].
    """
    widths = prunable_widths(model.spec)
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for w in widths:
        def hook(_m: nn.Module, _a: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = w.name) -> None:
            dims = [d for d in range(out.dim()) if d != 1]
            z = (out == 0).sum(dim=dims).to(torch.float64).cpu()
            zeros[name] = zeros.get(name, torch.zeros_like(z)) + z
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        handles.append(model.get_submodule(w.act).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: (zeros[name] / max(counts[name], 1)).float() for name in zeros}


def keep_channels(sparsity: Mapping[str, torch.Tensor], threshold: float, spec: ArchSpec, *,
                  min_channels: int = 1) -> dict[str, list[int]]:
    """Channels to keep when every channel with sparsity *above* ``threshold`` is removed.

    Each width keeps at least ``min_channels`` (its least sparse ones) and never takes its
    ``forbidden`` size (one more channel is kept). Widths that lose nothing are left out.

    Returns:
        ``{width name: sorted channel indices to keep}``.
    """
    out: dict[str, list[int]] = {}
    for w in prunable_widths(spec):
        s = sparsity.get(w.name)
        if s is None:
            continue
        if len(s) != w.size:
            raise ValueError(f"sparsity of {w.name} has {len(s)} channels, the spec {w.size}")
        order = sorted(range(w.size), key=lambda c: (float(s[c]), c))  # least sparse first
        keep = {c for c in range(w.size) if float(s[c]) <= threshold}
        need = min(max(1, min_channels), w.size)
        for c in order:
            if len(keep) >= need:
                break
            keep.add(c)
        if w.forbidden is not None and len(keep) == w.forbidden:
            extra = next((c for c in order if c not in keep), None)
            if extra is not None:
                keep.add(extra)
        if len(keep) < w.size:
            out[w.name] = sorted(keep)
    return out


# ----------------------------------------------------------------------------------- spec edits
def _set_block(spec: ArchSpec, index: int, block: Block) -> ArchSpec:
    stages, i = [], 0
    for st in spec.stages:
        bs = list(st.blocks)
        for j in range(len(bs)):
            if i == index:
                bs[j] = block
            i += 1
        stages.append(Stage(tuple(bs)))
    return spec.replace(stages=tuple(stages))


def _drop_block(spec: ArchSpec, index: int) -> ArchSpec:
    stages, i = [], 0
    for st in spec.stages:
        bs = []
        for b in st.blocks:
            if i != index:
                bs.append(b)
            i += 1
        if bs:
            stages.append(Stage(tuple(bs)))
    return spec.replace(stages=tuple(stages))


def _pruned_spec(spec: ArchSpec, keep: Mapping[str, Sequence[int]]) -> ArchSpec:
    sizes = {name: len(idx) for name, idx in keep.items()}
    if "stem" in sizes:
        spec = spec.replace(stem=replace(spec.stem, out_channels=sizes["stem"]))
    if "head.hidden" in sizes:
        spec = spec.replace(head=replace(spec.head, hidden=sizes["head.hidden"]))
    for i, b in enumerate(spec.blocks):
        fields: dict[str, Any] = {}
        for part, field in (("mid", "mid_channels"), ("mid2", "mid2_channels"), ("out", "out_channels")):
            if f"blocks.{i}.{part}" in sizes:
                fields[field] = sizes[f"blocks.{i}.{part}"]
        if fields:
            spec = _set_block(spec, i, replace(b, **fields))
    return spec


# ----------------------------------------------------------------------------------- weight transfer
Index = torch.Tensor | None


def _sel(t: torch.Tensor, dim: int, idx: Index) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx.to(t.device))


def _dense_conv_weight(conv: LightConv2d) -> torch.Tensor:
    if conv.rank is None:
        return conv.reduce.weight
    assert isinstance(conv.expand, nn.Conv2d)
    return torch.einsum("or,rikl->oikl", conv.expand.weight[:, :, 0, 0], conv.reduce.weight)


def _conv_state(old: LightConv2d, new: LightConv2d, out_idx: Index, in_idx: Index) -> dict[str, torch.Tensor]:
    last = old.reduce if old.rank is None else old.expand
    bias = None if getattr(last, "bias", None) is None else _sel(last.bias, 0, out_idx)  # type: ignore[arg-type]
    if old.rank == new.rank:  # same factorisation: slice the factors, exactly
        if old.rank is None:
            state = {"reduce.weight": _sel(_sel(old.reduce.weight, 0, out_idx), 1, in_idx)}
            if bias is not None:
                state["reduce.bias"] = bias
            return state
        assert isinstance(old.expand, nn.Conv2d)
        state = {"reduce.weight": _sel(old.reduce.weight, 1, in_idx),
                 "expand.weight": _sel(old.expand.weight, 0, out_idx)}
        if bias is not None:
            state["expand.bias"] = bias
        return state
    w = _sel(_sel(_dense_conv_weight(old), 0, out_idx), 1, in_idx).detach()
    pad = old.reduce.padding[0]
    assert isinstance(pad, int)
    tmp = nn.Conv2d(w.shape[1], w.shape[0], old.kernel_size, old.stride, pad, bias=bias is not None)
    tmp = tmp.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        tmp.weight.copy_(w)
        if bias is not None:
            tmp.bias.copy_(bias)  # type: ignore[union-attr]
    return LightConv2d.from_dense(tmp, new.rank).state_dict()


def _linear_state(old: nn.Module, new: nn.Module, out_idx: Index, in_idx: Index) -> dict[str, torch.Tensor]:
    if isinstance(old, nn.Linear):
        state = {"weight": _sel(_sel(old.weight, 0, out_idx), 1, in_idx)}
        if old.bias is not None:
            state["bias"] = _sel(old.bias, 0, out_idx)
        return state
    assert isinstance(old, LightLinear) and isinstance(new, LightLinear)
    if old.rank == new.rank:
        if old.rank is None:
            assert isinstance(old.reduce, nn.Linear)
            return {f"reduce.{k}": v for k, v in _linear_state(old.reduce, new.reduce, out_idx, in_idx).items()}
        assert isinstance(old.expand, nn.Linear)
        state = {"reduce.weight": _sel(old.reduce.weight, 1, in_idx),
                 "expand.weight": _sel(old.expand.weight, 0, out_idx)}
        if old.expand.bias is not None:
            state["expand.bias"] = _sel(old.expand.bias, 0, out_idx)
        return state
    last = old.reduce if old.rank is None else old.expand
    assert isinstance(last, nn.Linear)
    w = old.reduce.weight if old.rank is None else last.weight @ old.reduce.weight
    w = _sel(_sel(w, 0, out_idx), 1, in_idx).detach()
    tmp = nn.Linear(w.shape[1], w.shape[0], bias=last.bias is not None).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        tmp.weight.copy_(w)
        if last.bias is not None:
            tmp.bias.copy_(_sel(last.bias, 0, out_idx))
    return LightLinear.from_dense(tmp, new.rank).state_dict()


def _unit_state(old: nn.Module, new: nn.Module, out_idx: Index, in_idx: Index) -> dict[str, torch.Tensor]:
    if isinstance(old, ConvBNAct):
        assert isinstance(new, ConvBNAct)
        if isinstance(old.conv, LightConv2d):
            assert isinstance(new.conv, LightConv2d)
            conv = {f"conv.{k}": v for k, v in _conv_state(old.conv, new.conv, out_idx, in_idx).items()}
        else:  # depthwise: one filter per channel, in == out
            assert isinstance(old.conv, nn.Conv2d)
            conv = {"conv.weight": _sel(old.conv.weight, 0, out_idx)}
        bn = {f"bn.{k}": (v if v.dim() == 0 else _sel(v, 0, out_idx)) for k, v in old.bn.state_dict().items()}
        return {**conv, **bn}
    return _linear_state(old, new, out_idx, in_idx)


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight-carrying units of a LightNet (ConvBNAct, LightLinear, Linear), outermost only."""
    units: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, (ConvBNAct, LightLinear, nn.Linear)) and not any(name.startswith(u + ".") for u, _ in units):
            units.append((name, m))
    return units


def transplant(old: LightNet, spec: ArchSpec, *, keep: Mapping[str, Sequence[int]] | None = None,
               rename: Mapping[str, str] | None = None) -> LightNet:
    """Build ``spec`` and fill it with ``old``'s weights.

    Args:
        old: the trained network.
        spec: the new architecture (same block structure, or ``old``'s with blocks removed).
        keep: ``{width name: channel indices}`` of ``old`` to keep (channel pruning).
        rename: new unit name prefix -> old one (``blocks.4`` -> ``blocks.5`` after a removal).

    Every parameter and buffer of the new network is taken from ``old``: sliced when a width
    shrank, re-factorised (SVD) when a LightLayer's rank changed, copied otherwise.
    """
    keep = keep or {}
    io = _io(old.spec)
    dev = next(old.parameters()).device
    new = build_model(spec, old.input_shape, old.num_classes).to(dev)
    index = {k: torch.as_tensor(list(v), dtype=torch.long) for k, v in keep.items()}
    covered = 0
    for name, unit in _units(new):
        old_name = name
        for new_prefix, old_prefix in (rename or {}).items():
            if name == new_prefix or name.startswith(new_prefix + "."):
                old_name = old_prefix + name[len(new_prefix):]
                break
        consumes, produces = io.get(old_name, (None, None))
        state = _unit_state(old.get_submodule(old_name), unit, index.get(produces or ""), index.get(consumes or ""))
        unit.load_state_dict(state, strict=True)
        covered += sum(1 for _ in unit.state_dict())
    if covered != len(new.state_dict()):  # pragma: no cover - a block type without a handler
        raise AssertionError(f"transplant covered {covered} of {len(new.state_dict())} tensors")
    new.train(old.training)
    return new


def prune_channels(model: LightNet, keep: Mapping[str, Sequence[int]]) -> LightNet:
    """A smaller network: the channels not in ``keep`` removed from ``model`` (see :func:`keep_channels`).

    Raises:
        ValueError: a width is not prunable, an index is out of range, or nothing would remain.
    """
    widths = {w.name: w for w in prunable_widths(model.spec)}
    for name, idx in keep.items():
        if name not in widths:
            raise ValueError(f"width {name!r} is not prunable; prunable: {', '.join(widths) or 'none'}")
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= widths[name].size:
            raise ValueError(f"width {name!r}: need distinct channel indices in 0..{widths[name].size - 1}")
        if widths[name].forbidden == len(idx):
            raise ValueError(f"width {name!r} may not have exactly {len(idx)} channels (the block's input width)")
    return transplant(model, _pruned_spec(model.spec, keep), keep=keep)


# ----------------------------------------------------------------------------------- fusion
def block_shapes(spec: ArchSpec, input_shape: Sequence[int]) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """``(input shape, output shape)`` of every block, as ``(C, H, W)``."""
    _, h, w = input_shape
    s = spec.stem.stride
    h, w = (h - 1) // s + 1, (w - 1) // s + 1
    c = spec.stem.out_channels
    out = []
    for b in spec.blocks:
        nh, nw = (h - 1) // b.stride + 1, (w - 1) // b.stride + 1
        out.append(((c, h, w), (b.out_channels, nh, nw)))
        c, h, w = b.out_channels, nh, nw
    return out


def fusion_candidates(spec: ArchSpec, input_shape: Sequence[int]) -> list[int]:
    """Blocks whose removal keeps every shape valid: output shape equal to input shape.

    That excludes strided blocks and blocks that change the width (those with a projection
    shortcut); the network keeps at least one block.
    """
    if len(spec.blocks) < 2:
        return []
    return [i for i, (cin, cout) in enumerate(block_shapes(spec, input_shape)) if cin == cout]


def _channels(b: Block) -> int:
    return sum(b.inner_widths) if b.inner_widths else b.out_channels


@dataclass(frozen=True)
class FusionChoice:
    """The block to remove (``material``) and the block that learns its function (``carrier``)."""

    material: int
    carrier: int


def choose_fusion(spec: ArchSpec, input_shape: Sequence[int]) -> FusionChoice | None:
    """docs/methods.md section 2's material and carrier, among the removable blocks.

    Material: the removable block (:func:`fusion_candidates`) with the fewest channels (the sum
    of its inner widths; a ``conv`` block's output width), the earliest on ties. Carrier: the
    previous block when its output shape equals the material's, else the next block. ``None``
    when no block can be removed.
    """
    cands = fusion_candidates(spec, input_shape)
    if not cands:
        return None
    blocks = spec.blocks
    material = min(cands, key=lambda i: (_channels(blocks[i]), i))
    shapes = block_shapes(spec, input_shape)
    if material > 0 and shapes[material - 1][1] == shapes[material][1]:
        return FusionChoice(material, material - 1)
    return FusionChoice(material, material + 1)


def remove_block(model: LightNet, index: int) -> LightNet:
    """``model`` without block ``index`` (which must be in :func:`fusion_candidates`); the other
    blocks keep their weights (block ``j > index`` becomes ``blocks.<j-1>``)."""
    if index not in fusion_candidates(model.spec, model.input_shape):
        raise ValueError(f"block {index} cannot be removed: its output shape differs from its input "
                         f"shape; removable: {fusion_candidates(model.spec, model.input_shape)}")
    n = len(model.spec.blocks)
    rename = {f"blocks.{j - 1}": f"blocks.{j}" for j in range(index + 1, n)}
    return transplant(model, _drop_block(model.spec, index), rename=rename)


# ----------------------------------------------------------------------------------- low rank
def _lower(r: float) -> float | None:
    return next((x for x in LOW_RANK_LADDER if x < r - 1e-12), None)


class BudgetLike(Protocol):
    """What :func:`low_rank_plan` needs of a budget (``objectives.Budget`` is one)."""

    def violations(self, totals: Mapping[str, float]) -> Mapping[str, float]: ...

    def hw_cost(self, totals: Mapping[str, float]) -> float: ...


def low_rank_plan(spec: ArchSpec, cost_fn: Callable[[ArchSpec], Mapping[str, float]], budget: BudgetLike
                  ) -> tuple[ArchSpec, bool]:
    """Lower LightLayer rank ratios until ``spec`` meets ``budget``, greedily.

    Each round tries one step down the ladder (1 -> 1/2 -> 1/4 -> 1/8) for every block and the
    head's hidden layer, and takes the step that lowers ``budget.hw_cost`` most; it stops when
    the budget holds or no step lowers the cost (a LightLayer adds an activation, so memory
    resources may not fall). Blocks at a ratio the ladder lacks step to the next lower rung.

    Args:
        spec: the architecture.
        cost_fn: ``spec -> totals`` (e.g. ``estimate_cost(...).totals``).
        budget: an ``objectives.Budget``.

    Returns:
        ``(new spec, whether the budget is met)``; ``spec`` itself when it already is.
    """
    cur, totals = spec, cost_fn(spec)
    while budget.violations(totals):
        best: tuple[float, ArchSpec, Mapping[str, float]] | None = None
        options: list[ArchSpec] = []
        for i, b in enumerate(cur.blocks):
            r = _lower(b.rank_ratio)
            if r is not None:
                options.append(_set_block(cur, i, replace(b, rank_ratio=r)))
        if cur.head.hidden is not None:
            r = _lower(cur.head.rank_ratio)
            if r is not None:
                options.append(cur.replace(head=replace(cur.head, rank_ratio=r)))
        base = budget.hw_cost(totals)
        for cand in options:
            t = cost_fn(cand)
            c = budget.hw_cost(t)
            if c < base - 1e-12 and (best is None or c < best[0]):
                best = (c, cand, t)
        if best is None:
            return cur, False
        _, cur, totals = best
    return cur, True


def apply_low_rank(model: LightNet, spec: ArchSpec) -> LightNet:
    """``model`` with the rank ratios of ``spec`` (same widths): every LightLayer whose rank
    changed is replaced by ``LightConv2d.from_dense`` / ``LightLinear.from_dense`` of its dense
    product (exact at full rank, best rank-r approximation below)."""
    return transplant(model, spec)
