"""Operator-level latency model: per operator class, an attained throughput that depends on the
operator's shape, plus a per-call overhead; fitted to measured networks by robust regression in
log space.

Why not the roofline alone: a roofline with datasheet peaks (Williams, Waterman, Patterson,
"Roofline: an insightful visual performance model", CACM 52(4), 2009) assumes every layer
reaches the device's peak. Small layers do not: a 1x1 convolution with 8 output channels on
an 8x8 map leaves most of a SIMD unit and most of a GEMM tile idle, a depthwise convolution is
bound by memory and loop overhead, and every call pays the runtime's dispatch. nn-Meter (Zhang
et al., "nn-Meter: towards accurate latency prediction of deep-learning model inference on
diverse edge devices", MobiSys 2021) predicts a network's latency as the sum of its fused
kernels' latencies (conv + BN + activation is one kernel), each predicted from the kernel's
type and shape. This model keeps that decomposition and replaces nn-Meter's learned per-kernel
regressors by a closed form with a handful of numbers per operator class, so it stays analytic
(microseconds per network) and can be fitted from a few dozen whole-network timings.

The form, for a layer (a fused kernel) ``l`` of operator class ``c``::

    t_l = o_c + W_l / (P_c * s(M_l; m_c) * s(N_l; n_c) * s(K_l; k_c)) + B_l / beta
    s(x; h) = x / (x + h)

* ``W_l``: work, multiply-accumulates (convolutions, linear layers) or elements (pooling,
  residual additions);
* ``M_l``, ``N_l``, ``K_l``: the dimensions of the layer as a matrix product (output channels
  per group, output positions, reduction length = input channels per group x kernel area);
  depthwise: channels, positions, kernel area; linear: outputs, 1, inputs; pooling and
  additions: channels, input positions, 1 (a dimension that is 1 for a whole class is not
  fitted: its half-saturation size would only rescale ``P_c``);
* ``P_c``: the class's peak attained throughput (work/s), approached as every dimension grows
  well past its half-saturation size ``m_c``, ``n_c``, ``k_c`` (``s`` rises with the size and
  saturates at 1: the roofline's compute ceiling, reached only by large enough operators);
* ``o_c``: per-call overhead (dispatch, loop set-up), the latency of an empty call;
* ``B_l / beta``: bytes moved (weights + input + output) over the attained bandwidth, the
  roofline's memory term; added to the compute term rather than maxed with it (no overlap
  assumed, and the sum is smooth for fitting).

Operator classes (:data:`OP_CLASSES`): ``conv`` (dense k x k, k > 1), ``conv1x1``, ``dwconv``
(depthwise), ``gconv`` (grouped, neither dense nor depthwise: not produced by an ``ArchSpec``,
only by measured networks such as FBNet's), ``linear``, ``lowrank`` (both convolutions of a
LightConv2d pair: the k x k one to rank ``r`` and the 1x1 one from ``r``; they run as two
kernels, with one thin dimension each), ``pool`` (pooling and other element-wise operators),
``add`` (residual additions).

Fitting (:func:`fit_opmodel`): first a non-negative least-squares fit of the model without the
saturation (``o_c``, ``1/P_c``, ``1/beta`` enter linearly), relative errors; then every number
in log space (so each stays positive) by ``scipy.optimize.least_squares`` on ``ln(predicted) -
ln(measured)`` per network with the ``soft_l1`` loss (robust: a few disturbed timings do not
pull the fit), and a weak pull of the half-saturation sizes towards 1 (no saturation) so that
numbers the data cannot identify stay neutral. A class absent from the data takes the numbers
of its nearest fitted class (:data:`FALLBACK`) and is marked ``fitted = false``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._analytic import Op

__all__ = ["OP_CLASSES", "FitResult", "Layer", "OpClassParams", "OpModel", "add_layer", "conv_layer",
           "cross_validate", "fit_opmodel", "kendall_tau", "layers_from_ops", "linear_layer", "op_classes",
           "pool_layer", "predict_many", "signature"]

OP_CLASSES = ("conv", "conv1x1", "dwconv", "gconv", "linear", "lowrank", "pool", "add")
#: Classes whose work is elements, not multiply-accumulates.
ELEMENT_CLASSES = ("pool", "add")
FORM = "opmodel-1"


class Layer(NamedTuple):
    """One operator (a fused kernel) in device-independent form, batch 1.

    ``h, w``: input spatial size; ``oh, ow``: output spatial size (1 for linear layers).
    """

    op: str
    cin: int
    cout: int
    h: int
    w: int
    oh: int
    ow: int
    kernel: int
    stride: int
    groups: int
    macs: int
    params: int
    in_elems: int
    out_elems: int

    def dims(self) -> tuple[float, float, float, float]:
        """``(W, M, N, K)`` of the model's form (see the module docstring)."""
        if self.op in ELEMENT_CLASSES:  # positions read: a global pool reads h x w, writes one
            return float(self.in_elems), float(self.cout), float(self.h * self.w), 1.0
        if self.op == "linear":
            return float(self.macs), float(self.cout), 1.0, float(self.cin)
        if self.op == "dwconv":
            return float(self.macs), float(self.cout), float(self.oh * self.ow), float(self.kernel * self.kernel)
        g = max(1, self.groups)
        return (float(self.macs), float(self.cout // g or 1), float(self.oh * self.ow),
                float((self.cin // g or 1) * self.kernel * self.kernel))

    def signature(self) -> str:
        """Lookup-table key: operator, input shape, output channels, kernel, stride, groups. A
        LightConv2d pair's convolutions are keyed as the ordinary convolutions a runtime runs."""
        op = self.op if self.op != "lowrank" else ("conv1x1" if self.kernel == 1 else "conv")
        return signature(op, self.cin, self.h, self.w, self.cout, self.kernel, self.stride, self.groups)


def signature(op: str, cin: int, h: int, w: int, cout: int, kernel: int, stride: int, groups: int) -> str:
    """The lookup-table key of a layer (see :meth:`Layer.signature`)."""
    return f"{op}:{cin}x{h}x{w}:{cout}:k{kernel}:s{stride}:g{groups}"


def _out(size: int, kernel: int, stride: int, pad: int | None = None) -> int:
    p = kernel // 2 if pad is None else pad
    return (size + 2 * p - kernel) // stride + 1


def conv_layer(cin: int, cout: int, h: int, w: int, kernel: int, stride: int = 1, groups: int = 1, *,
               op: str | None = None, oh: int | None = None, ow: int | None = None, bias: bool = False) -> Layer:
    """A convolution (padding ``kernel // 2`` unless ``oh``/``ow`` are given); the class is
    ``dwconv`` when ``groups == cin == cout``, ``gconv`` for other groups, else ``conv1x1`` or
    ``conv`` by kernel, unless ``op`` says otherwise."""
    oh = _out(h, kernel, stride) if oh is None else oh
    ow = _out(w, kernel, stride) if ow is None else ow
    if op is None:
        if groups > 1:
            op = "dwconv" if groups == cin == cout else "gconv"
        else:
            op = "conv1x1" if kernel == 1 else "conv"
    out = cout * oh * ow
    macs = out * (cin // groups) * kernel * kernel
    params = cout * (cin // groups) * kernel * kernel + (cout if bias else 0) + 2 * cout  # + folded BN
    return Layer(op, cin, cout, h, w, oh, ow, kernel, stride, groups, macs, params, cin * h * w, out)


def linear_layer(fin: int, fout: int, *, bias: bool = True) -> Layer:
    return Layer("linear", fin, fout, 1, 1, 1, 1, 1, 1, 1, fin * fout, fin * fout + (fout if bias else 0),
                 fin, fout)


def pool_layer(c: int, h: int, w: int, oh: int = 1, ow: int = 1, kernel: int = 0, stride: int = 1) -> Layer:
    """Pooling (global by default) or another element-wise operator of ``c x h x w`` elements."""
    return Layer("pool", c, c, h, w, oh, ow, kernel or h, stride, 1, 0, 0, c * h * w, c * oh * ow)


def add_layer(c: int, h: int, w: int) -> Layer:
    """A residual addition: reads two tensors, writes one."""
    e = c * h * w
    return Layer("add", c, c, h, w, h, w, 1, 1, 1, 0, 0, 2 * e, e)


def op_classes(ops: Sequence[Op]) -> tuple[str, ...]:
    """The operator class of every analytic operation (``objectives.cost._analytic``): a LightConv2d
    pair is recognised by its names (``<conv>.conv.reduce`` directly followed by
    ``<conv>.conv.expand``)."""
    out = []
    n = len(ops)
    for i, op in enumerate(ops):
        kind = op.kind
        if kind == "conv":
            name = op.name
            if name.endswith(".conv.expand") or (name.endswith(".conv.reduce") and i + 1 < n
                                                 and ops[i + 1].name == name[:-len("reduce")] + "expand"):
                out.append("lowrank")
            else:
                cin = op.in_shape[0]
                area = op.macs // max(1, op.out_elems * cin)
                out.append("conv1x1" if area <= 1 else "conv")
        elif kind == "dwconv":
            out.append("dwconv")
        elif kind in ("linear", "pool", "add"):
            out.append(kind)
        else:
            raise ValueError(f"unknown operation kind {kind!r}")
    return tuple(out)


def layer_from_op(op: Op, cls: str) -> Layer:
    """The :class:`Layer` of one analytic operation of class ``cls``."""
    if op.kind == "linear":
        return Layer("linear", op.in_shape[0], op.out_shape[0], 1, 1, 1, 1, 1, 1, 1, op.macs, op.params,
                     op.in_elems, op.out_elems)
    cin, h, w = op.in_shape
    cout, oh, ow = op.out_shape
    if op.kind == "dwconv":
        area, groups = op.macs // max(1, op.out_elems), cin
    elif op.kind == "conv":
        area, groups = op.macs // max(1, op.out_elems * cin), 1
    else:
        area, groups = h * w if op.kind == "pool" else 1, 1
    kernel = max(1, int(round(math.sqrt(area))))
    stride = 1 if oh >= h or op.kind in ("pool", "add") else max(1, round(h / oh))
    return Layer(cls, cin, cout, h, w, oh, ow, kernel, stride, groups, op.macs, op.params, op.in_elems,
                 op.out_elems)


def layers_from_ops(ops: Sequence[Op]) -> list[Layer]:
    """Every analytic operation as a :class:`Layer` with its operator class."""
    return [layer_from_op(op, c) for op, c in zip(ops, op_classes(ops), strict=True)]


# ------------------------------------------------------------------------------------- the model
class OpClassParams(BaseModel):
    """The numbers of one operator class (see the module docstring for the form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    peak_per_s: float = Field(gt=0, description="P_c: attained throughput of large operators, work/s")
    overhead_us: float = Field(ge=0, description="o_c: per-call overhead, microseconds")
    half_out: float = Field(default=0.0, ge=0, description="m_c: output channels at half throughput")
    half_positions: float = Field(default=0.0, ge=0, description="n_c: output positions at half throughput")
    half_reduction: float = Field(default=0.0, ge=0, description="k_c: reduction length at half throughput")
    fitted: bool = Field(default=True, description="false: no layer of this class was in the fit's data (the numbers "
                                                   "are those of the nearest fitted class)")

    @field_validator("peak_per_s", "overhead_us", "half_out", "half_positions", "half_reduction")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class OpModel(BaseModel):
    """An operator-level latency model: numbers per operator class and an attained bandwidth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    form: str = FORM
    bandwidth_bytes_per_s: float = Field(gt=0)
    classes: dict[str, OpClassParams]

    @field_validator("form")
    @classmethod
    def _form(cls, v: str) -> str:
        if v != FORM:
            raise ValueError(f"accepted: {FORM}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: dict[str, OpClassParams]) -> dict[str, OpClassParams]:
        unknown = sorted(set(v) - set(OP_CLASSES))
        if unknown:
            raise ValueError(f"unknown operator class(es) {unknown}; accepted: {', '.join(OP_CLASSES)}")
        missing = sorted(set(OP_CLASSES) - set(v))
        if missing:
            raise ValueError(f"missing operator class(es) {missing}")
        return v

    def layer_ms(self, layer: Layer, bytes_per_element: int) -> float:
        """Predicted latency of one layer, milliseconds."""
        p = self.classes[layer.op]
        work, m, n, k = layer.dims()
        bytes_ = (layer.params + layer.in_elems + layer.out_elems) * bytes_per_element
        compute = work / p.peak_per_s * (1 + p.half_out / m) * (1 + p.half_positions / n) * (1 + p.half_reduction / k)
        return (p.overhead_us * 1e-6 + compute + bytes_ / self.bandwidth_bytes_per_s) * 1e3

    def network_ms(self, layers: Sequence[Layer], bytes_per_element: int) -> float:
        return sum(self.layer_ms(la, bytes_per_element) for la in layers)

    def roofline_numbers(self) -> dict[str, Any]:  # Any: spread into DeviceProfile(**...)
        """The roofline fields a profile with this model carries too (code that reads them, and a
        copy of the profile without its model): the largest attained MAC/s of its fitted classes,
        its bandwidth (capped: a fit without a memory term has none) and the median per-call
        overhead."""
        macs = [p.peak_per_s for c, p in self.classes.items() if c not in ELEMENT_CLASSES and p.fitted]
        overheads = sorted(p.overhead_us for p in self.classes.values() if p.fitted) or [0.0]
        return {"peak_macs_per_s": max(macs, default=1e9),
                "mem_bandwidth_bytes_per_s": min(self.bandwidth_bytes_per_s, 1e15),
                "layer_overhead_us": overheads[len(overheads) // 2]}

    @staticmethod
    def roofline_sources(how: str) -> dict[str, str]:
        """Sources of :meth:`roofline_numbers` and of the model, for a profile's ``[sources]``;
        ``how`` says how the model was fitted, to what."""
        return {"opmodel": how,
                "peak_macs_per_s": f"Read off the operator-level model (largest attained MAC/s of its classes); {how}",
                "mem_bandwidth_bytes_per_s": f"The operator-level model's attained bandwidth; {how}",
                "layer_overhead_us": f"Median per-call overhead of the operator-level model's fitted classes; {how}"}


# ------------------------------------------------------------------------------------- fitting
_N_PER_CLASS = 5  # log P, log o, log m, log n, log k


class _Table:
    """The layers of many networks as arrays (one row per layer), for vectorised prediction."""

    def __init__(self, nets: Sequence[Sequence[Layer]], bytes_per_element: int) -> None:
        cls_index = {c: i for i, c in enumerate(OP_CLASSES)}
        rows = [(j, la) for j, net in enumerate(nets) for la in net]
        if not rows:
            raise ValueError("no layers to fit")
        self.n_nets = len(nets)
        self.net = np.array([j for j, _ in rows], dtype=np.int64)
        self.cls = np.array([cls_index[la.op] for _, la in rows], dtype=np.int64)
        dims = np.array([la.dims() for _, la in rows], dtype=float)
        self.work, self.m, self.n, self.k = (np.maximum(dims[:, i], 1e-12) for i in range(4))
        self.bytes = np.array([(la.params + la.in_elems + la.out_elems) * bytes_per_element for _, la in rows],
                              dtype=float)
        self.present = np.bincount(self.cls, minlength=len(OP_CLASSES)) > 0

    def terms(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-layer overhead, compute and memory terms (seconds) and the saturation factors."""
        per = theta[:-1].reshape(len(OP_CLASSES), _N_PER_CLASS)
        logp, logo, logm, logn, logk = (per[self.cls, i] for i in range(_N_PER_CLASS))
        fm = np.exp(logm) / self.m
        fn = np.exp(logn) / self.n
        fk = np.exp(logk) / self.k
        compute = self.work * np.exp(-logp) * (1 + fm) * (1 + fn) * (1 + fk)
        overhead = np.exp(logo)
        memory = self.bytes * np.exp(-theta[-1])
        return overhead, compute, memory, fm, fn, fk

    def predict_s(self, theta: np.ndarray) -> np.ndarray:
        overhead, compute, memory, *_ = self.terms(theta)
        return np.bincount(self.net, weights=overhead + compute + memory, minlength=self.n_nets)

    def jacobian(self, theta: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """d ln(pred_net) / d theta."""
        overhead, compute, memory, fm, fn, fk = self.terms(theta)
        cols = [-compute, overhead, compute * fm / (1 + fm), compute * fn / (1 + fn), compute * fk / (1 + fk)]
        jac = np.zeros((self.n_nets, theta.size))
        for c in range(len(OP_CLASSES)):
            sel = self.cls == c
            if not sel.any():
                continue
            nets = self.net[sel]
            for i, col in enumerate(cols):
                jac[:, c * _N_PER_CLASS + i] = np.bincount(nets, weights=col[sel], minlength=self.n_nets)
        jac[:, -1] = np.bincount(self.net, weights=-memory, minlength=self.n_nets)
        return jac / pred[:, None]


def predict_many(model: OpModel, nets: Sequence[Sequence[Layer]], bytes_per_element: int = 4) -> np.ndarray:
    """Predicted latency (ms) of many networks at once (vectorised :meth:`OpModel.network_ms`)."""
    return _Table(nets, bytes_per_element).predict_s(_theta_of(model)) * 1e3


def _theta_of(model: OpModel) -> np.ndarray:
    out = []
    for c in OP_CLASSES:
        p = model.classes[c]
        out += [math.log(p.peak_per_s), math.log(max(p.overhead_us, 1e-6) * 1e-6),
                math.log(max(p.half_out, 1e-6)), math.log(max(p.half_positions, 1e-6)),
                math.log(max(p.half_reduction, 1e-6))]
    out.append(math.log(model.bandwidth_bytes_per_s))
    return np.array(out)


def _model_of(theta: np.ndarray, fitted: np.ndarray) -> OpModel:
    per = theta[:-1].reshape(len(OP_CLASSES), _N_PER_CLASS)
    classes = {}
    for i, c in enumerate(OP_CLASSES):
        lp, lo, lm, ln_, lk = (float(v) for v in per[i])
        classes[c] = OpClassParams(peak_per_s=math.exp(lp), overhead_us=math.exp(lo) * 1e6,
                                   half_out=_tiny_zero(math.exp(lm)), half_positions=_tiny_zero(math.exp(ln_)),
                                   half_reduction=_tiny_zero(math.exp(lk)), fitted=bool(fitted[i]))
    return OpModel(bandwidth_bytes_per_s=math.exp(float(theta[-1])), classes=classes)


def _tiny_zero(v: float) -> float:
    return 0.0 if v < 1e-5 else v


def _linear_start(table: _Table, y_s: np.ndarray, *, memory: bool = True) -> np.ndarray:
    """Non-negative least squares of the model without saturation, relative errors: per class an
    overhead and a time per unit of work, and a time per byte."""
    from scipy.optimize import nnls

    ncls = len(OP_CLASSES)
    x = np.zeros((table.n_nets, 2 * ncls + 1))
    for c in range(ncls):
        sel = table.cls == c
        x[:, 2 * c] = np.bincount(table.net[sel], minlength=table.n_nets)
        x[:, 2 * c + 1] = np.bincount(table.net[sel], weights=table.work[sel], minlength=table.n_nets)
    x[:, -1] = np.bincount(table.net, weights=table.bytes, minlength=table.n_nets) if memory else 0.0
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((x / scale) / y_s[:, None], np.ones(table.n_nets), maxiter=50 * x.shape[1])
    coef = coef / scale
    # Typical magnitudes replace zeros (a class the NNLS found free is not free).
    med_t = float(np.median(y_s / np.maximum(x[:, 0::2][:, :ncls].sum(axis=1), 1)))
    theta = []
    for c in range(ncls):
        o, inv_p = coef[2 * c], coef[2 * c + 1]
        sel = table.cls == c
        typical_work = float(np.median(table.work[sel])) if sel.any() else 1e6
        o = o if o > 0 else 0.2 * med_t
        inv_p = inv_p if inv_p > 0 else 0.2 * med_t / typical_work
        theta += [-math.log(inv_p), math.log(o), 0.0, 0.0, 0.0]
    inv_bw = coef[-1] if coef[-1] > 0 else 0.05 * med_t / float(np.median(table.bytes))
    theta.append(-math.log(inv_bw))
    return np.array(theta)


@dataclass(frozen=True)
class FitResult:
    model: OpModel
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]

    @property
    def median_abs_ln_error(self) -> float:
        return median_abs_ln_error(self.predicted_ms, self.measured_ms)


def median_abs_ln_error(pred: Sequence[float], meas: Sequence[float]) -> float:
    return float(np.median(np.abs(np.log(np.asarray(pred, dtype=float) / np.asarray(meas, dtype=float)))))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``); NaN for fewer than 2 points."""
    from scipy.stats import kendalltau

    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b)[0])


#: A class without data takes the numbers of the first of these that has data (the kernels a
#: runtime runs for it are the nearest): a LightConv2d pair is two ordinary convolutions, a grouped
#: or linear layer is a matrix product like a 1x1 convolution, pooling and additions are both
#: element-wise.
FALLBACK = {"conv": ("conv1x1", "lowrank", "gconv", "dwconv"), "conv1x1": ("conv", "lowrank", "gconv", "linear"),
            "dwconv": ("conv", "conv1x1"), "gconv": ("conv1x1", "conv", "lowrank"),
            "linear": ("conv1x1", "lowrank", "conv"), "lowrank": ("conv1x1", "conv", "gconv"),
            "pool": ("add",), "add": ("pool",)}

#: ln of a half-saturation size that means "no saturation" (size 1e-9: the factor is 1).
_NO_SATURATION = math.log(1e-9)
#: ln of the bandwidth that means "no memory term".
_NO_MEMORY = math.log(1e30)
#: Dimensions that are 1 for every layer of a class (a linear layer has one output position,
#: pooling and additions a reduction length of 1): their half-saturation size would only scale
#: the class's peak, so it is not fitted and stays "no saturation".
_CONSTANT_DIMS = {"linear": ("n",), "pool": ("k",), "add": ("k",)}


def _tie_map(present: np.ndarray, *, saturation: bool, memory: bool, groups: dict[str, str] | None,
             shared_overhead: bool) -> np.ndarray:
    """For every model number (``_theta_of``'s order): the index of the fitted number it equals,
    or -1 when it keeps its starting value (a class absent from the data, saturation or the
    memory term switched off)."""
    size = len(OP_CLASSES) * _N_PER_CLASS + 1
    tie = np.full(size, -1, dtype=np.int64)
    keys: dict[tuple[str, ...], int] = {}

    def slot(key: tuple[str, ...]) -> int:
        return keys.setdefault(key, len(keys))

    grouped = {(groups or {}).get(cls, cls) for c, cls in enumerate(OP_CLASSES) if present[c]}
    for c, cls in enumerate(OP_CLASSES):
        group = (groups or {}).get(cls, cls)
        if not present[c] and not (groups and cls in groups and group in grouped):
            continue  # no data for this class or its group: it keeps its starting numbers
        base = c * _N_PER_CLASS
        tie[base] = slot(("P", group))
        tie[base + 1] = slot(("o",) if shared_overhead else ("o", group))
        if saturation:
            for i, dim in enumerate(("m", "n", "k")):
                if dim not in _CONSTANT_DIMS.get(cls, ()):
                    tie[base + 2 + i] = slot((dim, group))
    if memory:
        tie[-1] = slot(("beta",))
    return tie


def fit_opmodel(nets: Sequence[Sequence[Layer]], latency_ms: Sequence[float], *, bytes_per_element: int = 4,
                start: OpModel | None = None, saturation_prior: float = 0.02, f_scale: float = 0.05,
                saturation: bool = True, memory: bool = True, groups: dict[str, str] | None = None,
                shared_overhead: bool = False, max_nfev: int = 300) -> FitResult:
    """Fit the operator-level model to whole-network (or single-layer) latencies.

    Args:
        nets: the layers of each measured network.
        latency_ms: its measured latency.
        bytes_per_element: the data type's size (bytes moved = elements x this).
        start: starting numbers (default: the non-negative least-squares fit without saturation).
        saturation_prior: weight of the pull of each ln(half-saturation size) towards 0 (size 1,
            i.e. no saturation); 0 fits the data alone.
        f_scale: the ``soft_l1`` loss's scale, in ln units: residuals beyond it count less.
        saturation: false fits the model without the shape-dependent factors.
        memory: false drops the memory term (a device whose memory keeps up with its compute).
        groups: operator class -> group; classes of a group share their numbers (few
            measurements: fewer numbers to fit).
        shared_overhead: one per-call overhead for every class.
        max_nfev: most evaluations of the least-squares solver.

    Returns:
        The fitted :class:`OpModel` and its predictions of the fitted networks.

    Raises:
        ValueError: no networks, a non-positive or non-finite latency, or lengths that differ.
    """
    from scipy.optimize import least_squares

    y = np.asarray(latency_ms, dtype=float)
    if len(nets) != y.size or y.size == 0:
        raise ValueError(f"need one latency per network, got {y.size} for {len(nets)} networks")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("latencies must be positive finite numbers")
    table = _Table(nets, bytes_per_element)
    y_s = y * 1e-3
    theta0 = _theta_of(start) if start is not None else _linear_start(table, y_s, memory=memory)
    for c, cls in enumerate(OP_CLASSES):
        if not saturation:
            theta0[c * _N_PER_CLASS + 2: c * _N_PER_CLASS + 5] = _NO_SATURATION
        for dim in _CONSTANT_DIMS.get(cls, ()):
            theta0[c * _N_PER_CLASS + 2 + "mnk".index(dim)] = _NO_SATURATION
    if not memory:
        theta0[-1] = _NO_MEMORY
    tie = _tie_map(table.present, saturation=saturation, memory=memory, groups=groups,
                   shared_overhead=shared_overhead)
    n_free = int(tie.max()) + 1
    # Each fitted number starts at the mean of the starting values it ties together.
    z0 = np.array([theta0[tie == k].mean() for k in range(n_free)])
    sat_free = sorted({int(tie[i]) for i in range(theta0.size - 1) if i % _N_PER_CLASS >= 2 and tie[i] >= 0})
    log_y = np.log(y_s)
    w = math.sqrt(saturation_prior)
    # Tying matrix: d theta / d z.
    a = np.zeros((theta0.size, n_free))
    tied = tie >= 0
    a[np.flatnonzero(tied), tie[tied]] = 1.0

    def full(z: np.ndarray) -> np.ndarray:
        theta = theta0.copy()
        theta[tied] = z[tie[tied]]
        return theta

    def residuals(z: np.ndarray) -> np.ndarray:
        r = np.log(table.predict_s(full(z))) - log_y
        if w > 0 and sat_free:
            r = np.concatenate([r, w * z[sat_free]])
        return r

    def jac(z: np.ndarray) -> np.ndarray:
        theta = full(z)
        j = table.jacobian(theta, table.predict_s(theta)) @ a
        if w > 0 and sat_free:
            prior = np.zeros((len(sat_free), n_free))
            prior[np.arange(len(sat_free)), sat_free] = w
            j = np.vstack([j, prior])
        return j

    lower, upper = z0 - 25.0, z0 + 25.0
    for k in sat_free:
        lower[k], upper[k] = math.log(1e-6), math.log(1e6)
        z0[k] = min(max(z0[k], lower[k] + 1e-9), upper[k] - 1e-9)
    sol = least_squares(residuals, z0, jac=jac, bounds=(lower, upper), loss="soft_l1", f_scale=f_scale,
                        x_scale="jac", max_nfev=max_nfev, xtol=1e-10, ftol=1e-10, gtol=1e-10)
    theta = full(sol.x)
    fitted = np.array([tie[c * _N_PER_CLASS] >= 0 for c in range(len(OP_CLASSES))])
    for c, cls in enumerate(OP_CLASSES):
        if not fitted[c]:
            src = next((OP_CLASSES.index(f) for f in FALLBACK[cls] if fitted[OP_CLASSES.index(f)]), None)
            if src is not None:
                theta[c * _N_PER_CLASS:(c + 1) * _N_PER_CLASS] = theta[src * _N_PER_CLASS:(src + 1) * _N_PER_CLASS]
    model = _model_of(theta, fitted)
    pred = table.predict_s(theta) * 1e3
    return FitResult(model, tuple(float(v) for v in pred), tuple(float(v) for v in y))


@dataclass(frozen=True)
class CrossValidation:
    """Predictions of every network by a model fitted without it (k-fold)."""

    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]
    folds: int

    @property
    def tau(self) -> float:
        return kendall_tau(self.predicted_ms, self.measured_ms)

    @property
    def median_abs_ln_error(self) -> float:
        return median_abs_ln_error(self.predicted_ms, self.measured_ms)


def cross_validate(nets: Sequence[Sequence[Layer]], latency_ms: Sequence[float], *, folds: int = 5, seed: int = 0,
                   **fit_kwargs: object) -> CrossValidation:
    """k-fold cross-validation of :func:`fit_opmodel` (networks shuffled with ``seed``)."""
    n = len(nets)
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    pred = np.zeros(n)
    y = np.asarray(latency_ms, dtype=float)
    bpe = int(fit_kwargs.get("bytes_per_element", 4))  # type: ignore[call-overload]
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        res = fit_opmodel([nets[i] for i in train], y[train], **fit_kwargs)  # type: ignore[arg-type]
        for i in test:
            pred[i] = res.model.network_ms(nets[i], bpe)
    return CrossValidation(tuple(float(v) for v in pred), tuple(float(v) for v in y), folds)
