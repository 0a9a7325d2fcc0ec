"""Benchmark of the hardware-cost model (issue 2).

a. Cost-estimation time per spec (``estimate_cost``), uncached (``analytic_layers`` cache cleared
   before every call) and cached, for a ResNet-56 spec and 30 sampled specs per space (3x32x32),
   as a ratio to ONE forward pass of the real model at batch 1 on this CPU (so the figure does
   not depend on how fast the machine is). Absolute milliseconds are printed as information.
b. Rank agreement (Kendall tau) between predicted and measured latency (the calibration before
   issue 17, kept as it was; bench/bench_latency.py measures the operator-level model): a roofline is
   calibrated on ``default_calibration_set(24, seed=1000)`` (fit set) and evaluated on 50 other
   specs per space (sample seeds 0..49, input 3x32x32): tau of the calibrated roofline latency,
   of FLOPs alone and of params alone against the measured median latency.

Usage: python bench/bench_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import shutil
import sys
import tempfile
import time

if "NAS_HOME" not in os.environ:  # never touch ~/.lightnas; removed at exit
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

import torch  # noqa: E402
from _util import loadavg, machine_header, median, table  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from objectives import estimate_cost  # noqa: E402
from objectives.cost import analytic_layers, fit_roofline, measure_latency  # noqa: E402
from search_spaces import ArchSpec, Block, Head, Stage, Stem, get_space, list_spaces, sample_spec  # noqa: E402

SHAPE = (3, 32, 32)
NUM_CLASSES = 10
THREADS = 1  # set by --threads; 1 by default, see main()


def resnet56() -> ArchSpec:
    """ResNet-56 for CIFAR: stem 16, three stages of nine basic blocks, widths 16/32/64."""
    stages = []
    for i, w in enumerate((16, 32, 64)):
        blocks = tuple(Block("basic", w, w, None, 3, 2 if (i > 0 and j == 0) else 1, 1.0) for j in range(9))
        stages.append(Stage(blocks))
    return ArchSpec(stem=Stem(16), stages=tuple(stages), head=Head(), act="relu", family="resnet56")


def time_calls(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def cost_times(spec: ArchSpec, n_uncached: int, n_cached: int, n_forward: int) -> tuple[float, float, float]:
    """(uncached ms, cached ms, forward ms) medians for one spec."""
    def uncached() -> None:
        analytic_layers.cache_clear()
        estimate_cost(spec, SHAPE, NUM_CLASSES)

    # Clearing the cache is inside the timed call; it is O(cache size) and the cache holds at
    # most one entry here, so it is negligible next to the trace.
    t_unc = time_calls(uncached, n_uncached)
    estimate_cost(spec, SHAPE, NUM_CLASSES)  # fill the cache
    t_cached = time_calls(lambda: estimate_cost(spec, SHAPE, NUM_CLASSES), n_cached)
    t_fwd = measure_latency(spec, SHAPE, NUM_CLASSES, repeats=n_forward, warmup=3, threads=THREADS)
    return t_unc, t_cached, t_fwd


def part_a(quick: bool) -> str:
    n_specs = 5 if quick else 30
    n_unc, n_cached, n_fwd = (3, 20, 10) if quick else (7, 100, 30)
    # Warm-up: imports, first meta-device build, first real build.
    cost_times(resnet56(), 2, 5, 3)

    rows = []
    r56 = resnet56()
    unc, cac, fwd = cost_times(r56, n_unc * 3, n_cached, n_fwd * 2)
    rows.append(["ResNet-56 (1 spec)", 1, unc / fwd, cac / fwd, unc, cac, fwd, "-"])
    for name in list_spaces():
        space = get_space(name, input_shape=SHAPE)
        u, c, f, ratios_u = [], [], [], []
        for seed in range(n_specs):
            spec = sample_spec(space, seed)
            tu, tc, tf = cost_times(spec, n_unc, n_cached, n_fwd)
            u.append(tu)
            c.append(tc)
            f.append(tf)
            ratios_u.append(tu / tf)
        rows.append([f"{name} (sampled)", n_specs, median(ratios_u), median([a / b for a, b in zip(c, f, strict=True)]),
                     median(u), median(c), median(f), f"{min(ratios_u):.3g} - {max(ratios_u):.3g}"])
    head = ["specs", "n", "uncached / forward (median)", "cached / forward (median)", "uncached ms (info)",
            "cached ms (info)", "forward ms, batch 1 (info)", "uncached/forward min - max"]
    note = (f"\nPer spec: median of {n_unc} uncached calls ({n_unc * 3} for ResNet-56; "
            f"`analytic_layers.cache_clear()` before each), {n_cached} cached calls, forward pass = "
            f"`measure_latency(..., repeats={n_fwd})` ({n_fwd * 2} for ResNet-56) on "
            f"{THREADS} thread(s), eval mode, `inference_mode`. Rows for sampled specs give "
            "the median over specs of the per-spec values. Device profile of `estimate_cost`: rpi4 "
            "(the profile only scales numbers; the time is in the trace).\n")
    return "### a. Cost-estimation time per spec (input 3x32x32, 10 classes)\n\n" + table(head, rows) + "\n" + note


def logerr(pred: list[float], meas: list[float]) -> float:
    return median([abs(math.log(p / m)) for p, m in zip(pred, meas, strict=True)])


def default_calibration_set(n: int, seed: int) -> list:
    """The calibration set before issue 17: ``n`` specs round-robin over spaces and input sizes."""
    shapes = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
    names = list_spaces()
    return [(sample_spec(get_space(names[i % len(names)], input_shape=shapes[i % 3]), seed + i), shapes[i % 3])
            for i in range(n)]


class _Calibration:
    """The roofline calibration before issue 17 (superseded by bench/bench_latency.py, section 8)."""

    def __init__(self, pairs: list, repeats: int) -> None:
        from objectives import get_device

        traced = [analytic_layers(s, sh, NUM_CLASSES) for s, sh in pairs]
        self.measured = [measure_latency(s, sh, NUM_CLASSES, repeats=repeats, warmup=3, threads=THREADS)
                         for s, sh in pairs]
        peak, bw, ovh = fit_roofline(traced, self.measured)
        self.profile = get_device("rpi4").model_copy(update={
            "name": "host-roofline", "opmodel": None, "peak_macs_per_s": peak, "mem_bandwidth_bytes_per_s": bw,
            "layer_overhead_us": ovh})
        pred = [estimate_cost(s, sh, NUM_CLASSES, device=self.profile)["latency_ms"] for s, sh in pairs]
        self.median_abs_log_error = logerr(pred, self.measured)


def part_b(quick: bool) -> str:
    n_fit = 6 if quick else 24
    n_eval = 8 if quick else 50
    repeats = 5 if quick else 15
    fit_pairs = default_calibration_set(n_fit, seed=1000)
    t0 = time.perf_counter()
    cal = _Calibration(fit_pairs, repeats)
    t_cal = time.perf_counter() - t0
    prof = cal.profile
    fit_hashes = {s.hash for s, _ in fit_pairs}

    rows = []
    pooled: dict[str, list[float]] = {"lat": [], "flops": [], "params": [], "meas": []}
    overlap = 0
    for name in list_spaces():
        space = get_space(name, input_shape=SHAPE)
        lat, flops, params, meas = [], [], [], []
        for seed in range(n_eval):
            spec = sample_spec(space, seed)
            if spec.hash in fit_hashes:
                overlap += 1
                continue
            rep = estimate_cost(spec, SHAPE, NUM_CLASSES, device=prof)
            lat.append(rep["latency_ms"])
            flops.append(rep["flops"])
            params.append(rep["params"])
            meas.append(measure_latency(spec, SHAPE, NUM_CLASSES, repeats=repeats, threads=THREADS))
        taus = [kendalltau(x, meas).statistic for x in (lat, flops, params)]
        rows.append([name, *taus, len(meas), logerr(lat, meas), f"{min(meas):.3g} - {max(meas):.3g}"])
        for k, v in (("lat", lat), ("flops", flops), ("params", params), ("meas", meas)):
            pooled[k] += v
    taus = [kendalltau(pooled[k], pooled["meas"]).statistic for k in ("lat", "flops", "params")]
    rows.append(["all spaces pooled", *taus, len(pooled["meas"]), logerr(pooled["lat"], pooled["meas"]),
                 f"{min(pooled['meas']):.3g} - {max(pooled['meas']):.3g}"])
    head = ["space", "tau(roofline latency)", "tau(FLOPs)", "tau(params)", "n",
            "median abs log(pred/meas), eval set", "measured ms min - max (info)"]
    shapes = sorted({str(s) for _, s in fit_pairs})
    note = (f"\nFit set: `default_calibration_set({n_fit}, seed=1000)` (sample seeds 1000..{1000 + n_fit - 1}, "
            f"round-robin over spaces and input shapes {', '.join(shapes)}), the roofline fit of "
            f"`fit_roofline` on `measure_latency(repeats={repeats})` timings "
            f"on {THREADS} thread(s), {t_cal:.0f} s. Fit quality on the fit set: median |log(pred/meas)| = "
            f"{cal.median_abs_log_error:.3f} (a factor of {math.exp(cal.median_abs_log_error):.3f}). "
            f"Fitted profile: peak {prof.peak_macs_per_s / 1e9:.3g} GMAC/s, bandwidth "
            f"{prof.mem_bandwidth_bytes_per_s / 1e9:.3g} GB/s, per-layer overhead {prof.layer_overhead_us:.3g} us.\n"
            f"Eval set: sample seeds 0..{n_eval - 1} per space, input 3x32x32, 10 classes, "
            f"`measure_latency(spec, (3, 32, 32), 10, repeats={repeats})` (median of {repeats} batch-1 runs after "
            f"5 warm-up runs, {THREADS} thread(s)). Eval specs equal to a fit spec (same hash): {overlap} "
            "(skipped). Predicted = `estimate_cost(spec, shape, 10, device=profile)['latency_ms']`. "
            "Kendall tau-b from `scipy.stats.kendalltau`.\n")
    return ("### b. Rank agreement of predicted and measured latency on this CPU\n\n" + table(head, rows) + "\n"
            + note)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few specs and repeats (smoke test)")
    ap.add_argument("--only", choices=["a", "b"], help="run one part")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every timing (default 1: on a shared 2-core machine 2-thread "
                         "batch-1 timings jump by 100x whenever another process takes a core)")
    args = ap.parse_args(argv)
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    print(machine_header("bench_cost: cost model speed and latency ranking", ["bench/bench_cost.py", *argv]))
    t0 = time.perf_counter()
    if args.only in (None, "a"):
        print(part_a(args.quick), flush=True)
    if args.only in (None, "b"):
        print(part_b(args.quick), flush=True)
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
