"""Measured latency on this machine and calibration of the ``host`` device profile.

``calibrate_host`` times a set of sampled specs and fits the three roofline numbers of the
cost model (peak MAC/s, memory bandwidth, per-layer overhead) so that the summed per-layer
roofline predicts the measured medians with the least squared log error. Microbenchmarks (a
large convolution, a large copy, a tiny convolution) give the starting point.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search_spaces import ArchSpec, build_model, check_input_shape, get_space, list_spaces, sample_spec

from ._analytic import Op as _Op
from ._analytic import analytic_layers
from ._devices import DeviceProfile

__all__ = ["CalibrationResult", "calibrate_host", "measure_latency", "resolve_device", "roofline_ms"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; otherwise any ``torch.device`` string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown torch device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None


def _timeit(fn: Callable[[], object], repeats: int, warmup: int, dev: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latency(spec: ArchSpec, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, *,
                    batch: int = 1, repeats: int = 30, warmup: int = 5, threads: int | None = None,
                    device: str = "cpu") -> float:
    """Median measured inference latency (ms) of ``spec`` on this machine, eval mode.

    Args:
        threads: CPU threads for the measurement (default: all cores); restored afterwards.
        device: ``cpu``, ``cuda`` or ``auto``.
    """
    shape = check_input_shape(input_shape)
    dev = resolve_device(device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        model = build_model(spec, shape, num_classes).to(dev).eval()
        x = torch.randn(batch, *shape, device=dev)
        with torch.inference_mode():
            return _timeit(lambda: model(x), repeats, warmup, dev)
    finally:
        torch.set_num_threads(old)


def roofline_ms(ops: Sequence[_Op], peak: float, bandwidth: float, overhead_us: float, bpe: int = 4) -> float:
    """Summed per-layer roofline latency of traced operations, milliseconds."""
    total = 0.0
    for op in ops:
        traffic = (op.params + op.in_elems + op.out_elems) * bpe
        total += max(op.macs / peak, traffic / bandwidth) * 1e3 + overhead_us * 1e-3
    return total


@dataclass(frozen=True)
class CalibrationResult:
    profile: DeviceProfile
    measured_ms: tuple[float, ...]
    predicted_ms: tuple[float, ...]
    micro: dict[str, float]

    @property
    def median_abs_log_error(self) -> float:
        pairs = zip(self.predicted_ms, self.measured_ms, strict=True)
        return float(np.median([abs(math.log(p / m)) for p, m in pairs]))


def _micro(dev: torch.device) -> dict[str, float]:
    """Starting values: compute-bound conv, memory-bound copy, per-layer overhead."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(dev).eval()
    x = torch.randn(1, 128, 32, 32, device=dev)
    with torch.inference_mode():
        t_conv = _timeit(lambda: conv(x), 10, 3, dev)
        big = torch.randn(8 * 1024 * 1024, device=dev)
        t_copy = _timeit(lambda: big.clone(), 10, 3, dev)
        tiny = torch.nn.Conv2d(4, 4, 1, bias=False).to(dev).eval()
        xt = torch.randn(1, 4, 2, 2, device=dev)
        t_tiny = _timeit(lambda: tiny(xt), 200, 20, dev)
    macs = 128 * 128 * 9 * 32 * 32
    return {
        "peak_macs_per_s": macs / (t_conv * 1e-3),
        "mem_bandwidth_bytes_per_s": 2 * big.numel() * 4 / (t_copy * 1e-3),
        "layer_overhead_us": t_tiny * 1e3,
    }


def default_calibration_set(n: int = 24, seed: int = 1000) -> list[tuple[ArchSpec, tuple[int, int, int]]]:
    """``n`` specs sampled round-robin over spaces and input sizes (seeds from ``seed`` on)."""
    shapes = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
    names = list_spaces()
    out = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        space = get_space(names[i % len(names)], input_shape=shape)
        out.append((sample_spec(space, seed + i), shape))
    return out


def calibrate_host(specs: Sequence[tuple[ArchSpec, tuple[int, int, int]]] | None = None, *,
                   num_classes: int = 10, repeats: int = 15, threads: int | None = None,
                   device: str = "cpu", name: str = "host",
                   progress: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """Measure this machine and fit a roofline profile for it.

    Args:
        specs: ``(spec, input_shape)`` pairs to time; default :func:`default_calibration_set`.
        progress: called with ``(done, total)`` after each spec.

    Returns:
        The fitted profile (not yet saved; see ``save_device``) and the fit's data.
    """
    from scipy.optimize import minimize

    dev = resolve_device(device)
    threads = threads or os.cpu_count() or 1
    pairs = list(specs) if specs is not None else default_calibration_set()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        micro = _micro(dev)
        measured, traced = [], []
        for i, (spec, shape) in enumerate(pairs):
            measured.append(measure_latency(spec, shape, num_classes, repeats=repeats, warmup=3,
                                            threads=threads, device=str(dev)))
            traced.append(analytic_layers(spec, tuple(shape), num_classes))
            if progress:
                progress(i + 1, len(pairs))
    finally:
        torch.set_num_threads(old)
    meas = np.array(measured)

    def loss(z: np.ndarray) -> float:
        p, b, o = np.exp(z)
        pred = np.array([roofline_ms(ops, p, b, o) for ops in traced])
        return float(np.mean((np.log(pred) - np.log(meas)) ** 2))

    z0 = np.log([micro["peak_macs_per_s"], micro["mem_bandwidth_bytes_per_s"], max(micro["layer_overhead_us"], 0.1)])
    best = minimize(loss, z0, method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-3, "fatol": 1e-6})
    peak, bw, ovh = (float(v) for v in np.exp(best.x))
    predicted = tuple(roofline_ms(ops, peak, bw, ovh) for ops in traced)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    how = (f"Measured by 'nas hardware calibrate' on {when}: {platform.processor() or platform.machine()}, "
           f"{threads} threads, torch {torch.__version__}, device {dev}; least-squares fit (log error) of the "
           f"per-layer roofline to the median latency of {len(pairs)} sampled specs ({repeats} runs each)")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 8 * 1024**3
    profile = DeviceProfile(
        name=name,
        description=f"This machine ({platform.node()}), calibrated {when}, FP32, {threads} threads",
        dtype="float32",
        peak_macs_per_s=peak,
        mem_bandwidth_bytes_per_s=bw,
        energy_pj_per_mac=4.6,
        energy_pj_per_byte=160.0,
        memory_bytes=float(ram),
        layer_overhead_us=ovh,
        sources={
            "peak_macs_per_s": how,
            "mem_bandwidth_bytes_per_s": how,
            "layer_overhead_us": how,
            "energy_pj_per_mac": "Not measured (no power meter): Horowitz, ISSCC 2014, 45 nm FP32 multiply 3.7 pJ "
                                 "+ add 0.9 pJ",
            "energy_pj_per_byte": "Not measured: Horowitz, ISSCC 2014, 32-bit DRAM access 640 pJ = 160 pJ/byte",
            "memory_bytes": "os.sysconf physical memory of this machine",
        },
    )
    return CalibrationResult(profile, tuple(measured), predicted, micro)
