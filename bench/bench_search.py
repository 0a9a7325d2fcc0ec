"""Benchmark of the search loop (issue 3). Every timing is reported as a ratio within one run.

Parts (``python bench/bench_search.py PART [--quick]``; ``all`` runs every part):

hv        a. Hypervolume of the feasible front after N trials for tpe, nsga2 and random on the
             digits demo study (``nas.search.demo_spec``, only name/sampler/seed/trials changed),
             3 seeds, each study in its own SQLite file; and
          b. the wall-time share saved by budget rejection and reuse, from the same trials.
overhead  c. Non-training overhead per trained trial, (trial wall - train_seconds) / trial wall,
             on SQLite and on a throwaway PostgreSQL server, same study spec.
workers   d. Trials per minute with ``run_study(workers=1)`` vs ``workers=2``.
trainer   e. Images/s of ``train_model`` vs a minimal hand-written PyTorch loop.
rss       f. Peak RSS of a worker (``nas study run`` in a subprocess).

``--quick`` makes everything much smaller (smoke test; numbers meaningless).
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import contextlib
import importlib.util
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "NAS_HOME" not in os.environ:  # never touch ~/.lightnas; removed at exit
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from _util import loadavg, machine_header, mean_std, median, table  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("tpe", "nsga2", "random")
FEASIBLE = ("trained", "reused")
REF_ACC, REF_COST = 0.0, 1.0  # hypervolume reference point (accuracy, hw_cost)


def demo_variant(name: str, *, sampler: str = "tpe", seed: int = 0, trials: int = 40, budget: str | None = None):
    """``demo_spec`` with only name, sampler, seed and trial target (and optionally budget) changed."""
    from nas.search import demo_spec, make_spec

    base = demo_spec(name, trials).model_dump()
    fields = {**base, "name": name, "sampler": sampler, "seed": seed, "trials": trials}
    if budget is not None:
        fields["budget"] = budget
    return make_spec(**fields)


def new_study(url: str, spec) -> None:
    from nas.search import create_study
    from storage import Store

    store = Store(url)
    try:
        create_study(spec, store)
    finally:
        store.close()


def load_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    from storage import Store

    store = Store(url)
    try:
        study = optuna.load_study(study_name=name, storage=store.optuna)
        return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    finally:
        store.close()


def wall(t: optuna.trial.FrozenTrial) -> float:
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _work_one(name: str, url: str) -> float:
    """Run one study to its target in this (pool) process with 1 torch thread; wall seconds."""
    from nas.workers import work

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work(name, url, threads=1)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ hypervolume
def hv2d(points: list[tuple[float, float]]) -> float:
    """Exact 2-D hypervolume of (accuracy, hw_cost) points: maximise accuracy, minimise cost.

    Reference point (REF_ACC, REF_COST); costs above REF_COST are clipped to it (such a point
    then adds nothing), accuracies below REF_ACC likewise.
    """
    pts = sorted((min(c, REF_COST), max(a, REF_ACC)) for a, c in points)
    area, best = 0.0, REF_ACC
    # Sweep cost from low to high; the dominated height at cost x is the best accuracy so far.
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else REF_COST
        area += (nxt - c) * (best - REF_ACC)
    return area


def hv_curve(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    """Hypervolume of the feasible points among the first k complete trials, k = 1..n."""
    pts: list[tuple[float, float]] = []
    out = []
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") in FEASIBLE:
            pts.append((t.values[0], t.values[1]))
        out.append(hv2d(pts))
    return out


def part_hv(args: argparse.Namespace, tmp: Path) -> str:
    n, seeds = args.trials, list(range(args.seeds))
    jobs = []
    for sampler in SAMPLERS:
        for seed in seeds:
            name = f"{sampler}-s{seed}"
            url = f"sqlite:///{tmp}/hv-{name}.db"
            new_study(url, demo_variant(name, sampler=sampler, seed=seed, trials=n))
            jobs.append((sampler, seed, name, url))
    t0 = time.perf_counter()
    # Two studies at a time, 1 torch thread each (2 cores): processes x threads <= 2.
    with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_work_one, name, url): (s, sd) for s, sd, name, url in jobs}
        for f in cf.as_completed(futs):
            f.result()
    t_all = time.perf_counter() - t0

    res: dict[str, list[dict]] = {s: [] for s in SAMPLERS}
    clipped = 0
    for sampler, seed, name, url in jobs:
        trials = [t for t in load_trials(url, name) if t.state == TrialState.COMPLETE]
        curve = hv_curve(trials)
        feas = [t for t in trials if t.user_attrs.get("status") in FEASIBLE]
        clipped += sum(t.values[1] > REF_COST for t in feas)
        if feas:  # cross-check the hand-written 2-D HV against Optuna's
            from optuna._hypervolume import compute_hypervolume

            loss = np.array([[-t.values[0], min(t.values[1], REF_COST)] for t in feas])
            ref = compute_hypervolume(loss, np.array([-REF_ACC, REF_COST]))
            assert abs(ref - curve[-1]) < 1e-9, (ref, curve[-1])
        res[sampler].append({
            "seed": seed, "curve": curve, "trials": trials,
            "n": len(trials),
            "status": {k: sum(t.user_attrs.get("status") == k for t in trials)
                       for k in ("trained", "reused", "over_budget")},
        })

    rand_mean = mean_std([r["curve"][-1] for r in res["random"]])[0]
    rows = []
    for sampler in SAMPLERS:
        finals = [r["curve"][-1] for r in res[sampler]]
        m, s = mean_std(finals)
        reach = []
        for r in res[sampler]:
            k = next((i + 1 for i, v in enumerate(r["curve"]) if v >= rand_mean), None)
            reach.append(k)
        got = [k for k in reach if k is not None]
        if len(got) == len(reach):
            reach_txt = f"{sum(got) / len(got):.1f} ({', '.join(map(str, got))})"
        elif got:
            reach_txt = (f"not reached in {len(reach) - len(got)}/{len(reach)} seeds; "
                         f"{sum(got) / len(got):.1f} over the others ({', '.join(map(str, got))})")
        else:
            reach_txt = "not reached"
        st = {k: sum(r["status"][k] for r in res[sampler]) / len(res[sampler])
              for k in ("trained", "reused", "over_budget")}
        rows.append([sampler, f"{m:.4f} +- {s:.4f}", m / rand_mean, reach_txt,
                     ", ".join(f"{v:.4f}" for v in finals),
                     f"{st['trained']:.1f} / {st['reused']:.1f} / {st['over_budget']:.1f}"])
    head = ["sampler", f"final HV after {n} trials, mean +- std ({len(seeds)} seeds)", "ratio to random's mean",
            "trials to reach random's mean final HV (mean; per seed)", "final HV per seed",
            "trained / reused / over budget (mean per study)"]
    out = [f"### a. Hypervolume of the feasible front after {n} trials (digits demo study)\n",
           table(head, rows), "",
           f"Studies: `nas.search.demo_spec` (space plain, budget `params<=20k flops<=1.5M`, 20 epochs, batch 64, "
           f"lr 0.1) with only name/sampler/seed/trials changed; seeds {seeds} (the seed also fixes the data "
           f"split and the training seed, identical across samplers); each study in its own SQLite file, run "
           f"by `nas.workers.work(threads=1)`, {args.parallel} studies at a time; all {len(jobs)} studies took "
           f"{t_all:.0f} s. HV: 2-D, maximise validation accuracy, minimise hw_cost, reference point "
           f"(accuracy {REF_ACC}, hw_cost {REF_COST}) -- a feasible trial meets every budget limit, and hw_cost is "
           f"the mean of resource/limit, so feasible hw_cost <= 1; costs above 1 would be clipped to 1 (adding "
           f"nothing): {clipped} feasible points were clipped. Only feasible trials (status trained or reused) "
           f"count. Exact sweep, checked against `optuna._hypervolume.compute_hypervolume` on every final front. "
           f"\"Trials to reach\": first trial count k at which the study's HV >= random's mean final HV "
           f"({rand_mean:.4f}).", ""]
    out.append(part_savings(res))
    return "\n".join(out)


def part_savings(res: dict[str, list[dict]]) -> str:
    rows = []
    for sampler in [*SAMPLERS, "all"]:
        studies = [r for s in SAMPLERS for r in res[s]] if sampler == "all" else res[sampler]
        act = hyp = 0.0
        n_over = n_reuse = n_tr = 0
        shares = []
        for r in studies:
            trials = r["trials"]
            trained = [t for t in trials if t.user_attrs.get("status") == "trained"]
            mean_train = (sum(t.user_attrs["train_seconds"] for t in trained) / len(trained)) if trained else 0.0
            a = sum(wall(t) for t in trials)
            k_over = sum(t.user_attrs.get("status") == "over_budget" for t in trials)
            k_reuse = sum(t.user_attrs.get("status") == "reused" for t in trials)
            h = a + (k_over + k_reuse) * mean_train
            act, hyp = act + a, hyp + h
            n_over, n_reuse, n_tr = n_over + k_over, n_reuse + k_reuse, n_tr + len(trained)
            shares.append(1 - a / h if h else 0.0)
        rows.append([sampler, len(studies), n_tr, n_over, n_reuse, act, hyp, 1 - act / hyp,
                     ", ".join(f"{x:.3f}" for x in shares)])
    head = ["sampler", "studies", "trained", "over budget", "reused", "trial wall s, actual (info)",
            "trial wall s, if all trained (info)", "share saved (pooled)", "share saved per study"]
    return ("### b. Wall time saved by rejecting over-budget specs before training and reusing evaluations\n\n"
            + table(head, rows) + "\n\n"
            "Same trials as part a. Actual = sum over complete trials of datetime_complete - datetime_start. "
            "If-all-trained = actual + (over-budget + reused trials) x the study's mean `train_seconds` of its "
            "trained trials (their own wall time, i.e. sampling + cost estimate, is kept). Share saved = "
            "1 - actual / if-all-trained. This is an estimate that errs low: over-budget networks are larger "
            "than the feasible ones, so training them would take longer than the mean of trained trials.\n")


# ------------------------------------------------------------------------------ overhead
def _load_conftest():
    """The throwaway-PostgreSQL helpers of tests/conftest.py (initdb/pg_ctl as user postgres)."""
    spec = importlib.util.spec_from_file_location("_lightnas_conftest", ROOT / "tests" / "conftest.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def postgres_server():
    """Yield a function ``fresh() -> url`` giving a new empty database on a throwaway server."""
    import psycopg
    from sqlalchemy.engine import make_url

    conf = _load_conftest()
    bindir = conf._pg_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries found")
    server = conf._PrivateServer(bindir)
    try:
        url = server.start()
        count = iter(range(1_000_000))

        def fresh() -> str:
            db = f"bench_{next(count)}"
            with psycopg.connect(**conf._admin_conninfo(url, "postgres"), autocommit=True) as conn:
                conn.execute(f'create database "{db}"')
            return make_url(url).set(database=db).render_as_string(hide_password=False)

        yield fresh
    finally:
        server.stop()


def run_overhead_study(url: str, name: str, trials: int) -> tuple[list[optuna.trial.FrozenTrial], float]:
    from nas.workers import work

    new_study(url, demo_variant(name, trials=trials))
    t0 = time.perf_counter()
    work(name, url, threads=1)
    return [t for t in load_trials(url, name) if t.state == TrialState.COMPLETE], time.perf_counter() - t0


def part_overhead(args: argparse.Namespace, tmp: Path) -> str:
    n = args.overhead_trials
    results: dict[str, list] = {}
    with postgres_server() as fresh_pg:
        order = ["SQLite", "PostgreSQL", "PostgreSQL", "SQLite"][: 2 * args.overhead_rounds]
        for i, backend in enumerate(order):
            # A fresh database per run: a shared one would let later runs reuse earlier evaluations.
            url = f"sqlite:///{tmp}/overhead-{i}.db" if backend == "SQLite" else fresh_pg()
            trials, secs = run_overhead_study(url, f"overhead-{i}", n)
            results.setdefault(backend, []).append((trials, secs))
    rows = []
    med_over: dict[str, float] = {}
    for backend in ("SQLite", "PostgreSQL"):
        trained = [t for trials, _ in results[backend] for t in trials if t.user_attrs.get("status") == "trained"]
        over_b = [t for trials, _ in results[backend] for t in trials if t.user_attrs.get("status") == "over_budget"]
        overhead = [wall(t) - t.user_attrs["train_seconds"] for t in trained]
        share = [(wall(t) - t.user_attrs["train_seconds"]) / wall(t) for t in trained]
        ob_ms = median([wall(t) for t in over_b]) * 1e3 if over_b else None
        if not trained:
            rows.append([backend, len(results[backend]), 0, None, None, "-", None, ob_ms, None])
            continue
        med_over[backend] = median(overhead)
        total_share = sum(overhead) / sum(wall(t) for t in trained)
        rows.append([backend, len(results[backend]), len(trained), median(share), total_share,
                     f"{min(share):.3f} - {max(share):.3f}", median(overhead) * 1e3, ob_ms,
                     median([wall(t) for t in trained])])
    head = ["backend", "studies", "trained trials", "overhead share, median", "overhead share, pooled",
            "share min - max", "overhead ms, median (info)", "over-budget trial ms, median (info)",
            "trained trial s, median (info)"]
    ratio = med_over["PostgreSQL"] / med_over["SQLite"] if len(med_over) == 2 else math.nan
    return (f"### c. Non-training overhead per trained trial, SQLite vs PostgreSQL\n\n{table(head, rows)}\n\n"
            f"Median overhead PostgreSQL / SQLite = {ratio:.3g}. Each study: `demo_spec` (tpe, seed 0), "
            f"{n} trials, run by `nas.workers.work(threads=1)`; backends run in the order "
            f"{', '.join(['SQLite', 'PostgreSQL', 'PostgreSQL', 'SQLite'][: 2 * args.overhead_rounds])} "
            "(fresh study in a fresh database each time, so nothing is reused across runs; the same seed gives "
            "the same trial sequence on both). PostgreSQL 15: "
            "throwaway local server started by the helpers of tests/conftest.py (127.0.0.1, fsync off, "
            "synchronous_commit off), stopped at the end. Overhead of a trained trial = (datetime_complete - "
            "datetime_start) - train_seconds: sampling, cost estimate, budget check, evaluation lookup, "
            "storing weights and evaluation, Optuna's own writes. Share = overhead / trial wall; 'pooled' = "
            "sum of overheads / sum of trial walls.\n")


# ------------------------------------------------------------------------------ workers
LOOSE_BUDGET = "params<=1M flops<=100M"  # nothing in the demo space exceeds it: every trial trains


def part_workers(args: argparse.Namespace, tmp: Path) -> str:
    from nas.workers import run_study, work
    from storage import Store

    n = args.worker_trials
    configs = [("1 worker x 2 threads (run_study workers=1)", 1, None),
               ("2 workers x 1 thread (run_study workers=2)", 2, None),
               ("1 worker x 1 thread (work(threads=1), control)", 1, 1)]
    workloads = [("demo budget `params<=20k flops<=1.5M` (most trials rejected before training)", None, n),
                 (f"loose budget `{LOOSE_BUDGET}` (every trial trained)", LOOSE_BUDGET, args.worker_trials_loose)]
    out = ["### d. Trials per minute, 1 vs 2 local workers\n"]
    k = 0
    for wl_label, budget, n_wl in workloads:
        runs: dict[str, list[tuple[float, int, int]]] = {c[0]: [] for c in configs}
        for rep in range(args.worker_reps):
            for label, workers, threads in (configs if rep % 2 == 0 else configs[::-1]):
                name = f"workers-{k}"
                url = f"sqlite:///{tmp}/workers-{k}.db"
                k += 1
                new_study(url, demo_variant(name, trials=n_wl, budget=budget))
                t0 = time.perf_counter()
                if threads is None:
                    store = Store(url)
                    try:
                        run_study(name, store, workers=workers)
                    finally:
                        store.close()
                else:
                    work(name, url, threads=threads)
                secs = time.perf_counter() - t0
                trials = [t for t in load_trials(url, name) if t.state == TrialState.COMPLETE]
                trained = sum(t.user_attrs.get("status") == "trained" for t in trials)
                runs[label].append((secs, len(trials), trained))
        base = runs[configs[0][0]]
        base_rate = sum(c for _, c, _ in base) / sum(s for s, _, _ in base) * 60
        base_tr = sum(t for _, _, t in base) / sum(s for s, _, _ in base) * 60
        rows = []
        for label, _, _ in configs:
            r = runs[label]
            secs = sum(s for s, _, _ in r)
            rate = sum(c for _, c, _ in r) / secs * 60
            tr_rate = sum(t for _, _, t in r) / secs * 60
            rows.append([label, len(r), rate, rate / base_rate, tr_rate, tr_rate / base_tr if base_tr else None,
                         ", ".join(f"{c}/{t}/{s:.0f}s" for s, c, t in r)])
        head = ["configuration", "runs", "trials/min", "ratio to workers=1", "trained trials/min",
                "ratio to workers=1 (trained)", "per run: complete/trained/wall"]
        out += [f"Workload: {wl_label}, target {n_wl} trials\n", table(head, rows),
                f"\n(load average after: {loadavg()})\n"]
    out.append("Each run: a fresh SQLite study from `demo_spec` (tpe, seed 0; second workload: only the budget "
               "changed), target as given per workload, wall time from the `run_study` call to its return (includes "
               "spawning the worker processes for workers=2). Rates pool all runs of a configuration; runs of the "
               "configurations are interleaved (order reversed on odd repetitions). With 2 workers the second "
               "worker samples with seed + 1, so the mix of over-budget (milliseconds) and trained (seconds) "
               "trials, and the networks trained, differ between configurations: compare the trained-trials "
               "rate too. `run_study` gives each worker cores // workers torch threads, so workers=1 trains with "
               "2 threads; see the threads diagnostic under part e.\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------ trainer
def minimal_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                 lr: float, seed: int) -> float:
    """Plain PyTorch: SGD (same momentum/Nesterov/weight decay), shuffled slices, no eval. Seconds."""
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            if len(idx) < 2:
                break
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def part_trainer(args: argparse.Namespace, tmp: Path) -> str:
    from objectives import TrainConfig, load_dataset, train_model
    from search_spaces import build_model, get_space, sample_spec

    threads = 1
    torch.set_num_threads(threads)
    spec0 = demo_variant("trainer")
    data = load_dataset(spec0.data, seed=0, val_fraction=spec0.val_fraction)
    # 10 epochs (the demo trains 20): the ratio does not depend on the epoch count, and the part
    # stays within a few minutes with the larger resnet/mobilenetv2 networks.
    epochs, batch, lr = (3 if args.quick else 10), spec0.fidelity.batch_size, spec0.fidelity.lr
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=0, device="cpu", threads=threads)
    cases = [("plain (demo space)", get_space("plain", input_shape=data.input_shape, **spec0.space_options), 0),
             ("plain (demo space)", get_space("plain", input_shape=data.input_shape, **spec0.space_options), 1),
             ("resnet", get_space("resnet", input_shape=data.input_shape), 0),
             ("mobilenetv2", get_space("mobilenetv2", input_shape=data.input_shape), 0)]
    if args.quick:
        cases = cases[:2]
    n_img = len(data.y_train) * epochs
    rows, ratios = [], []
    for label, space, seed in cases:
        arch = sample_spec(space, seed)
        t_tr, t_min = [], []
        for rep in range(args.trainer_reps):
            for which in (("trainer", "minimal") if rep % 2 == 0 else ("minimal", "trainer")):
                torch.manual_seed(0)
                model = build_model(arch, data.input_shape, data.num_classes)
                if which == "trainer":
                    t_tr.append(train_model(model, data, cfg).seconds)
                else:
                    t_min.append(minimal_loop(model, data.x_train, data.y_train, epochs, batch, lr, 0))
        ips_tr, ips_min = n_img / median(t_tr), n_img / median(t_min)
        ratios.append(ips_tr / ips_min)
        rows.append([f"{label}, sample seed {seed} ({arch.short_hash})", ips_tr / ips_min, ips_tr, ips_min,
                     median(t_tr), median(t_min)])
    rows.append(["median over networks", median(ratios), None, None, None, None])
    head = ["network", "train_model / minimal loop (images/s ratio)", "train_model images/s (info)",
            "minimal images/s (info)", "train_model s (info)", "minimal s (info)"]
    text = (f"### e. Trainer throughput vs a minimal PyTorch loop\n\n{table(head, rows)}\n\n"
            f"digits (8x8, {len(data.y_train)} training images), {epochs} epochs, batch {batch}, {threads} torch "
            f"thread, CPU; median of {args.trainer_reps} runs each, interleaved. Images/s = training images x "
            "epochs / wall seconds. `train_model` seconds are its own `TrainResult.seconds`, which include "
            "building the optimiser, the per-step learning-rate schedule and loss sync (`float(loss)`), the "
            "validation pass after every epoch and copying the final weights to a state dict (nothing "
            "subtracted). The minimal loop: same model (same init seed), same tensors, SGD with the same "
            "momentum 0.9/Nesterov/weight decay 5e-4 on all parameters, constant lr, shuffled slices, no "
            "evaluation, no loss sync.\n")

    # Diagnostic for part d: the same train_model call with 2 torch threads vs 1 thread.
    label, space, seed = cases[0]
    arch = sample_spec(space, seed)
    ep2 = 2 if args.quick else 5
    cfgs = {t: TrainConfig(epochs=ep2, batch_size=batch, lr=lr, seed=0, device="cpu", threads=t) for t in (1, 2)}
    secs: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(2):
        for t in ((1, 2) if rep % 2 == 0 else (2, 1)):
            torch.manual_seed(0)
            secs[t].append(train_model(build_model(arch, data.input_shape, data.num_classes), data, cfgs[t]).seconds)
    torch.set_num_threads(threads)
    text += (f"\nThreads diagnostic (same `train_model` call, {label} sample seed {seed}, {ep2} epochs, 2 runs each, "
             f"interleaved): wall s with 1 thread {', '.join(f'{x:.2f}' for x in secs[1])}; with 2 threads "
             f"{', '.join(f'{x:.2f}' for x in secs[2])}; images/s ratio 2 threads / 1 thread = "
             f"{median(secs[1]) / median(secs[2]):.3g} (load average now {loadavg()}).\n")
    return text


# ------------------------------------------------------------------------------ rss
def _rss_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of one subprocess, measured by GNU time's %M (max RSS, KiB).

    Not ``os.wait4`` on a child of this process: Linux carries the RSS high-water mark across
    fork/vfork + exec, so a child of this (torch-loaded, large) process would report at least
    this process's RSS. GNU time is small, so its child's figure is the child's own.
    """
    gtime = shutil.which("time", path="/usr/bin:/bin")
    if gtime is None:
        raise RuntimeError("GNU time (/usr/bin/time) is needed for the RSS measurement")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as out, tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        rc = subprocess.call([gtime, "-f", "%M", "-o", out.name, *cmd], env=env, stdout=subprocess.DEVNULL,
                             stderr=errf, cwd=ROOT)
        secs = time.perf_counter() - t0
        if rc != 0:
            errf.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({rc}):\n{errf.read().decode(errors='replace')[-2000:]}")
        kib = int(out.read().strip().splitlines()[-1])
    return kib / 1024, secs


