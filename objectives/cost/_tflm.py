"""RAM and flash of a network's int8 artifact on TensorFlow Lite Micro, predicted from its ``ArchSpec``.

What a microcontroller must hold is not lightnas's ``peak_activation_bytes`` and ``weight_bytes``:
TFLM allocates one arena (``ram``) for the activations, laid out by its memory planner, plus
persistent structures per tensor, per node and per quantized channel; the ``.tflite`` file
(``flash``) holds int8 weights, int32 biases, per-channel quantization parameters and the
flatbuffer's tables. Both are predicted here without converting anything (microseconds per spec):

1. **The converted graph** (:func:`tflite_graph`): the operations the LiteRT-Torch converter emits
   for the network lightnas exports (:mod:`objectives._int8`: channels-last int8 input,
   BatchNorm folded, activations fused), in execution order: ``CONV_2D`` (``DEPTHWISE_CONV_2D``
   for a depthwise convolution or a dense one with a single input channel; a LightConv2d is two),
   an explicit ``PAD`` before a strided convolution whose symmetric PyTorch padding is not
   TFLite's ``SAME`` padding, ``ADD``, ``MEAN``, ``FULLY_CONNECTED``, and the tensors each reads
   and writes (the skip tensor of a residual block lives until its ``ADD``).
2. **The planned arena** (:func:`planned_bytes`): TFLM's ``GreedyMemoryPlanner``
   (tensorflow/lite/micro/memory_planner/greedy_memory_planner.cc) replayed exactly: every
   activation tensor a buffer, its size rounded up to 16 bytes, alive from the op that writes it
   (the input: from the start) to the last op that reads it (the output: to the end); buffers
   placed largest first (ties: the later tensor first, the planner's reverse fill and stable
   bubble sort) at the lowest offset that does not overlap a simultaneously live buffer. The
   reference kernels of the ``tflite-micro`` package request no scratch buffers for these ops.
   Checked equal to the measured head of the arena on every collected network (BENCHMARKS 12).
3. **The persistent part** and **the file**: linear in counts of the graph (tensors, ops by type,
   quantized output channels by op type, weight and bias bytes), with coefficients fitted to
   ``tflite_micro``'s recording allocator and to the stripped ``.tflite`` files of sampled
   networks (``bench/bench_deploy.py fit``; :data:`TAIL_COEFFS`, :data:`FLASH_COEFFS`).

``ram`` = persistent + max(planned, the planner's temporary records): the smallest arena
``tflite_micro.runtime.Interpreter`` allocates in, to 16 bytes. ``flash`` = the artifact's size in bytes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from search_spaces import ArchSpec, Block, Stem, rank_from_ratio
from search_spaces import Head as HeadSpec

__all__ = ["FLASH_COEFFS", "TAIL_COEFFS", "TflGraph", "TflOp", "block_graph", "flash_bytes", "head_graph", "op_counts",
           "persistent_bytes", "planned_bytes", "ram_bytes", "segment_parts", "stem_graph", "temporary_bytes",
           "tflite_graph"]

ALIGN = 16  # TFLM's MicroArenaBufferAlignment()


@dataclass(frozen=True)
class TflOp:
    """One operation of the converted graph: its kind, the activation tensors it reads and writes,
    and its constants (weights: int8 elements; ``channels``: quantized output channels of its
    weights, each with an int32 bias when ``bias``)."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    weights: int = 0
    channels: int = 0
    bias: bool = False
    out_elems: int = 0
    pad: int = 0
    zero_bias: bool = False


