"""Weight inheritance (network morphism, docs/methods.md section 3): which weights of a trained parent a
child architecture can take, and copying them.

A study with ``inherit_weights`` initialises each network it trains from the weights of the
trained architecture that overlaps it most (``nas.search`` picks that parent); the training
schedule is unchanged, so the comparison with training from scratch is at equal epochs.

Matching. Layers are matched by position in the spec, not by flat index: block ``j`` of stage
``s`` of the child takes block ``j`` of stage ``s`` of the parent (blocks beyond the parent's
depth keep their random initialisation); the stem and the head match by name. A tensor is
copied on the slice both have: leading channels for widths, centred for kernels (a 3x3 parent
kernel lands in the middle of a 5x5 child kernel). A convolution that is full rank on one side
and low rank (a ``LightConv2d``, two factors) on the other keeps its initialisation: the
tensors do not mean the same thing. Two low-rank ones pass on the leading slice of both
factors. BatchNorm statistics come with their channels.

Because the result depends on which parents existed when a trial ran, a study with
inheritance keys its evaluations by a fidelity that says so; they are never reused by studies
that train from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping

import torch
from torch import nn

from ._build import build_model
from ._spec import ArchSpec

__all__ = ["inherit_weights", "overlap", "spec_state_shapes"]


def _block_names(spec: ArchSpec) -> dict[tuple[int, int], int]:
    """(stage, position) -> flat block index of the built model."""
    out, k = {}, 0
    for s, stage in enumerate(spec.stages):
        for j in range(len(stage.blocks)):
            out[(s, j)] = k
            k += 1
    return out


def _key_map(child: ArchSpec, parent: ArchSpec) -> dict[str, str]:
    """``blocks.<child index>.`` -> ``blocks.<parent index>.`` prefixes for blocks at the same place."""
    pc, pp = _block_names(child), _block_names(parent)
    return {f"blocks.{i}.": f"blocks.{pp[pos]}." for pos, i in pc.items() if pos in pp}


def _parent_key(key: str, prefixes: Mapping[str, str]) -> str | None:
    if not key.startswith("blocks."):
        return key
    head = key[: key.index(".", len("blocks.")) + 1]
    mapped = prefixes.get(head)
    return None if mapped is None else mapped + key[len(head):]


def _factored(key: str) -> str | None:
    """``...conv.`` for a LightConv factor (``...conv.reduce.weight`` / ``...conv.expand.weight``)."""
    for part in ("reduce.weight", "expand.weight"):
        if key.endswith(part):
            return key[: -len(part)]
    return None


def _rank_clash(key: str, child_keys: Collection[str], parent_keys: Collection[str],
                prefixes: Mapping[str, str]) -> bool:
    """A convolution that is full rank on one side and factored (LightConv) on the other: its
    ``reduce`` means different things (the weight vs the first factor), so nothing is copied."""
    conv = _factored(key)
    if conv is None:
        return False
    pconv = _parent_key(conv, prefixes)
    return pconv is not None and ((conv + "expand.weight") in child_keys) != ((pconv + "expand.weight") in parent_keys)


def _slices(child: tuple[int, ...], parent: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    if len(child) != len(parent):
        return None
    cs, ps = [], []
    for d, (c, p) in enumerate(zip(child, parent, strict=True)):
        n = min(c, p)
        if len(child) == 4 and d >= 2:  # kernel: centred
            oc, op = (c - n) // 2, (p - n) // 2
        else:  # channels / features: leading
            oc = op = 0
        cs.append(slice(oc, oc + n))
        ps.append(slice(op, op + n))
    return tuple(cs), tuple(ps)


def spec_state_shapes(spec: ArchSpec, input_shape: tuple[int, int, int], classes: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the built model's state dict, without allocating it (meta device)."""
    with torch.device("meta"):
        model = build_model(spec, input_shape, classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_param(key: str) -> bool:
    """A learned tensor (weights, biases, BatchNorm affine), not a BatchNorm statistic or counter."""
    return "running_" not in key and not key.endswith("num_batches_tracked")


Slices = tuple[slice, ...]


def _matches(child: ArchSpec, child_shapes: Mapping[str, tuple[int, ...]], parent: ArchSpec,
             parent_shapes: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[str, str, Slices, Slices]]:
    """``(child key, parent key, child slice, parent slice)`` for every tensor of the child that
    inheriting from ``parent`` sets (see the module docstring for the matching)."""
    prefixes = _key_map(child, parent)
    for key, shape in child_shapes.items():
        pk = _parent_key(key, prefixes)
        if pk is None or pk not in parent_shapes or _rank_clash(key, child_shapes, parent_shapes, prefixes):
            continue
        sl = _slices(shape, parent_shapes[pk])
        if sl is not None:
            yield key, pk, sl[0], sl[1]


def overlap(child: ArchSpec, child_shapes: Mapping[str, tuple[int, ...]], parent: ArchSpec,
            parent_shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Share of the child's floating-point parameters that inheriting from ``parent`` would set."""
    total = sum(math.prod(shape) for key, shape in child_shapes.items() if _is_param(key))
    covered = sum(math.prod(s.stop - s.start for s in cs)
                  for key, _pk, cs, _ps in _matches(child, child_shapes, parent, parent_shapes) if _is_param(key))
    return covered / total if total else 0.0


@torch.no_grad()
def inherit_weights(child: nn.Module, parent_state: Mapping[str, torch.Tensor], child_spec: ArchSpec,
                    parent_spec: ArchSpec) -> float:
    """Copy the overlapping slices of ``parent_state`` into ``child`` (in place); returns the share
    of the child's parameters that were set (see the module docstring for the matching)."""
    state = child.state_dict()
    child_shapes = {k: tuple(v.shape) for k, v in state.items()}
    parent_shapes = {k: tuple(v.shape) for k, v in parent_state.items()}
    total = sum(v.numel() for k, v in state.items() if _is_param(k))
    covered = 0
    for key, pk, cs, ps in _matches(child_spec, child_shapes, parent_spec, parent_shapes):
        tensor = state[key]
        tensor[cs] = parent_state[pk][ps].to(tensor.dtype)  # a 0-d tensor takes the empty slice: all of it
        if _is_param(key):
            covered += tensor[cs].numel()
    return covered / total if total else 0.0
