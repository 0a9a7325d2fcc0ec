"""Issue 17: latency you can trust. Three parts, each printing markdown.

* ``host``: the operator-level model calibrated on this machine against held-out specs of every
  space, beside the old calibrated roofline and FLOPs on the same specs, and the stability of two
  calibrations (two probe sets) in one run; at 1 thread and at a worker's threads.
* ``probe``: ``nas hardware probe`` -> time the ONNX files with onnxruntime on this host -> ``nas
  hardware fit`` -> rank 100 other specs timed the same way.
* ``profiles``: the shipped profiles fitted to published measurements (``bench/published.py``),
  their validation tables; ``--write`` writes ``objectives/cost/devices/*.toml``.
* ``speed``: what ``estimate_cost`` takes per spec with the operator-level model vs a roofline.

Every timing of one part is taken in one interleaved session (``measure_latencies``: rounds over
all networks in shuffled order, 10th percentile per network), so that the calibration sets and the
held-out specs meet the same machine; run it under the shared lock:

    flock /tmp/lightnas-heavy.lock python bench/bench_latency.py host --threads 1,2
    flock /tmp/lightnas-heavy.lock python bench/bench_latency.py probe
    python bench/bench_latency.py profiles [--write]
    flock /tmp/lightnas-heavy.lock python bench/bench_latency.py speed
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import loadavg, machine_header, table  # noqa: E402

from objectives import probe_set
from objectives.cost import (
    LOW_PERCENTILE,
    analytic_layers,
    fit_roofline,
    kendall_tau,
    layers_from_ops,
    median_abs_ln_error,
    roofline_ms,
    time_rounds,
)
from search_spaces import get_space, list_spaces, sample_spec  # noqa: E402

SPACES = ("mobilenetv2", "plain", "resnet")
EVAL_SHAPE = (3, 32, 32)


def _eval_specs(n: int, seed0: int = 0) -> list[tuple[str, object, tuple[int, int, int]]]:
    out = []
    for name in list_spaces():
        space = get_space(name, input_shape=EVAL_SHAPE)
        out += [(name, sample_spec(space, seed0 + i), EVAL_SHAPE) for i in range(n)]
    return out


def _scores(pred: np.ndarray, meas: np.ndarray, groups: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for g in SPACES:
        idx = [i for i, x in enumerate(groups) if x == g]
        out[g] = (kendall_tau(pred[idx], meas[idx]), median_abs_ln_error(pred[idx], meas[idx]))
    out["pooled"] = (kendall_tau(pred, meas), median_abs_ln_error(pred, meas))
    return out


# ------------------------------------------------------------------------------------------- host
def part_host(args: argparse.Namespace) -> str:
    from objectives.cost import fit_opmodel

    lines = ["### a. Host calibration: operator-level model vs roofline vs FLOPs on held-out specs", ""]
    ev = _eval_specs(args.eval)
    cal = [probe_set(args.probes, seed) for seed in (0, 1)]
    pairs = [(p.spec, p.input_shape) for c in cal for p in c] + [(s, sh) for _, s, sh in ev]
    hashes = {(p.spec.hash, p.input_shape) for c in cal for p in c}
    overlap = sum((s.hash, sh) in hashes for _, s, sh in ev)
    nets = [layers_from_ops(analytic_layers(s, sh, 10)) for s, sh in pairs]
    traced = [analytic_layers(s, sh, 10) for s, sh in pairs]
    n1 = n2 = args.probes
    stab_rows = []
    for threads in args.threads:
        t0 = time.time()
        raw = time_rounds(pairs, 10, rounds=args.rounds, threads=threads)
        t_meas = time.time() - t0
        meas = np.array([np.percentile(t, LOW_PERCENTILE) for t in raw])
        m_eval = meas[n1 + n2:]
        groups = [g for g, _, _ in ev]
        # The measurement's own repeatability: the first and the second half of the rounds.
        half = args.rounds // 2
        first = np.array([np.percentile(t[:half], LOW_PERCENTILE) for t in raw[n1 + n2:]])
        second = np.array([np.percentile(t[half:], LOW_PERCENTILE) for t in raw[n1 + n2:]])
        preds = {}
        fit_s = []
        for k, (lo, hi) in enumerate(((0, n1), (n1, n1 + n2))):
            t0 = time.time()
            res = fit_opmodel(nets[lo:hi], meas[lo:hi])
            fit_s.append(time.time() - t0)
            preds[f"model{k + 1}"] = np.array([res.model.network_ms(n, 4) for n in nets[n1 + n2:]])
        peak, bw, ovh = fit_roofline(traced[:n1], meas[:n1])
        preds["roofline"] = np.array([roofline_ms(t, peak, bw, ovh) for t in traced[n1 + n2:]])
        flops = np.array([2.0 * sum(op.macs for op in t) for t in traced[n1 + n2:]])
        t0 = time.time()
        for _ in range(3):
            for n in nets[n1 + n2:]:
                res.model.network_ms(n, 4)
        per_spec_us = (time.time() - t0) / (3 * len(ev)) * 1e6
        rows = []
        for label, key in (("operator-level model, probe set 0", "model1"),
                           ("operator-level model, probe set 1", "model2"),
                           ("roofline (old calibration), probe set 0", "roofline")):
            sc = _scores(preds[key], m_eval, groups)
            rows.append([label] + [f"{sc[g][0]:.3f} / {sc[g][1]:.3f}" for g in (*SPACES, "pooled")])
        sc = _scores(flops, m_eval, groups)
        rows.append(["FLOPs"] + [f"{sc[g][0]:.3f} / -" for g in (*SPACES, "pooled")])
        sc = _scores(first, second, groups)
        rows.append([f"(noise) rounds 1-{half} vs rounds {half + 1}-{args.rounds} of the same specs"]
                    + [f"{sc[g][0]:.3f} / {sc[g][1]:.3f}" for g in (*SPACES, "pooled")])
        stab = kendall_tau(preds["model1"], preds["model2"])
        stab_rows.append([threads, f"{stab:.4f}", f"{t_meas:.0f}", f"{fit_s[0]:.1f} / {fit_s[1]:.1f}",
                          f"{per_spec_us:.0f}", f"{m_eval.min():.3g} - {m_eval.max():.3g}"])
        lines += [f"**{threads} thread(s)** (load average after timing: {loadavg()})", "",
                  table(["predictor (tau / median abs ln(pred/meas))", *SPACES, "all spaces pooled"], rows), ""]
    lines += ["Stability and cost:", "",
              table(["threads", "tau(model of set 0, model of set 1) on the held-out specs", "timing s (info)",
                     "fit s, set 0 / set 1 (info)", "prediction us per spec (info)",
                     "held-out measured ms min - max (info)"], stab_rows), ""]
    lines.append(f"Calibration sets: `probe_set({args.probes}, seed=0)` and `probe_set({args.probes}, seed=1)` "
                 "(a quarter designed probes, the rest sampled from every space at 1x28x28, 3x32x32, 1x8x8). "
                 "Held-out: "
                 f"{args.eval} specs per space (sample seeds 0..{args.eval - 1}, input 3x32x32, 10 classes); held-out "
                 f"specs equal to a calibration network: {overlap}. All {len(pairs)} networks timed in one "
                 f"session per thread count: `measure_latencies(..., rounds={args.rounds})` (each network once per "
                 "round in shuffled order, the 10th percentile of its rounds). The roofline is the calibration "
                 "before this issue (`fit_roofline`: peak MAC/s, bandwidth, per-layer overhead; least squared log "
                 "error) on the same timings of probe set 0. Kendall tau-b from `scipy.stats.kendalltau`.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ probe
def _time_onnx(paths_shapes: list[tuple[Path, tuple[int, ...]]], rounds: int, threads: int) -> list[float]:
    """10th percentile of ``rounds`` interleaved onnxruntime timings per file (batch 1)."""
    import random

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = []
    for path, shape in paths_shapes:
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        s.run(None, {"input": x})
        sessions.append((s, x))
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            s, x = sessions[i]
            s.run(None, {"input": x})
            t0 = time.perf_counter()
            s.run(None, {"input": x})
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.percentile(t, 10)) for t in times]


def part_probe(args: argparse.Namespace) -> str:
    import torch

    from objectives import estimate_cost, get_device
    from search_spaces import build_model

    nas = str(Path(sys.executable).parent / "nas")
    lines = ["### b. probe -> onnxruntime on this host -> fit -> rank other specs", ""]
    with tempfile.TemporaryDirectory(prefix="lightnas-bench-probe-") as tmp:
        home, probes = Path(tmp) / "home", Path(tmp) / "probes"
        env = {**os.environ, "NAS_HOME": str(home)}
        t0 = time.time()
        subprocess.run([nas, "hardware", "probe", "--to", str(probes), "--n", str(args.probe_n)], check=True,
                       env=env, capture_output=True, text=True)
        t_probe = time.time() - t0
        with open(probes / "probes.csv") as f:
            rows = list(csv.DictReader(f))
        # The other specs: sampled from every space at 3x32x32 (seeds far from the probes'), exported alike.
        others = _eval_specs(args.others // len(SPACES) + 1, seed0=50_000)[: args.others]
        other_dir = Path(tmp) / "others"
        other_dir.mkdir()
        other_files = []
        for i, (_, spec, shape) in enumerate(others):
            path = other_dir / f"o{i:03d}.onnx"
            model = build_model(spec, shape, 10).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(1, *shape),), str(path), dynamo=False, input_names=["input"],
                                  output_names=["logits"], opset_version=17)
            other_files.append((path, shape))
        probe_files = [(probes / r["onnx"], tuple(int(v) for v in r["input_shape"].split("x"))) for r in rows]
        t0 = time.time()
        ms = _time_onnx(probe_files + other_files, args.rounds, args.ort_threads)
        t_time = time.time() - t0
        for r, v in zip(rows, ms[: len(rows)], strict=True):
            r["latency_ms"] = f"{v:.6g}"
        with open(probes / "probes.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        fit = subprocess.run([nas, "hardware", "fit", "ort-host", "--measurements", str(probes / "probes.csv"),
                              "--runtime", f"onnxruntime CPU, {args.ort_threads} thread(s)", "--no-store"],
                             check=True, env=env, capture_output=True, text=True)
        os.environ["NAS_HOME"] = str(home)
        prof = get_device("ort-host")
        meas = np.array(ms[len(rows):])
        pred = np.array([estimate_cost(s, sh, 10, device=prof)["latency_ms"] for _, s, sh in others])
        flops = np.array([estimate_cost(s, sh, 10, device=prof)["flops"] for _, s, sh in others])
        groups = [g for g, _, _ in others]
        sc, sf = _scores(pred, meas, groups), _scores(flops, meas, groups)
        out_rows = []
        for g in (*SPACES, "pooled"):
            idx = [i for i, x in enumerate(groups) if g in (x, "pooled")]
            out_rows.append([g, len(idx), f"{sc[g][0]:.3f}", f"{sc[g][1]:.3f}", f"{sf[g][0]:.3f}",
                             f"{float(np.median(pred[idx] / meas[idx])):.3f}"])
        v = prof.validation[0]
        lines += [table(["space", "n", "tau(fitted profile)", "median abs ln(pred/meas)", "tau(FLOPs)",
                         "median pred/meas"], out_rows), "",
                  f"`nas hardware fit` output: {' '.join(fit.stdout.split())}", "",
                  f"Probes: `nas hardware probe --n {args.probe_n}` ({t_probe:.0f} s, info); the fitted profile's own "
                  f"5-fold cross-validation on the probes: tau {v.tau:.3f}, median |ln error| "
                  f"{v.median_abs_ln_error:.3f}. Other specs: {len(others)} sampled from every space at 3x32x32 "
                  f"(sample seeds from 50000), exported to ONNX the same way. All {len(ms)} ONNX files timed with "
                  f"onnxruntime {_ort_version()} (CPUExecutionProvider, {args.ort_threads} intra-op thread(s)) in one "
                  f"interleaved session of {args.rounds} rounds, 10th percentile per network ({t_time:.0f} s, info). "
                  "Predicted = `estimate_cost(spec, (3, 32, 32), 10, device='ort-host')['latency_ms']`."]
    return "\n".join(lines)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


# ------------------------------------------------------------------------------------------ speed
def part_speed(args: argparse.Namespace) -> str:
    """``estimate_cost`` per spec with an operator-level profile vs a roofline profile, same specs,
    one run (the issue: the model stays analytic, well under a millisecond per spec)."""
    from objectives import DeviceProfile, estimate_cost, get_device

    specs = [s for _, s, _ in _eval_specs(args.eval)]
    for spec in specs:  # the spec's operations are cached by estimate_cost: both profiles start warm there
        estimate_cost(spec, EVAL_SHAPE, 10, device="jetson-nano")
    names = {"rpi4 (operator-level model)": "rpi4", "jetson-nano (roofline)": "jetson-nano"}
    cold: dict[str, float] = {}
    warm: dict[str, float] = {}
    for _ in range(5):  # interleaved repeats, the fastest kept: a shared machine's noise only adds time
        for label, name in names.items():
            prof = DeviceProfile(**get_device(name).model_dump())  # a fresh profile: no layer costed yet
            for store in (cold, warm):
                t0 = time.perf_counter()
                for spec in specs:
                    estimate_cost(spec, EVAL_SHAPE, 10, device=prof)
                store[label] = min(store.get(label, float("inf")), (time.perf_counter() - t0) / len(specs) * 1e6)
    base = cold["jetson-nano (roofline)"]
    rows = [[label, f"{cold[label]:.0f}", f"{warm[label]:.0f}", f"{cold[label] / base:.2f}",
             f"{warm[label] / base:.2f}"] for label in names]
    return "\n".join(["### d. Cost of the model: `estimate_cost` per spec", "",
                      table(["profile", "us per spec, first costing (info)", "us per spec, layers seen before (info)",
                             "ratio to the roofline, first", "ratio to the roofline, seen before"], rows), "",
                      f"{len(specs)} specs ({args.eval} per space, 3x32x32). First: a fresh profile object, so every "
                      "layer's latency is computed; seen before: the same specs again (a profile remembers the "
                      "latency of each layer shape it costed). 5 interleaved repeats, the fastest kept."])


# --------------------------------------------------------------------------------------- profiles
def part_profiles(args: argparse.Namespace) -> str:
    import fit_profiles

    return fit_profiles.report(write=args.write)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["host", "probe", "profiles"], help="host, probe, profiles, speed")
    ap.add_argument("--threads", default="1", help="comma list of torch thread counts for 'host' (e.g. 1,2)")
    ap.add_argument("--probes", type=int, default=360, help="networks per calibration set ('host')")
    ap.add_argument("--probe-n", type=int, default=60, help="probe networks of 'nas hardware probe' ('probe')")
    ap.add_argument("--eval", type=int, default=100, help="held-out specs per space ('host')")
    ap.add_argument("--rounds", type=int, default=30, help="timings per network")
    ap.add_argument("--others", type=int, default=100, help="specs ranked by the fitted profile ('probe')")
    ap.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads ('probe')")
    ap.add_argument("--write", action="store_true", help="'profiles': write objectives/cost/devices/*.toml")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    t0 = time.time()
    print(machine_header("bench_latency: operator-level latency model (issue 17)", sys.argv))
    for part in args.parts:
        if part == "host":
            print(part_host(args))
        elif part == "probe":
            print(part_probe(args))
        elif part == "profiles":
            print(part_profiles(args))
        elif part == "speed":
            print(part_speed(args))
        else:
            raise SystemExit(f"unknown part {part!r}; accepted: host, probe, profiles, speed")
        print()
    print(f"Total wall time {time.time() - t0:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
