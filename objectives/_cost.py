"""Hardware-cost model: per-layer MACs, params, bytes moved, live memory, latency, energy.

The network of a spec is built on PyTorch's ``meta`` device (shapes, no storage, no
initialisation) and run once with forward hooks, so the counts are those of the very model
``build_model`` trains: nothing is re-derived by hand. One row per executed operation:

* ``conv`` / ``dwconv`` / ``linear``: MACs = output elements x (input channels / groups) x
  kernel area (x input features for linear), the convention of thop and of the papers that
  quote ResNet-56 at 125 MFLOPs. BatchNorm and the activation are fused into the preceding
  convolution, as deployment runtimes do (their parameters are counted, no extra traffic).
* ``add``: a residual addition (reads two tensors, writes one).
* ``pool``: global average pooling.

Bytes moved by a row (``traffic``) are its weights read once + its input read + its output
written, per inference (batch 1); ``mem_traffic_bytes`` is their sum over rows, the memory
term of FS-DNN's objective (SEEDS.md section 1). ``live`` is the activation memory alive
while the row runs: its input, its output, and the skip tensor of the enclosing residual
block when that is a different tensor (residual blocks compute their shortcut first, see
``search_spaces._build``); ``peak_activation_bytes`` is the largest ``live`` (MCUNet's
bottleneck on microcontrollers, Lin et al., NeurIPS 2020).

Latency is a per-layer roofline (Williams, Waterman, Patterson, CACM 52(4), 2009):
``max(macs / peak_macs_per_s, traffic / bandwidth) + layer_overhead``. Energy is
``macs x energy_per_mac + traffic x energy_per_byte`` (the decomposition of Horowitz,
ISSCC 2014, "Computing's energy problem"). The numbers come from the device profile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces import ArchSpec, build_model, check_input_shape

from ._devices import DeviceProfile, get_device

__all__ = ["RESOURCES", "CostReport", "LayerCost", "estimate_cost", "trace_layers"]

#: Resources a cost report totals, with their unit. Budgets and objectives use these names.
RESOURCES: dict[str, str] = {
    "macs": "multiply-accumulates per inference",
    "flops": "floating-point operations (2 x MACs)",
    "params": "parameters",
    "weight_bytes": "bytes of weights at the device's data type",
    "activation_bytes": "bytes of all activations produced (input included)",
    "mem_traffic_bytes": "bytes read and written per inference (weights once, every layer's input and output)",
    "peak_activation_bytes": "largest set of live activations, skip tensors included",
    "latency_ms": "roofline latency on the device profile, milliseconds",
    "energy_uj": "energy on the device profile, microjoules",
}


@dataclass(frozen=True)
class _Op:
    """Device-independent record of one operation, in element counts."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    in_elems: int
    out_elems: int
    live_elems: int


@dataclass(frozen=True)
class LayerCost:
    """One row of a cost report (bytes at the device's data type)."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    params: int
    weight_bytes: int
    traffic_bytes: int
    live_bytes: int
    latency_ms: float
    energy_uj: float


@dataclass(frozen=True)
class CostReport:
    """Per-layer rows and totals for one spec, input shape and device.

    ``report["flops"]`` and ``report.totals`` give the totals named in ``RESOURCES``.
    """

    spec_hash: str
    device: str
    input_shape: tuple[int, int, int]
    num_classes: int
    rows: tuple[LayerCost, ...]
    totals: dict[str, float] = field(hash=False)
    depth: int = 0

    def __getitem__(self, resource: str) -> float:
        return self.totals[resource]

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
            d["rows"] = [asdict(r) for r in self.rows]
        return d


def _elems(shape: Sequence[int]) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@functools.lru_cache(maxsize=4096)
def trace_layers(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> tuple[_Op, ...]:
    """Run the spec's model once on the meta device and record every operation (batch 1)."""
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes)
    model.eval()
    ops: list[_Op] = []
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
            ops[-1] = _Op(last.name, last.kind, last.in_shape, last.out_shape, last.macs,
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
        ops.append(_Op(name, kind, tuple(x.shape[1:]), tuple(out.shape[1:]), macs, params,
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
        ops.append(_Op(f"{names[m]}.add", "add", shape, shape, 0, 0, 2 * oe, oe, 2 * oe))

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
                  device: str | DeviceProfile = "rpi4") -> CostReport:
    """Cost report of ``spec`` for one input of ``input_shape`` on a device profile.

    No training and no real tensors: milliseconds per spec (cached per spec and shape).

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
    prof = device if isinstance(device, DeviceProfile) else get_device(device)
    ops = trace_layers(spec, shape, num_classes)
    bpe = prof.bytes_per_element
    rows = []
    input_bytes = _elems(shape) * bpe
    for op in ops:
        wb = op.params * bpe
        traffic = wb + (op.in_elems + op.out_elems) * bpe
        compute_s = op.macs / prof.peak_macs_per_s
        memory_s = traffic / prof.mem_bandwidth_bytes_per_s
        lat = max(compute_s, memory_s) * 1e3 + prof.layer_overhead_us * 1e-3
        energy = (op.macs * prof.energy_pj_per_mac + traffic * prof.energy_pj_per_byte) * 1e-6
        rows.append(LayerCost(op.name, op.kind, op.in_shape, op.out_shape, op.macs, op.params, wb,
                              traffic, op.live_elems * bpe, lat, energy))
    macs = sum(r.macs for r in rows)
    params = sum(r.params for r in rows)
    totals = {
        "macs": float(macs),
        "flops": float(2 * macs),
        "params": float(params),
        "weight_bytes": float(params * bpe),
        "activation_bytes": float(input_bytes + sum(op.out_elems for op in ops) * bpe),
        "mem_traffic_bytes": float(sum(r.traffic_bytes for r in rows)),
        "peak_activation_bytes": float(max(r.live_bytes for r in rows)),
        "latency_ms": sum(r.latency_ms for r in rows),
        "energy_uj": sum(r.energy_uj for r in rows),
    }
    return CostReport(spec.hash, prof.name, shape, num_classes, tuple(rows), totals, spec.depth)