@dataclass(frozen=True)
class TflGraph:
    """Activation tensors (bytes, int8) in the converter's order, and the operations in execution order."""

    tensors: tuple[int, ...]
    ops: tuple[TflOp, ...]

    def counts(self) -> dict[str, float]:
        """The graph's counts that the persistent and file models are linear in: sums over its
        operations (:func:`op_counts`) and ``one``."""
        c: dict[str, float] = {"one": 1.0, "tensors": 1.0}  # the input tensor
        for op in self.ops:
            for k, v in op_counts(op).items():
                c[k] = c.get(k, 0.0) + v
        # The converter stores equal constants once: PADs of the same padding share one tensor, and the
        # zero biases it adds to the first convolution of LightConv2d pairs share one buffer per length.
        pads = [op.pad for op in self.ops if op.kind == "PAD"]
        c["tensors"] -= len(pads) - len(set(pads))
        zeros = [op.channels for op in self.ops if op.zero_bias]
        c["bias_bytes"] -= 4 * (sum(zeros) - sum(set(zeros)))
        return c


def op_counts(op: TflOp) -> dict[str, float]:
    """What one operation adds to the counts of its graph: itself and its output tensor, its kind, its
    constant tensors (weights, bias; PAD's paddings and MEAN's axes) and their bytes, its quantized
    channels (a scale and a zero point each, in the file), and the per-channel arrays its kernel keeps
    in the arena (output multiplier and shift, int32 each, 16-byte aligned)."""
    consts = (1 if op.weights else 0) + (1 if op.bias else 0) + (1 if op.kind in ("PAD", "MEAN") else 0)
    per_channel = op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    return {"ops": 1.0, f"n_{op.kind}": 1.0, "weight_bytes": float(op.weights),
            "bias_bytes": float(4 * op.channels if op.bias else 0), "tensors": float(1 + consts),
            "quant_channels": float(op.channels * (2 if op.bias else 1)),
            "ch_arrays": float(2 * _align(4 * op.channels) if per_channel else 0)}


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self) -> None:
        self.tensors: list[int] = []
        self.ops: list[TflOp] = []

    def tensor(self, c: int, h: int, w: int) -> int:
        self.tensors.append(c * h * w)
        return len(self.tensors) - 1

    def op(self, kind: str, inputs: tuple[int, ...], out: tuple[int, int, int], **const: int) -> int:
        t = self.tensor(*out)
        self.ops.append(TflOp(kind, inputs, t, out_elems=self.tensors[t], **const))  # type: ignore[arg-type]
        return t

    def conv(self, x: int, cin: int, cout: int, k: int, s: int, hw: tuple[int, int], *, rank_ratio: float = 1.0,
             depthwise: bool = False) -> tuple[int, tuple[int, int]]:
        """A ConvBNAct as converted; returns its output tensor and spatial size."""
        h, w = hw
        p = k // 2
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if p and (_same_pad(h, k, s) != (p, p) or _same_pad(w, k, s) != (p, p) or (oh, ow) != (-(-h // s), -(-w // s))):
            x = self.op("PAD", (x,), (cin, h + 2 * p, w + 2 * p), pad=p)
        if depthwise:
            return self.op("DEPTHWISE_CONV_2D", (x,), (cout, oh, ow), weights=cout * k * k, channels=cout,
                           bias=True), (oh, ow)
        rank = rank_from_ratio(rank_ratio, k * k * cin, cout)
        first = cout if rank is None else rank
        kind = "DEPTHWISE_CONV_2D" if cin == 1 else "CONV_2D"
        y = self.op(kind, (x,), (first, oh, ow), weights=first * cin * k * k, channels=first, bias=True,
                    zero_bias=rank is not None)  # the first of a LightConv2d pair has no bias: a zero one is added
        if rank is not None:
            y = self.op("DEPTHWISE_CONV_2D" if rank == 1 else "CONV_2D", (y,), (cout, oh, ow), weights=cout * rank,
                        channels=cout, bias=True)
        return y, (oh, ow)

    def linear(self, x: int, fin: int, fout: int, *, bias: bool = True) -> int:
        return self.op("FULLY_CONNECTED", (x,), (fout, 1, 1), weights=fout * fin, channels=fout, bias=bias)

    def block(self, x: int, cin: int, b: Block, hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        r = b.rank_ratio
        if b.type == "conv":
            return self.conv(x, cin, b.out_channels, b.kernel, b.stride, hw, rank_ratio=r)
        if b.type in ("basic", "bottleneck"):
            assert b.mid_channels is not None
            if b.stride == 1 and cin == b.out_channels:
                skip = x
            else:  # the shortcut runs first (search_spaces._build)
                skip, _ = self.conv(x, cin, b.out_channels, 1, b.stride, hw)
            if b.type == "basic":
                y, ohw = self.conv(x, cin, b.mid_channels, b.kernel, b.stride, hw, rank_ratio=r)
                y, ohw = self.conv(y, b.mid_channels, b.out_channels, b.kernel, 1, ohw, rank_ratio=r)
            else:
                assert b.mid2_channels is not None
                y, ohw = self.conv(x, cin, b.mid_channels, 1, 1, hw, rank_ratio=r)
                y, ohw = self.conv(y, b.mid_channels, b.mid2_channels, b.kernel, b.stride, ohw, rank_ratio=r)
                y, ohw = self.conv(y, b.mid2_channels, b.out_channels, 1, 1, ohw, rank_ratio=r)
            return self.op("ADD", (y, skip), (b.out_channels, *ohw)), ohw
        assert b.type == "inverted" and b.mid_channels is not None
        mid = b.mid_channels
        y = x
        if mid != cin:
            y, _ = self.conv(x, cin, mid, 1, 1, hw, rank_ratio=r)
        y, ohw = self.conv(y, mid, mid, b.kernel, b.stride, hw, depthwise=True)
        y, ohw = self.conv(y, mid, b.out_channels, 1, 1, ohw, rank_ratio=r)
        if b.is_residual(cin):
            y = self.op("ADD", (x, y), (b.out_channels, *ohw))
        return y, ohw


def stem_graph(stem: Stem, input_shape: tuple[int, int, int]) -> tuple[list[TflOp], tuple[int, int]]:
    """The converted operations of the stem (tensor 0 is the input) and the spatial size after it."""
    g = _Builder()
    c, h, w = input_shape
    x = g.tensor(c, h, w)
    _, hw = g.conv(x, c, stem.out_channels, stem.kernel, stem.stride, (h, w))
    return g.ops, hw


def block_graph(cin: int, block: Block, hw: tuple[int, int]) -> tuple[list[TflOp], tuple[int, int]]:
    """The converted operations of one block (tensor 0 is its input) and the spatial size after it."""
    g = _Builder()
    x = g.tensor(cin, *hw)
    _, ohw = g.block(x, cin, block, hw)
    return g.ops, ohw


def head_graph(head: HeadSpec, cin: int, hw: tuple[int, int], num_classes: int) -> list[TflOp]:
    """The converted operations of the head (tensor 0 is its input)."""
    g = _Builder()
    x = g.tensor(cin, *hw)
    x = g.op("MEAN", (x,), (cin, 1, 1))
    width = cin
    if head.hidden is not None:
        rank = rank_from_ratio(head.rank_ratio, cin, head.hidden)
        if rank is None:
            x = g.linear(x, cin, head.hidden)
        else:
            x = g.linear(x, cin, rank, bias=False)
            x = g.linear(x, rank, head.hidden)
        width = head.hidden
    g.linear(x, width, num_classes)
    return g.ops


@functools.lru_cache(maxsize=4096)
def tflite_graph(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> TflGraph:
    """The graph the converter emits for ``spec`` (see the module doc)."""
    c, h, w = input_shape
    tensors = [c * h * w]
    ops: list[TflOp] = []

    def append(seg: list[TflOp], seg_in: int) -> None:
        """Renumber a segment's tensors (its 0 is ``seg_in``) into the graph's."""
        base = len(tensors) - 1
        for op in seg:
            ins = tuple(seg_in if t == 0 else base + t for t in op.inputs)
            tensors.append(op.out_elems)
            ops.append(TflOp(op.kind, ins, len(tensors) - 1, op.weights, op.channels, op.bias, op.out_elems, op.pad,
                             op.zero_bias))

    seg, hw = stem_graph(spec.stem, input_shape)
    append(seg, 0)
    cin = spec.stem.out_channels
    for b in spec.blocks:
        seg, hw = block_graph(cin, b, hw)
        append(seg, len(tensors) - 1)
        cin = b.out_channels
    append(head_graph(spec.head, cin, hw, num_classes), len(tensors) - 1)
    return TflGraph(tuple(tensors), tuple(ops))


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def planned_bytes(graph: TflGraph) -> int:
    """The non-persistent arena TFLM's greedy memory planner lays out for the graph (see the module doc)."""
    n_ops = len(graph.ops)
    first = [-1] * len(graph.tensors)
    last = [-1] * len(graph.tensors)
    first[0] = 0
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            last[t] = i
        if first[op.output] < 0:
            first[op.output] = i
    last[graph.ops[-1].output] = n_ops - 1
    sizes = [_align(b) for b in graph.tensors]
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], -i))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last) by offset
    high = 0
    for i in order:
        size, f, la = sizes[i], first[i], max(last[i], first[i])
        offset = 0
        for off, sz, pf, pl in placed:
            if pf <= la and f <= pl:
                if off - offset >= size:
                    break
                offset = max(offset, off + sz)
        placed.append((offset, size, f, la))
        placed.sort(key=lambda e: e[0])
        high = max(high, offset + size)
    return high


#: The fitted coefficients (``bench/bench_deploy.py fit --write``), with the fit's description.
COEFFS_FILE = Path(__file__).with_name("tflm_model.json")
_COEFFS = json.loads(COEFFS_FILE.read_text())
#: Persistent arena bytes, linear in the graph's counts.
TAIL_COEFFS: dict[str, float] = _COEFFS["tail"]
#: ``.tflite`` bytes, linear in the graph's counts.
FLASH_COEFFS: dict[str, float] = _COEFFS["flash"]


def _linear(coeffs: dict[str, float], counts: dict[str, float]) -> int:
    return int(round(sum(v * counts.get(k, 0.0) for k, v in coeffs.items())))


def segment_parts(ops: list[TflOp] | tuple[TflOp, ...]) -> tuple[float, float]:
    """What a run of operations adds to the file and to the persistent arena (their terms of
    :data:`FLASH_COEFFS` and :data:`TAIL_COEFFS` but the constant): ``flash`` and ``ram``'s persistent part
    are sums over a network's segments (the exact minimum of ``flash`` over a space uses it)."""
    flash = tail = 0.0
    for op in ops:
        c = op_counts(op)
        flash += sum(v * c.get(k, 0.0) for k, v in FLASH_COEFFS.items() if k != "one")
        tail += sum(v * c.get(k, 0.0) for k, v in TAIL_COEFFS.items() if k != "one")
    return flash, tail


#: The arena's head holds, while the interpreter plans, temporary records of every tensor (its allocation
#: info) and of every planned buffer (the planner's requirements, sorted lists and offsets), freed once the
#: plan is committed: the smallest arena that allocates is persistent + max(planned, this). It matters only
#: for the smallest networks (a few KiB of activations). Fitted to 14 such networks measured with
#: tflite-micro (``bench/bench_deploy.py tiny``: exact or 8 bytes over on every one).
TEMP_COEFFS = {"one": 312.0, "tensors": 32.0, "ops": 40.0}


def temporary_bytes(graph: TflGraph) -> int:
    """The head of the arena the interpreter needs while it plans (see :data:`TEMP_COEFFS`)."""
    return _linear(TEMP_COEFFS, graph.counts())


def persistent_bytes(graph: TflGraph) -> int:
    """The persistent (tail) part of the arena: tensor and node structures, per-channel quantization data."""
    return _align(_linear(TAIL_COEFFS, graph.counts()))


def ram_bytes(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """The TFLM arena the int8 artifact of ``spec`` needs (planned + persistent), bytes."""
    g = tflite_graph(spec, input_shape, num_classes)
    return max(planned_bytes(g), temporary_bytes(g)) + persistent_bytes(g)


def flash_bytes(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """The size of the int8 ``.tflite`` artifact of ``spec``, bytes."""
    return _linear(FLASH_COEFFS, tflite_graph(spec, input_shape, num_classes).counts())
