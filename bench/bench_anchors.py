"""Search that beats its anchors (issue 7): hypervolume over wall time for random, nsga2, tpe and
tpe + Pareto-aware early stopping (+ weight inheritance), same budget, same trial count, 3 seeds,
on digits and on an IDX dataset; plus how often early stopping would have stopped a front member,
warm starts across datasets, and weight inheritance at equal epochs.

``python bench/bench_anchors.py [--trials 40] [--seeds 3] [--idx DIR] [--parallel 2] [--only digits|idx]
[--methods random,tpe,...] [--idx-budget B] [--idx-epochs E] [--idx-train-fraction F] [--idx-val-fraction V]
[--skip warm,inherit] [--keep DIR] [--inherit-from DIR] [--quick]``

Methods: those of issue 7 (the default set) and, for issue 18 (BENCHMARKS.md section 11), ``gp``
(Optuna's constrained GPSampler), ``gp+snip`` / ``tpe+snip`` (proxy-guided: snip picks which of 8
candidates within the budget, no costlier than the sampler's own, is trained) and ``gp+snip+es`` /
``tpe+snip+es`` (with Pareto early stopping).

Parts (all from one run, on one machine; every time is a ratio within the run):

a. Per dataset, per method and seed: a study (the digits demo spec: space ``plain``, 20 epochs,
   budget ``params<=20k flops<=1.5M``; for the IDX input the FLOPs limit scales with the pixels)
   in its own SQLite file, run to N finished trials by one worker with 1 torch thread,
   ``--parallel`` studies at a time. Hypervolume (maximise validation accuracy, minimise
   hw_cost, reference point (0, 1), feasible trials only) after each trial, against the wall time
   since the study's first trial started. "Time to random's final HV": the first time a study's
   HV reaches the final HV of *random search with the same seed*, divided by that random study's
   wall time. The goal of issue 7: <= 1/3 for tpe + early stopping.
b. Replay of the early-stopping rule on the tpe studies that ran without it: would it have
   stopped a trial that ended on the final front? (Peers: the trials finished before it started;
   a single worker runs them in order, so that is what the live rule would have seen.)
c. Warm start: tpe + early stopping on each dataset, seeded with the front of the *other*
   dataset's tpe study of the same seed (``--warm-start``), against the searches from scratch:
   HV after k trials and time to random's final HV.
d. Weight inheritance at equal epochs: networks sampled from the space, trained from scratch vs
   initialised from the most overlapping stored parent, same epochs, same seed.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
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
from _util import machine_header, mean_std, table  # noqa: E402
from bench_refine import write_idx_digits  # noqa: E402
from bench_search import demo_variant, hv2d, load_trials, new_study  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

FEASIBLE = ("trained", "reused")
METHODS = {  # label -> spec overrides on top of the demo spec
    "random": {"sampler": "random"},
    "nsga2": {"sampler": "nsga2"},
    "tpe": {"sampler": "tpe"},
    "tpe+es": {"sampler": "tpe", "pruner": "pareto"},
    "tpe+es+inherit": {"sampler": "tpe", "pruner": "pareto", "inherit_weights": True},
    # issue 18: Optuna's constrained GP sampler (what `auto` ran before section 11), and it
    # guided by a zero-cost proxy (snip: the best on the `plain` space in section 9), with and
    # without Pareto early stopping.
    "gp": {"sampler": "gp"},
    "gp+snip": {"sampler": "gp", "proxy": "snip"},
    "gp+snip+es": {"sampler": "gp", "proxy": "snip", "pruner": "pareto"},
    "tpe+snip": {"sampler": "tpe", "proxy": "snip"},
    "tpe+snip+es": {"sampler": "tpe", "proxy": "snip", "pruner": "pareto"},
}
DEFAULT_METHODS = ["random", "nsga2", "tpe", "tpe+es", "tpe+es+inherit"]


def method_spec(name: str, method: str, seed: int, trials: int, data: str, budget: str,
                fidelity: dict | None = None, val_fraction: float | None = None):
    from nas.search import make_spec

    base = demo_variant(name, seed=seed, trials=trials, budget=budget).model_dump()
    extra: dict = {}
    if fidelity:
        extra["fidelity"] = {**base["fidelity"], **fidelity}
    if val_fraction is not None:
        extra["val_fraction"] = val_fraction
    return make_spec(**{**base, "data": data, **extra, **METHODS[method]})


def _run(name: str, url: str) -> float:
    from nas.workers import work

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work(name, url, threads=1)
    return time.perf_counter() - t0


def finished_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    ts = [t for t in load_trials(url, name) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return sorted(ts, key=lambda t: t.datetime_complete)


def hv_over_time(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, float]]:
    """(seconds since the first trial started, HV of the feasible front so far) after each finished trial."""
    if not trials:
        return []
    t0 = min(t.datetime_start for t in trials)
    pts: list[tuple[float, float]] = []
    out = []
    for t in trials:
        if t.state == TrialState.COMPLETE and t.user_attrs.get("status") in FEASIBLE:
            pts.append((t.values[0], t.values[1]))
        out.append(((t.datetime_complete - t0).total_seconds(), hv2d(pts)))
    return out


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, hv in curve if hv >= target - 1e-12), None)


def front_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    feas = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("status") in FEASIBLE]
    out = set()
    for t in feas:
        if not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in feas):
            out.add(t.number)
    return out


# ------------------------------------------------------------------------------- a. the race
def run_studies(args: argparse.Namespace, tmp: Path, datasets: dict[str, tuple[str, str]]) -> dict:
    jobs = []
    for ds, (data, budget) in datasets.items():
        for method in args.methods:
            for seed in args.seed_list:
                name = f"{ds}-{method.replace('+', '_')}-s{seed}"
                url = f"sqlite:///{tmp}/{name}.db"
                fid = args.fidelity.get(ds, {})
                new_study(url, method_spec(name, method, seed, args.trials, data, budget, fid.get("fidelity"),
                                           fid.get("val_fraction")))
                jobs.append((ds, method, seed, name, url))
    # Interleave so that every method meets the same machine conditions (the slow and fast
    # studies are mixed across the run), and run `parallel` at a time with 1 thread each.
    jobs.sort(key=lambda j: (j[2], list(datasets).index(j[0]), args.methods.index(j[1])))
    t0 = time.perf_counter()
    walls: dict[str, float] = {}
    with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_run, name, url): name for *_, name, url in jobs}
        for f in cf.as_completed(futs):
            walls[futs[f]] = f.result()
            print(f"  {futs[f]}: {walls[futs[f]]:.0f} s", file=sys.stderr, flush=True)
    res: dict = {}
    for ds, method, seed, name, url in jobs:
        trials = finished_trials(url, name)
        res[(ds, method, seed)] = {"name": name, "url": url, "trials": trials, "curve": hv_over_time(trials),
                                   "wall": walls[name]}
    res["_total"] = time.perf_counter() - t0
    return res


def part_race(args, res, datasets) -> str:
    out = []
    for ds in datasets:
        rows = []
        ratios_by_method: dict[str, list[float | None]] = {}
        for method in args.methods:
            finals, walls, trained, pruned, epochs, ratios = [], [], [], [], [], []
            for seed in args.seed_list:
                r = res[(ds, method, seed)]
                rand = res[(ds, "random", seed)]
                curve = r["curve"]
                finals.append(curve[-1][1])
                walls.append(curve[-1][0])
                target = rand["curve"][-1][1]
                reach = time_to(curve, target)
                ratios.append(None if reach is None else reach / rand["curve"][-1][0])
                trained.append(sum(t.user_attrs.get("status") in ("trained", "pruned") for t in r["trials"]))
                pruned.append(sum(t.state == TrialState.PRUNED for t in r["trials"]))
                epochs.append(sum(int(t.user_attrs.get("epochs_run") or 0) for t in r["trials"]
                                  if t.user_attrs.get("status") in ("trained", "pruned")))
            ratios_by_method[method] = ratios
            m, s = mean_std(finals)
            got = [x for x in ratios if x is not None]
            reach_txt = (f"{np.mean(got):.3f}" if len(got) == len(ratios) else
                         f"{np.mean(got):.3f} in {len(got)}/{len(ratios)} seeds" if got else "never")
            random_wall = np.mean([res[(ds, "random", sd)]["curve"][-1][0] for sd in args.seed_list])
            rows.append([method, f"{m:.4f} +- {s:.4f}", np.mean(walls) / random_wall,
                         reach_txt, ", ".join("-" if x is None else f"{x:.2f}" for x in ratios),
                         f"{np.mean(trained):.1f}", f"{np.mean(pruned):.1f}", f"{np.mean(epochs):.0f}"])
        head = ["method", f"final HV ({args.trials} trials, mean +- std, {args.seeds} seeds)",
                "wall / random's wall", "time to random's final HV / random's wall (mean)", "per seed",
                "networks trained (incl. stopped)", "stopped early", "training epochs run"]
        data, budget = datasets[ds]
        fid = args.fidelity.get(ds, {})
        more = "".join(f", {k.replace('_', ' ')} {v}" for k, v in {**fid.get("fidelity", {}),
                                                               "val_fraction": fid.get("val_fraction")}.items()
                       if v is not None)
        out += [f"### a. {ds}: `{data}`, budget `{budget}`{more}\n", table(head, rows), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------- b. replay
def part_replay(args, res, datasets) -> str:
    from nas.search import EarlyStop, dominators, peers_of, rung_epochs

    settings = EarlyStop()
    rows = []
    for ds in datasets:
        tot_front = stopped_front = tot_trained = stopped_any = 0
        for seed in args.seed_list:
            r = res[(ds, "tpe", seed)]
            trials = r["trials"]
            front = front_numbers(trials)
            epochs = max(len(t.user_attrs.get("curve") or []) for t in trials)
            rungs = rung_epochs(settings, epochs)
            for t in trials:
                if t.user_attrs.get("status") != "trained":
                    continue
                before = [p for p in trials if p.datetime_complete <= t.datetime_start]
                peers = peers_of(before, exclude=t.number)
                curve, cost = t.user_attrs["curve"], t.user_attrs["cost"]
                hit = any(dominators(e, curve, cost, peers, ["hw_cost"], settings.margin)
                          for e in rungs if e <= len(curve))
                tot_trained += 1
                stopped_any += hit
                if t.number in front:
                    tot_front += 1
                    stopped_front += hit
        rows.append([ds, tot_trained, stopped_any, f"{stopped_any / max(1, tot_trained):.2f}", tot_front,
                     stopped_front, f"{stopped_front / max(1, tot_front):.2f}"])
    head = ["dataset", "trained trials (tpe, no early stopping)", "would have been stopped", "share",
            "front members", "front members that would have been stopped", "share"]
    return ("### b. How often early stopping would have stopped a front member\n\n" + table(head, rows) + "\n\n"
            f"Replay of the rule (`nas.search.dominators`, margin {settings.margin}, rungs {rung_epochs(settings, 20)} "
            "of 20 epochs, 1 dominator) on the tpe studies of part a, which ran without it. Front = the final "
            "feasible front of that study.\n")


# ------------------------------------------------------------------------------- c. warm start
def part_warm(args, res, datasets, tmp: Path) -> str:
    """tpe + early stopping seeded with the front of the *other* dataset's tpe study (same seed)."""
    from nas.search import warm_start
    from storage import Store

    if "idx" not in datasets or "digits" not in datasets or "tpe" not in args.methods:
        return ""
    pairs = [("idx", "digits"), ("digits", "idx")]
    jobs = []
    for dst_ds, src_ds in pairs:
        for seed in args.seed_list:
            src = res[(src_ds, "tpe", seed)]
            dst = tmp / f"warm-{dst_ds}-s{seed}.db"
            shutil.copy(src["url"].removeprefix("sqlite:///"), dst)  # other data: no evaluation is shared
            url = f"sqlite:///{dst}"
            name = f"{dst_ds}-tpe_es_warm-s{seed}"
            data, budget = datasets[dst_ds]
            new_study(url, method_spec(name, "tpe+es", seed, args.trials, data, budget))
            store = Store(url)
            ws = warm_start(name, store, from_study=src["name"])
            store.close()
            jobs.append((dst_ds, seed, name, url, len(ws.enqueued)))
    with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=mp.get_context("spawn")) as ex:
        list(ex.map(_run, [j[2] for j in jobs], [j[3] for j in jobs]))
    warm = {(j[0], j[1]): finished_trials(j[3], j[2]) for j in jobs}
    ks = sorted({3, 5, 10, 20, args.trials} & set(range(1, args.trials + 1)))
    out = []
    for dst_ds, src_ds in pairs:
        rows = []
        variants = [(m, [res[(dst_ds, m, sd)]["trials"] for sd in args.seed_list])
                    for m in ("random", "tpe", "tpe+es") if m in args.methods]
        variants.append((f"tpe+es warm-started from the {src_ds} front",
                         [warm[(dst_ds, sd)] for sd in args.seed_list]))
        for label, studies in variants:
            per_k: dict[int, list[float]] = {k: [] for k in ks}
            ratios: list[float | None] = []
            for seed, trials in zip(args.seed_list, studies, strict=True):
                curve = hv_over_time(trials)
                for k in ks:
                    per_k[k].append(curve[min(k, len(curve)) - 1][1])
                rand = res[(dst_ds, "random", seed)]["curve"]
                reach = time_to(curve, rand[-1][1])
                ratios.append(None if reach is None else reach / rand[-1][0])
            got = [x for x in ratios if x is not None]
            rows.append([label] + [f"{np.mean(v):.4f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.4f}"
                                   for v in per_k.values()]
                        + [(f"{np.mean(got):.3f}" if len(got) == len(ratios) else
                            f"{np.mean(got):.3f} in {len(got)}/{len(ratios)} seeds" if got else "never"),
                           ", ".join("-" if x is None else f"{x:.2f}" for x in ratios)])
        n_enq = ", ".join(str(j[4]) for j in jobs if j[0] == dst_ds)
        out += [f"### c. Warm start: {dst_ds} seeded with the {src_ds} front\n",
                table(["study"] + [f"HV after {k} trials" for k in ks]
                      + ["time to random's final HV / random's wall (mean)", "per seed"], rows), "",
                f"Enqueued per seed: {n_enq} (the {src_ds} tpe study's front of the same seed, same space; "
                f"parameters enqueued, so the space adapts strides to the input; members over this budget or "
                f"already present skipped). Rows other than the last are the studies of part a.\n"]
    return "\n".join(out)


