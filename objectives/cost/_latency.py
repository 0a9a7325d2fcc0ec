"""Measured latency on this machine and calibration of the ``host`` device profile.

``calibrate_host`` times the probe networks of :mod:`objectives.cost._probe` (designed to tell the
operator classes apart, plus samples of every space) with :func:`measure_latencies` and fits
the operator-level latency model (:mod:`objectives.cost._opmodel`) to them; the profile records the
model's cross-validated tau and error on those networks.

Timing on a shared machine: interference (other processes, a busy SMT sibling, frequency
changes) only ever adds time, and it comes in bursts of seconds. :func:`measure_latencies`
therefore times the whole set in rounds, each network once per round in a shuffled order, so
a burst touches every network a little instead of a few networks a lot, and keeps a low
percentile (the 10th) of each network's rounds: what the network takes when nothing else is
in the way. BENCHMARKS.md section 8 shows how well two halves of such a session agree.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search_spaces import ArchSpec, build_model, check_input_shape

from ._analytic import Op as _Op
from ._analytic import analytic_layers
from ._devices import DeviceProfile, Validation
from ._opmodel import OpModel, cross_validate, fit_opmodel, layers_from_ops

__all__ = ["CalibrationResult", "calibrate_host", "default_calibration_set", "fit_roofline", "measure_latencies",
           "measure_latency", "resolve_device", "roofline_ms"]

#: Percentile of a network's round timings that :func:`measure_latencies` reports.
LOW_PERCENTILE = 10.0


#: Device types a network is trained and timed on (``meta`` holds no data, others have no kernels here).
TRAINING_DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; otherwise a ``torch.device`` string of a type
    networks train on (:data:`TRAINING_DEVICE_TYPES`): ``cpu``, ``cuda``, ``cuda:N``.

    Raises:
        ValueError: an unknown device, or one no network trains on (``meta``, say).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown torch device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type not in TRAINING_DEVICE_TYPES:
        raise ValueError(f"device {device!r}: no network trains on a {dev.type!r} device; accepted: auto, cpu, cuda, "
                         "cuda:N")
    return dev


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


def measure_latencies(pairs: Sequence[tuple[ArchSpec, tuple[int, int, int]]], num_classes: int = 10, *,
                      rounds: int = 20, threads: int | None = None, device: str = "cpu", seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Latency (ms) of many networks on this machine, robust to a shared machine's interference.

    Every network is built once; then, ``rounds`` times, each network runs once untimed and
    once timed, in an order shuffled every round; a network's latency is the 10th percentile
    (:data:`LOW_PERCENTILE`) of its timings. Eval mode, batch 1, ``inference_mode``.

    Args:
        pairs: ``(spec, input_shape)`` of every network.
        rounds: timings per network (at least 1).
        threads: CPU threads (default: all cores); restored afterwards.
        progress: called with ``(rounds done, rounds)`` after each round.
    """
    times = time_rounds(pairs, num_classes, rounds=rounds, threads=threads, device=device, seed=seed,
                       progress=progress)
    return [float(np.percentile(t, LOW_PERCENTILE)) for t in times]


