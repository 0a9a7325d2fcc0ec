"""Hardware-cost model: per-layer MACs, params, bytes moved, live memory, latency, energy.

The operations of a spec come from its shapes alone (:mod:`objectives.cost._analytic`, no model
built): a few hundred microseconds per spec, so budget-first search can look at thousands of
candidates. The reference, :func:`trace_layers`, builds the network on PyTorch's ``meta`` device
(shapes, no storage) and records every operation with forward hooks; the tests hold the two
equal row for row (``estimate_cost(..., method="trace")`` uses it). One row per operation:

* ``conv`` / ``dwconv`` / ``linear``: MACs = output elements x (input channels / groups) x
  kernel area (x input features for linear), the convention of thop and of the papers that
  quote ResNet-56 at 125 MFLOPs. BatchNorm and the activation are fused into the preceding
  convolution, as deployment runtimes do (their parameters are counted, no extra traffic).
* ``add``: a residual addition (reads two tensors, writes one).
* ``pool``: global average pooling.

Bytes moved by a row (``traffic``) are its weights read once + its input read + its output
written, per inference (batch 1); ``mem_traffic_bytes`` is their sum over rows, the memory
term of FS-DNN's objective (Li et al., Applied Intelligence 53, 2023). ``live`` is the activation memory alive
while the row runs: its input, its output, and the skip tensor of the enclosing residual
block when that is a different tensor (residual blocks compute their shortcut first, see
``search_spaces._build``); ``peak_activation_bytes`` is the largest ``live`` (MCUNet's
bottleneck on microcontrollers, Lin et al., NeurIPS 2020).

Latency, for a profile with an operator-level model (``[opmodel]``, :mod:`objectives.cost._opmodel`):
each operation's predicted latency as a fused kernel of its operator class and shape (nn-Meter's
per-kernel sum, Zhang et al., MobiSys 2021; the model's compute and memory terms are the
roofline's, Williams, Waterman, Patterson, CACM 52(4), 2009), or the profile's measured value
where its lookup table (``[lut]``) lists the layer. For a profile without one, a per-layer
roofline ``max(macs / peak_macs_per_s, traffic / bandwidth) + layer_overhead``.

Energy is what a device draws: ``board_power_w x latency`` (the whole board's power over the
run time, as a power meter on its supply sees it; HW-NAS-Bench's Jetson energy and MLPerf
Tiny's are measured so) plus the dynamic energy ``macs x energy_per_mac + traffic x
energy_per_byte`` (the decomposition of Horowitz, ISSCC 2014, "Computing's energy problem").
The numbers come from the device profile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces import ArchSpec, SpecError, build_model, check_input_shape

from ._analytic import Op, analytic_layers
from ._devices import DeviceProfile, get_device
from ._opmodel import layer_from_op, op_classes

__all__ = ["RESOURCES", "RUNTIME_RESOURCES", "CostReport", "Op", "estimate_cost", "reference_count",
           "runtime_totals", "trace_layers"]

#: Resources a cost report totals, with their unit. Budgets and objectives use these names.
RESOURCES: dict[str, str] = {
    "macs": "multiply-accumulates per inference",
    "flops": "floating-point operations (2 x MACs)",
    "params": "parameters",
    "weight_bytes": "bytes of weights at the device's data type",
    "activation_bytes": "bytes of all activations produced (input included)",
    "mem_traffic_bytes": "bytes read and written per inference (weights once, every layer's input and output)",
    "peak_activation_bytes": "largest set of live activations, skip tensors included",
    "latency_ms": "latency on the device profile (its operator-level model, else a roofline), milliseconds",
    "energy_uj": "energy on the device profile (board power x latency + compute and memory), microjoules",
    "ram_bytes": "arena the int8 artifact needs in the profile's device runtime (TFLM: activations as its memory "
                 "planner lays them out + persistent structures), bytes; profiles with a memory_runtime only",
    "flash_bytes": "size of the int8 artifact (.tflite file), bytes; profiles with a memory_runtime only",
}
#: Resources a profile defines only when it names its device runtime (``memory_runtime``).
RUNTIME_RESOURCES = ("ram_bytes", "flash_bytes")


#: The fields of a cost report's row (``CostReport.to_dict``): an operation's and its cost's.
ROW_FIELDS = ("name", "kind", "in_shape", "out_shape", "macs", "params", "weight_bytes", "traffic_bytes", "live_bytes",
              "latency_ms", "energy_uj")


@dataclass(frozen=True)
class CostReport:
    """Totals for one spec, input shape and device, and (``rows``, built when first read) each
    operation (:class:`Op`) with its cost on the device (bytes at the device's data type).

    ``report["flops"]`` and ``report.totals`` give the totals named in ``RESOURCES``.
    """

    spec_hash: str
    device: str
    input_shape: tuple[int, int, int]
    num_classes: int
    totals: dict[str, float] = field(hash=False)
    depth: int = 0
    ops: tuple[Op, ...] = field(default=(), repr=False, compare=False)
    profile: DeviceProfile | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, resource: str) -> float:
        return self.totals[resource]

    @functools.cached_property
    def rows(self) -> tuple[Op, ...]:
        assert self.profile is not None
        prof, bpe = self.profile, self.profile.bytes_per_element
        out = []
        classes = op_classes(self.ops) if _layered(prof) else (None,) * len(self.ops)
        for op, cls in zip(self.ops, classes, strict=True):
            traffic, lat, energy = op_terms(op, prof, cls)
            out.append(op._replace(weight_bytes=op.params * bpe, traffic_bytes=traffic, live_bytes=op.live_elems * bpe,
                                   latency_ms=lat, energy_uj=energy))
        return tuple(out)

    def to_dict(self, *, rows: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "spec_hash": self.spec_hash,
            "device": self.device,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "depth": self.depth,
            "totals": dict(self.totals),
        }
        if rows:
            d["rows"] = [{f: getattr(r, f) for f in ROW_FIELDS} for r in self.rows]
        return d


def _layered(prof: DeviceProfile) -> bool:
    """Whether the profile costs operations by operator class (model or lookup table)."""
    return prof.opmodel is not None or bool(prof.lut)


def op_terms(op: Op, prof: DeviceProfile, cls: str | None = None,
             memo: dict[tuple[object, ...], float] | None = None) -> tuple[int, float, float]:
    """Bytes moved, latency (ms) and energy (uJ) of one operation on a device. ``cls`` is its
    operator class (``objectives.cost._opmodel.op_classes`` of the operations around it), needed by
    profiles with an operator-level model or a lookup table; ``memo`` is the profile's
    ``layer_latency_memo()`` when the caller costs many operations."""
    bpe = prof.bytes_per_element
    traffic = (op.params + op.in_elems + op.out_elems) * bpe
    if cls is not None and _layered(prof):
        if memo is None:
            memo = prof.layer_latency_memo()
        key = (cls, *op[1:8])  # everything of the operation but its name and live set
        lat = memo.get(key)  # type: ignore[assignment]
        if lat is None:
            layer = layer_from_op(op, cls)
            hit = prof.lut.get(layer.signature()) if prof.lut else None
            if hit is not None:
                lat = hit
            elif prof.opmodel is not None:
                lat = prof.opmodel.layer_ms(layer, bpe)
            else:
                lat = _roofline_ms(op, traffic, prof)
            memo[key] = lat
    else:
        lat = _roofline_ms(op, traffic, prof)
    # board power (W) x latency (ms) = mJ -> x 1e3 uJ; dynamic energy in pJ -> x 1e-6 uJ
    dynamic = (op.macs * prof.energy_pj_per_mac + traffic * prof.energy_pj_per_byte) * 1e-6
    energy = prof.board_power_w * lat * 1e3 + dynamic
    return traffic, lat, energy


def _roofline_ms(op: Op, traffic: int, prof: DeviceProfile) -> float:
    compute_s = op.macs / prof.peak_macs_per_s
    memory_s = traffic / prof.mem_bandwidth_bytes_per_s
    return max(compute_s, memory_s) * 1e3 + prof.layer_overhead_us * 1e-3


#: The parts of a segment of operations (a stem, a stage, a head) that make up the totals: sums
#: (``macs``, ``params``, ``out_elems``, ``traffic``, ``latency_ms``, ``energy_uj``) and the
#: largest live set (``live``), so totals of a network are sums and a max over its segments.
SEGMENT_FIELDS = ("macs", "params", "out_elems", "traffic", "latency_ms", "energy_uj", "live")


def segment_terms(ops: Sequence[Op], prof: DeviceProfile) -> tuple[float, ...]:
    """The :data:`SEGMENT_FIELDS` of a run of operations."""
    macs = params = out_elems = traffic = live = 0
    lat = energy = 0.0
    layered = _layered(prof)
    classes = op_classes(ops) if layered else (None,) * len(ops)
    memo = prof.layer_latency_memo() if layered else None
    for op, cls in zip(ops, classes, strict=True):
        t, la, en = op_terms(op, prof, cls, memo)
        macs += op.macs
        params += op.params
        out_elems += op.out_elems
        traffic += t
        lat += la
        energy += en
        live = max(live, op.live_elems)
    return (macs, params, out_elems, traffic, lat, energy, live)


def totals_from_terms(terms: Sequence[float], input_elems: int, prof: DeviceProfile) -> dict[str, float]:
    """Totals of ``RESOURCES`` from the :data:`SEGMENT_FIELDS` of a whole network."""
    macs, params, out_elems, traffic, lat, energy, live = terms
    bpe = prof.bytes_per_element
    return {
        "macs": float(macs),
        "flops": float(2 * macs),
        "params": float(params),
        "weight_bytes": float(params * bpe),
        "activation_bytes": float((input_elems + out_elems) * bpe),
        "mem_traffic_bytes": float(traffic),
        "peak_activation_bytes": float(live * bpe),
        "latency_ms": float(lat),
        "energy_uj": float(energy),
    }


def runtime_totals(spec: ArchSpec, shape: tuple[int, int, int], num_classes: int,
                   prof: DeviceProfile) -> dict[str, float]:
    """``ram_bytes`` and ``flash_bytes`` of the int8 artifact in the profile's runtime (:mod:`objectives.cost._tflm`);
    nothing for a profile without one."""
    if prof.memory_runtime != "tflm":
        return {}
    from ._tflm import flash_bytes, ram_bytes

    return {"ram_bytes": float(ram_bytes(spec, shape, num_classes)),
            "flash_bytes": float(flash_bytes(spec, shape, num_classes))}


def _elems(shape: Sequence[int]) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@functools.lru_cache(maxsize=4096)
def trace_layers(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> tuple[Op, ...]:
    """Run the spec's model once on the meta device and record every operation (batch 1)."""
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes)
    model.eval()
    ops: list[Op] = []
    # Stack of residual-block contexts: [input tensor id, skip tensor id, skip elements].
    blocks: list[list[Any]] = []
    names = {m: n for n, m in model.named_modules()}

    def held(x: torch.Tensor) -> int:
        if not blocks or blocks[-1][1] is None:
            return 0
        return 0 if id(x) == blocks[-1][1] else blocks[-1][2]

    def leaf_hook(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = args[0]
        name = names[m]
        if isinstance(m, nn.BatchNorm2d):
            last = ops[-1]
            ops[-1] = Op(last.name, last.kind, last.in_shape, last.out_shape, last.macs,
                          last.params + sum(p.numel() for p in m.parameters()),
                          last.in_elems, last.out_elems, last.live_elems)
            return
        ie, oe = x.numel(), out.numel()
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs = oe * (m.in_channels // m.groups) * kh * kw
            kind = "dwconv" if m.groups > 1 else "conv"
        elif isinstance(m, nn.Linear):
            macs, kind = oe * m.in_features, "linear"
        else:
            macs, kind = 0, "pool"
        ops.append(Op(name, kind, tuple(x.shape[1:]), tuple(out.shape[1:]), macs, params,
                       ie, oe, ie + oe + held(x)))

    def block_pre(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        shortcut = getattr(m, "shortcut", None)
        if shortcut is None or isinstance(shortcut, nn.Identity):
            blocks.append([id(x), id(x), x.numel()])  # identity skip: the input itself
        else:
            blocks.append([id(x), None, 0])  # set when the shortcut has run

    def shortcut_post(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        blocks[-1][1], blocks[-1][2] = id(out), out.numel()

    def block_post(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        blocks.pop()
        oe = out.numel()
        shape = tuple(out.shape[1:])
        ops.append(Op(f"{names[m]}.add", "add", shape, shape, 0, 0, 2 * oe, oe, 2 * oe))

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Dropout)):
            # Shape-preserving and not counted; on the meta device these are slow Python
            # decompositions (relu alone was 40% of a trace).
            m.forward = _identity  # type: ignore[method-assign,assignment]
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)):
            handles.append(m.register_forward_hook(leaf_hook))
        if getattr(m, "residual", False):
            handles.append(m.register_forward_pre_hook(block_pre))
            handles.append(m.register_forward_hook(block_post))
            sc = getattr(m, "shortcut", None)
            if sc is not None and not isinstance(sc, nn.Identity):
                handles.append(sc.register_forward_hook(shortcut_post))
    with torch.no_grad():
        model(torch.empty(1, *input_shape, device="meta"))
    for h in handles:
        h.remove()
    return tuple(ops)


def estimate_cost(spec: ArchSpec, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                  device: str | DeviceProfile = "rpi4", *, method: str = "analytic") -> CostReport:
    """Cost report of ``spec`` for one input of ``input_shape`` on a device profile.

    No training, no model and no tensors: the operations come from the spec's shapes (cached
    per spec and shape). ``method="trace"`` builds the model on the meta device and traces it
    instead: the reference the analytic path is tested against, many times slower.

    Args:
        spec: the architecture.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: width of the classifier.
        device: a profile name (see ``list_devices``), a TOML path, or a ``DeviceProfile``.

    Returns:
        A :class:`CostReport` with one row per operation and totals for every name in
        ``RESOURCES``.

    Raises:
        SpecError: invalid input shape or class count. DeviceError: unknown profile.

    Example:
        >>> from search_spaces import get_space, sample_spec
        >>> report = estimate_cost(sample_spec(get_space("resnet"), 0), (3, 32, 32), 10)
        >>> report["flops"] == 2 * report["macs"]
        True
    """
    shape = check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    prof = device if isinstance(device, DeviceProfile) else get_device(device)
    if method == "analytic":
        ops = analytic_layers(spec, shape, num_classes)
    elif method == "trace":
        ops = trace_layers(spec, shape, num_classes)
    else:
        raise ValueError(f"method: got {method!r}, accepted: analytic, trace")
    totals = totals_from_terms(segment_terms(ops, prof), _elems(shape), prof)
    totals.update(runtime_totals(spec, shape, num_classes, prof))
    return CostReport(spec.hash, prof.name, shape, num_classes, totals, spec.depth, ops, prof)


def reference_count(model: torch.nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """MACs of the convolutions and linear layers of ``model`` for one input of ``input_shape``, and
    its parameters, as thop counts them (Ligeng Zhu, pytorch-OpCounter, github.com/Lyken17/pytorch-OpCounter).

    The analytic cost model is tested against this count (and ``nas hardware cost --check``
    shows both); it takes any ``nn.Module``, so a hand-made baseline can be counted the same way.

    Example:
        >>> reference_count(torch.nn.Conv2d(3, 8, 3, padding=1), (3, 32, 32))["macs"]
        221184.0
    """
    import thop

    x = torch.zeros(1, *input_shape)
    was = model.training
    model.eval()
    try:
        _total, _params, info = thop.profile(model, inputs=(x,), verbose=False, ret_layer_info=True)
    finally:
        model.train(was)
    kinds = {name: m for name, m in model.named_modules()}

    def macs(tree: dict, prefix: str = "") -> float:
        total = 0.0
        for name, (ops, _params, sub) in tree.items():
            full = prefix + name
            if isinstance(kinds.get(full), (torch.nn.Conv2d, torch.nn.Linear)):
                total += float(ops)
            else:
                total += macs(sub, full + ".")
        return total

    if isinstance(model, (torch.nn.Conv2d, torch.nn.Linear)):
        conv_linear = float(_total)
    else:
        conv_linear = macs(info)
    return {"macs": conv_linear, "params": float(sum(p.numel() for p in model.parameters()))}