# ------------------------------------------------------------------------------- d. inheritance
def part_inherit(args, res, datasets) -> str:
    from nas.search import get_study_spec, pick_parent
    from objectives import TrainConfig, train_model
    from search_spaces import build_model, get_space, inherit_weights, sample_spec
    from storage import Store

    rows = []
    for ds in datasets:
        r = res[(ds, "tpe", args.seed_list[0])]
        store = Store(r["url"])
        spec = get_study_spec(r["name"], store)
        data = spec.load_data()
        space = get_space(spec.space, input_shape=data.input_shape, **spec.space_options)
        budget = spec.budget_obj()
        diffs = {e: [] for e in args.inherit_epochs}
        n, seed = 0, 1000
        from objectives import estimate_cost

        known = {t.user_attrs.get("spec_hash") for t in r["trials"]}
        while n < args.inherit_nets:
            seed += 1
            arch = sample_spec(space, seed)
            cost = estimate_cost(arch, data.input_shape, data.num_classes).totals
            if arch.hash in known or (budget is not None and budget.violations(cost)):
                continue
            parent = pick_parent(arch, r["name"], store, spec, data)
            if parent is None:
                continue
            n += 1
            for e in args.inherit_epochs:
                cfg = TrainConfig(epochs=e, batch_size=spec.fidelity.batch_size, lr=spec.fidelity.lr, seed=0,
                                  device="cpu", threads=torch.get_num_threads())
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    scratch = build_model(arch, data.input_shape, data.num_classes)
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    child = build_model(arch, data.input_shape, data.num_classes)
                inherit_weights(child, parent.state, arch, parent.arch)
                a = train_model(scratch, data, cfg, keep_state=False).val_accuracy
                b = train_model(child, data, cfg, keep_state=False).val_accuracy
                diffs[e].append(b - a)
        store.close()
        for e, d in diffs.items():
            m, s = mean_std(d)
            rows.append([ds, e, len(d), f"{m:+.4f} +- {s:.4f}", sum(x > 0 for x in d), sum(x < 0 for x in d)])
    head = ["dataset", "epochs", "networks", "val accuracy, inherited - scratch (mean +- std)", "better", "worse"]
    return ("### d. Weight inheritance (network morphism) at equal epochs\n\n" + table(head, rows) + "\n\n"
            "Networks sampled at random from the study's space (within the budget, not in the study), each trained "
            "twice with the same seed and schedule: from scratch, and with every tensor initialised from the "
            "overlapping slice of the stored parent with the largest overlap (`nas.search.pick_parent`, "
            "`inherit_weights`), parents from the first seed's tpe study of part a.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=10,
                    help="first seed (default 10: the early-stopping defaults were piloted on seeds 0 and 1)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--idx", help="directory of an IDX dataset (MNIST-family files); default: generated from digits")
    ap.add_argument("--idx-size", type=int, default=16)
    ap.add_argument("--only", choices=["digits", "idx"])
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list of: " + ", ".join(METHODS))
    ap.add_argument("--idx-budget",
                    help="budget of the IDX studies (default: the digits budget, FLOPs scaled by pixels)")
    ap.add_argument("--idx-epochs", type=int, help="epochs of the IDX studies (default: the demo's 20)")
    ap.add_argument("--idx-train-fraction", type=float, help="share of the IDX training split each trial trains on")
    ap.add_argument("--idx-val-fraction", type=float, help="share of the IDX training data held out for validation")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: replay, warm, inherit")
    ap.add_argument("--inherit-nets", type=int, default=12)
    ap.add_argument("--keep", help="a new directory to keep the study databases in (default: a temp dir, removed)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)")
    ap.add_argument("--inherit-from", metavar="DIR",
                    help="run part d only, on the tpe studies of the first seed kept in DIR by an earlier --keep run")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    assert "random" in args.methods and set(args.methods) <= set(METHODS), args.methods
    args.inherit_epochs = [5, 20]
    args.fidelity = {}
    if args.quick:
        args.trials, args.seeds, args.inherit_nets, args.inherit_epochs = 8, 1, 2, [2]
    args.seed_list = list(range(args.seed_base, args.seed_base + args.seeds))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.keep:
        tmp = Path(args.keep)
        tmp.mkdir(parents=True, exist_ok=False)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-anchors-"))
        atexit.register(shutil.rmtree, tmp, True)

    datasets: dict[str, tuple[str, str]] = {}
    notes = []
    if args.only in (None, "digits"):
        datasets["digits"] = ("digits", "params<=20k flops<=1.5M")
    if args.only in (None, "idx"):
        if args.idx:
            root, side = Path(args.idx), 28
        else:
            root, side = write_idx_digits(tmp / "idx", args.idx_size), args.idx_size
            notes.append(f"Note: no IDX dataset was given (`--idx DIR`) and none can be downloaded here, so the IDX "
                         f"rows use digits upsampled (bilinear) to {side}x{side} and written as MNIST-style IDX files: "
                         "the same images at another input size, read through the IDX loader; not MNIST.")
        flops = 1.5e6 * (side * side) / 64
        datasets["idx"] = (f"idx:{root}", args.idx_budget or f"params<=20k flops<={flops / 1e6:g}M")
        fid = {k: v for k, v in (("epochs", args.idx_epochs), ("train_fraction", args.idx_train_fraction))
               if v is not None}
        args.fidelity["idx"] = {"fidelity": fid, "val_fraction": args.idx_val_fraction}

    print(machine_header("Search that beats its anchors (bench/bench_anchors.py)", sys.argv), flush=True)
    if args.inherit_from:  # part d alone, parents from the studies an earlier run kept
        res = {}
        for ds in datasets:
            name = f"{ds}-tpe-s{args.seed_list[0]}"
            url = f"sqlite:///{Path(args.inherit_from).resolve()}/{name}.db"
            res[(ds, "tpe", args.seed_list[0])] = {"name": name, "url": url, "trials": finished_trials(url, name)}
        print(part_inherit(args, res, datasets), flush=True)
        return
    res = run_studies(args, tmp, datasets)
    print(part_race(args, res, datasets), flush=True)
    print(f"All {sum(1 for k in res if k != '_total')} studies of part a took {res['_total']:.0f} s, "
          f"{args.parallel} at a time, 1 torch thread each.\n", flush=True)
    if "replay" not in skip and "tpe" in args.methods:
        print(part_replay(args, res, datasets), flush=True)
    if "warm" not in skip:
        print(part_warm(args, res, datasets, tmp), flush=True)
    if "inherit" not in skip and "tpe" in args.methods:
        print(part_inherit(args, res, datasets), flush=True)
    for n in notes:
        print(n + "\n", flush=True)


if __name__ == "__main__":
    main()