def part_rss(args: argparse.Namespace, tmp: Path) -> str:
    env = {**os.environ, "NAS_HOME": str(tmp / "home")}
    cli = [sys.executable, "-m", "nas.cli"]
    n = args.rss_trials
    rows = []
    rss, secs = _rss_of([sys.executable, "-c", "import torch"], env)
    rows.append(["`python -c 'import torch'` (baseline)", rss, secs])
    rss, secs = _rss_of([*cli, "spaces"], env)
    rows.append(["`nas spaces` (imports only)", rss, secs])
    for workers in (1, 2):
        url = f"sqlite:///{tmp}/rss-{workers}.db"
        name = f"rss{workers}"
        new_study(url, demo_variant(name, trials=n))
        rss, secs = _rss_of([*cli, "study", "run", name, "--workers", str(workers), "--quiet",
                                "--storage", url], env)
        trials = [t for t in load_trials(url, name) if t.state == TrialState.COMPLETE]
        trained = sum(t.user_attrs.get("status") == "trained" for t in trials)
        what = ("the CLI process is the worker" if workers == 1 else
                "max over the CLI process and its 2 spawned worker processes")
        rows.append([f"`nas study run {name} --workers {workers} --quiet` ({len(trials)} trials, {trained} trained; "
                     f"{what})", rss, secs])
    head = ["process", "peak RSS MiB", "wall s (info)"]
    return (f"### f. Peak resident memory of a worker\n\n{table(head, rows)}\n\n"
            f"Study: `demo_spec` (digits, tpe, seed 0), target {n} trials (trials 0-9 of seed 0 are all over "
            "budget, so a smaller target trains nothing), SQLite. Peak RSS = GNU "
            "`/usr/bin/time -f %M` of the command: the largest RSS of the process or of any descendant it waited "
            "for. For --workers 2 a spawned worker inherits the CLI process's RSS high-water mark at spawn time "
            "(Linux keeps it across fork + exec), so that row is an upper bound for one worker.\n")