def time_rounds(pairs: Sequence[tuple[ArchSpec, tuple[int, int, int]]], num_classes: int = 10, *,
                rounds: int = 20, threads: int | None = None, device: str = "cpu", seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> list[list[float]]:
    """Every timing (ms) of :func:`measure_latencies`, per network in round order."""
    if rounds < 1:
        raise ValueError(f"rounds: must be >= 1, got {rounds}")
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    old = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        nets = []
        for spec, shape in pairs:
            shape = check_input_shape(shape)
            nets.append((build_model(spec, shape, num_classes).to(dev).eval(), torch.randn(1, *shape, device=dev)))
        times: list[list[float]] = [[] for _ in nets]
        order = list(range(len(nets)))
        rng = random.Random(seed)
        with torch.inference_mode():
            for model, x in nets:
                model(x)
            sync()
            for r in range(rounds):
                rng.shuffle(order)
                for i in order:
                    model, x = nets[i]
                    model(x)
                    sync()
                    t0 = time.perf_counter()
                    model(x)
                    sync()
                    times[i].append((time.perf_counter() - t0) * 1e3)
                if progress:
                    progress(r + 1, rounds)
    finally:
        torch.set_num_threads(old)
    return times


def roofline_ms(ops: Sequence[_Op], peak: float, bandwidth: float, overhead_us: float, bpe: int = 4) -> float:
    """Summed per-layer roofline latency of traced operations, milliseconds."""
    total = 0.0
    for op in ops:
        traffic = (op.params + op.in_elems + op.out_elems) * bpe
        total += max(op.macs / peak, traffic / bandwidth) * 1e3 + overhead_us * 1e-3
    return total


def fit_roofline(traced: Sequence[Sequence[_Op]], measured_ms: Sequence[float],
                 start: tuple[float, float, float] = (3e10, 3e9, 10.0)) -> tuple[float, float, float]:
    """The per-layer roofline's three numbers (peak MAC/s, bandwidth B/s, overhead us) with the
    least squared log error over measured networks: the calibration before the operator-level
    model, kept for comparison (BENCHMARKS.md) and for profiles without a model."""
    from scipy.optimize import minimize

    meas = np.asarray(measured_ms, dtype=float)

    def loss(z: np.ndarray) -> float:
        p, b, o = np.exp(z)
        pred = np.array([roofline_ms(ops, p, b, o) for ops in traced])
        return float(np.mean((np.log(pred) - np.log(meas)) ** 2))

    best = minimize(loss, np.log(start), method="Nelder-Mead", options={"maxiter": 600, "xatol": 1e-3, "fatol": 1e-6})
    peak, bw, ovh = (float(v) for v in np.exp(best.x))
    return peak, bw, ovh


@dataclass(frozen=True)
class CalibrationResult:
    """A calibrated profile and the data behind it: measured and fitted latency of every
    calibration network, and their cross-validated predictions (each predicted by a model
    fitted without it)."""

    profile: DeviceProfile
    measured_ms: tuple[float, ...]
    predicted_ms: tuple[float, ...]
    cv_predicted_ms: tuple[float, ...]

    @property
    def median_abs_log_error(self) -> float:
        pairs = zip(self.predicted_ms, self.measured_ms, strict=True)
        return float(np.median([abs(math.log(p / m)) for p, m in pairs]))


def default_calibration_set(n: int = 360, seed: int = 0) -> list[tuple[ArchSpec, tuple[int, int, int]]]:
    """The ``n`` probe networks of :func:`objectives.cost._probe.probe_set` as ``(spec, input_shape)``."""
    from ._probe import probe_set

    return [(p.spec, p.input_shape) for p in probe_set(n, seed)]


def profile_from_model(name: str, description: str, model: OpModel, *, runtime: str, dtype: str,
                       memory_bytes: float, how: str, validation: list[Validation], board_power_w: float = 0.0,
                       board_power_source: str = "Not measured (no power meter): 0 W, so energy is the dynamic "
                                                 "part only") -> DeviceProfile:
    """A profile whose latency comes from ``model``. The roofline fields, which only a profile
    without a model uses, are read off the model (largest attained MAC/s, its bandwidth, the
    median per-call overhead) so that the profile stays valid for older code."""
    return DeviceProfile(
        name=name, description=description, runtime=runtime, dtype=dtype, **model.roofline_numbers(),
        energy_pj_per_mac=4.6, energy_pj_per_byte=160.0,
        memory_bytes=memory_bytes, board_power_w=board_power_w, opmodel=model,
        validation=validation,
        sources={
            **model.roofline_sources(how),
            "energy_pj_per_mac": "Not measured (no power meter): Horowitz, ISSCC 2014, 45 nm FP32 multiply 3.7 pJ "
                                 "+ add 0.9 pJ",
            "energy_pj_per_byte": "Not measured: Horowitz, ISSCC 2014, 32-bit DRAM access 640 pJ = 160 pJ/byte",
            "memory_bytes": "os.sysconf physical memory of this machine",
            "board_power_w": board_power_source,
        },
    )


def calibrate_host(specs: Sequence[tuple[ArchSpec, tuple[int, int, int]]] | None = None, *,
                   num_classes: int = 10, rounds: int = 20, threads: int | None = None,
                   device: str = "cpu", name: str = "host", folds: int = 5,
                   progress: Callable[[int, int], None] | None = None) -> CalibrationResult:
    """Measure this machine and fit an operator-level latency model for it.

    Args:
        specs: ``(spec, input_shape)`` pairs to time; default :func:`default_calibration_set`.
        rounds: timings per network (:func:`measure_latencies`).
        folds: cross-validation folds for the profile's validation record.
        progress: called with ``(rounds done, rounds)`` after each round of timings.

    Returns:
        The fitted profile (not yet saved; see ``save_device``) and the fit's data.
    """
    dev = resolve_device(device)
    threads = threads or os.cpu_count() or 1
    pairs = list(specs) if specs is not None else default_calibration_set()
    measured = measure_latencies(pairs, num_classes, rounds=rounds, threads=threads, device=str(dev),
                                 progress=progress)
    nets = [layers_from_ops(analytic_layers(spec, tuple(shape), num_classes)) for spec, shape in pairs]
    fit = fit_opmodel(nets, measured)
    cv = cross_validate(nets, measured, folds=folds)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    how = (f"Fitted by 'nas hardware calibrate' on {when}: {platform.processor() or platform.machine()}, "
           f"{threads} threads, torch {torch.__version__}, device {dev}; operator-level model "
           "(objectives/cost/_opmodel.py) "
           f"fitted by robust regression in log space to {len(pairs)} probe networks, each the 10th percentile "
           f"of {rounds} interleaved timings")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 8 * 1024**3
    validation = [Validation(data=f"{folds}-fold cross-validation on the {len(pairs)} probe networks",
                             source=f"timed on this machine by 'nas hardware calibrate' ({rounds} rounds each)",
                             n_fit=len(pairs) - len(pairs) // folds, n_test=len(pairs), tau=cv.tau,
                             median_abs_ln_error=cv.median_abs_ln_error,
                             note="each network predicted by a model fitted without it")]
    profile = profile_from_model(name, f"This machine ({platform.node()}), calibrated {when}, FP32, {threads} threads",
                                 fit.model, runtime=f"PyTorch {torch.__version__} eager, FP32, {threads} threads, "
                                 f"batch 1, {dev}", dtype="float32", memory_bytes=float(ram), how=how,
                                 validation=validation)
    return CalibrationResult(profile, tuple(measured), fit.predicted_ms, cv.predicted_ms)
