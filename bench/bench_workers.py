"""Storage overhead of distributed workers: trials per minute for 1, 2 and 4 `nas worker`
processes sharing one PostgreSQL study, with a fast objective (issue 4).

The fast objective is lightnas's own trial path minus the training: the space holds one
architecture, trained once by the first trial, so every other trial reuses its evaluation (and
counts towards the target, as over-budget samples no longer do): claim a slot under the advisory
lock, ask Optuna, suggest the spec, hash it, store the architecture, estimate its cost, set
constraints, read the stored evaluation, set user attributes, tell. The same number of trials of
a trivial objective through plain Optuna (``study.optimize`` with heartbeats, on the same server)
is the baseline.

Rates count trials between the first trial's start and the last trial's end (process start-up
excluded; it is reported apart). Runs of the configurations are interleaved and repeated.

    python bench/bench_workers.py                 # ~3 min here
    python bench/bench_workers.py --trials 120 --rounds 1
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time

if "NAS_HOME" not in os.environ:
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

import optuna  # noqa: E402
from _util import loadavg, machine_header, median, table  # noqa: E402
from bench_search import postgres_server  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from nas.search import create_study, make_spec  # noqa: E402
from storage import Store  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

PLAIN_OPTUNA = r"""
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30,
                                     engine_kwargs={"pool_pre_ping": True})
study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
study.optimize(lambda t: [t.suggest_float("x", 0, 1), t.suggest_int("d", 1, 4)], n_trials=n)
"""


def span(trials: list[optuna.trial.FrozenTrial]) -> float:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    start = min(t.datetime_start for t in done)  # type: ignore[type-var]
    end = max(t.datetime_complete for t in done)  # type: ignore[type-var]
    return (end - start).total_seconds()  # type: ignore[operator]


def run_lightnas(url: str, workers: int, trials: int) -> tuple[list[optuna.trial.FrozenTrial], float]:
    store = Store(url)
    name = "fast"
    one = {"stages": 1, "max_depth": 1, "widths": [8], "kernels": [3], "hidden": [0], "rank_ratios": [1.0]}
    create_study(make_spec(name=name, space="plain", data="digits", budget="params<=1M", trials=trials,
                           sampler="random", device="cpu", space_options=one, fidelity={"epochs": 1}), store)
    store.close()
    cmd = [sys.executable, "-m", "nas.cli", "worker", name, "--storage", url, "--until-done", "--quiet",
           "--threads", "1", "--poll-max", "1"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"worker exited {p.returncode}: {err.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    store = Store(url)
    try:
        return optuna.load_study(study_name=name, storage=store.optuna).get_trials(), wall
    finally:
        store.close()


def run_plain(url: str, workers: int, trials: int) -> tuple[list[optuna.trial.FrozenTrial], float]:
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name="plain", storage=storage, directions=["minimize", "minimize"])
    storage.engine.dispose()
    share = [trials // workers + (i < trials % workers) for i in range(workers)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", PLAIN_OPTUNA, url, "plain", str(n)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in share]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"optuna process exited {p.returncode}: {err.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name="plain", storage=storage).get_trials(), wall
    finally:
        storage.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200, help="trials per study (default 200)")
    ap.add_argument("--rounds", type=int, default=2, help="repetitions of every configuration (default 2)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    configs = [(kind, n) for n in counts for kind in ("lightnas", "optuna")]
    results: dict[tuple[str, int], list[tuple[int, int, float, float]]] = {}
    print(machine_header("Distributed workers on PostgreSQL: trials per minute", sys.argv), flush=True)
    with postgres_server() as fresh:
        for r in range(args.rounds):
            for kind, n in (configs if r % 2 == 0 else configs[::-1]):
                run = run_lightnas if kind == "lightnas" else run_plain
                trials, wall = run(fresh(), n, args.trials)
                complete = sum(t.state == TrialState.COMPLETE for t in trials)
                results.setdefault((kind, n), []).append((complete, len(trials), span(trials), wall))
                print(f"{kind} x{n}: {complete}/{len(trials)} complete, span {span(trials):.1f} s, wall {wall:.1f} s",
                      file=sys.stderr)
    base = {kind: median([c / s * 60 for c, _, s, _ in results[(kind, counts[0])]]) for kind in ("lightnas", "optuna")}
    rows = []
    for kind, n in configs:
        runs = results[(kind, n)]
        rate = median([c / s * 60 for c, _, s, _ in runs])
        rows.append([kind, n, len(runs), ", ".join(f"{c}/{t}" for c, t, _, _ in runs), rate, rate / base[kind],
                     median([w - s for _, _, s, w in runs])])
    lt = {n: median([c / s * 60 for c, _, s, _ in results[("lightnas", n)]]) for n in counts}
    op = {n: median([c / s * 60 for c, _, s, _ in results[("optuna", n)]]) for n in counts}
    head = ["objective", "workers", "runs", "complete / all trials", "trials/min (median)",
            f"ratio to {counts[0]} worker", "start-up + exit s (median)"]
    print(table(head, rows))
    print("\nlightnas / plain Optuna trials-per-minute: " +
          ", ".join(f"{n} workers {lt[n] / op[n]:.3g}" for n in counts))
    print(f"\n(load average after: {loadavg()})")


if __name__ == "__main__":
    main()