# ------------------------------------------------------------------------------ main
PARTS = {"hv": part_hv, "overhead": part_overhead, "workers": part_workers, "trainer": part_trainer,
         "rss": part_rss}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="*", default="all", choices=["all", *PARTS],
                    help="parts to run (default all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    ap.add_argument("--trials", type=int, help="hv: trials per study (default 40; quick 8)")
    ap.add_argument("--seeds", type=int, help="hv: seeds 0..S-1 (default 3; quick 1)")
    ap.add_argument("--parallel", type=int, default=2, help="hv: studies run at once, 1 thread each (default 2)")
    args = ap.parse_args(argv)
    q = args.quick
    args.trials = args.trials or (8 if q else 40)
    args.seeds = args.seeds or (1 if q else 3)
    args.overhead_trials = 12 if q else 20
    args.overhead_rounds = 1 if q else 2
    args.worker_trials = 6 if q else 16
    args.worker_trials_loose = 4 if q else 10
    args.worker_reps = 1 if q else 2
    args.trainer_reps = 1 if q else 3
    args.rss_trials = 4 if q else 20
    chosen = [args.part] if isinstance(args.part, str) else args.part
    parts = list(PARTS) if "all" in chosen else list(dict.fromkeys(chosen))

    print(machine_header("bench_search: search loop", ["bench/bench_search.py", *argv]), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-"))
    t0 = time.perf_counter()
    try:
        for p in parts:
            t1 = time.perf_counter()
            print(PARTS[p](args, tmp), flush=True)
            print(f"(part {p}: {time.perf_counter() - t1:.0f} s wall; load average {loadavg()})\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
