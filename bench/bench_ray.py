"""Benchmark of the Ray Tune backend (issue 4) against the local backend, same study, same target.

``python bench/bench_ray.py [--trials 12] [--epochs 4] [--budget "params<=1M flops<=100M"] [--quick]``

Every configuration runs one study spec (the digits demo study, ``nas.search.demo_spec``, with
the fidelity epochs, budget and target given here) to the same target on a fresh SQLite
database, with the same architectures: the target's worth of parameter sets, sampled once at
random from the space, is enqueued (``Study.enqueue_trial``) in every study, and both backends
ask queued trials first. Each run goes through the ``nas`` CLI in a subprocess, so its wall
time includes the interpreter start, loading the data and, for Ray, starting and stopping a
local Ray:

* local, 1 worker x 2 threads: ``nas study run S --quiet``
* local, 2 workers x 1 thread: ``nas study run S --workers 2 --quiet``
* ray, 2 x 1 CPU: ``nas study run S --backend ray --max-concurrent 2 --cpus-per-trial 1 --quiet``

Ray's fixed start-up cost is measured twice: ``ray.init(address="local")`` + ``ray.shutdown()``
in a fresh process (after ``import ray``), and, per configuration, the time from the command's
start to its first trial's start. The sum of training seconds differs only through threads
(1 worker trains with 2 torch threads, the others with 1) and contention. Timings are ratios
within one run on a shared machine.
"""

from __future__ import annotations

import argparse
import atexit
import json
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

import optuna  # noqa: E402
from _util import loadavg, machine_header, median, table  # noqa: E402
from bench_search import load_trials  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAS = shutil.which("nas", path=str(Path(sys.executable).parent)) or "nas"
LOOSE_BUDGET = "params<=1M flops<=100M"  # nothing in the demo space exceeds it: every trial trains

CONFIGS = [
    ("local, 1 worker x 2 threads", []),
    ("local, 2 workers x 1 thread", ["--workers", "2"]),
    ("ray, max-concurrent 2 x 1 CPU", ["--backend", "ray", "--max-concurrent", "2", "--cpus-per-trial", "1"]),
]


def bench_spec(name: str, args: argparse.Namespace):
    from nas.search import demo_spec, make_spec

    base = demo_spec(name, args.trials).model_dump()
    return make_spec(**{**base, "budget": args.budget, "fidelity": {**base["fidelity"], "epochs": args.epochs}})


def sample_params(args: argparse.Namespace) -> list[dict]:
    """``args.trials`` parameter sets drawn at random (seed 0) from the study's space."""
    from search_spaces import get_space

    spec = bench_spec("sample", args)
    space = get_space(spec.space, input_shape=spec.load_data().input_shape, **spec.space_options)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(args.trials):
        t = study.ask()
        space.suggest(t)
        out.append(dict(t.params))
        study.tell(t, 0.0)
    return out


def make_study(url: str, name: str, args: argparse.Namespace, params: list[dict]) -> None:
    from nas.search import create_study
    from storage import Store

    store = Store(url)
    try:
        create_study(bench_spec(name, args), store)
        study = optuna.load_study(study_name=name, storage=store.optuna)
        for p in params:
            study.enqueue_trial(p)
    finally:
        store.close()


def ray_startup() -> tuple[float, float]:
    """Seconds for ``import ray`` and for ``ray.init(address="local")`` + ``ray.shutdown()``, fresh process."""
    code = ("import time, logging, os; t0 = time.perf_counter(); import ray; t1 = time.perf_counter(); "
            "ray.init(address='local', num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, "
            "logging_level=logging.ERROR); ray.shutdown(); print(t1 - t0, time.perf_counter() - t1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    imp, init = r.stdout.split()
    return float(imp), float(init)


def run_config(tmp: Path, i: int, label: str, extra: list[str], args: argparse.Namespace,
               params: list[dict]) -> list:
    name = f"bench-ray-{i}"
    url = f"sqlite:///{tmp}/{name}.db"
    make_study(url, name, args, params)
    cmd = [NAS, "study", "run", name, "--quiet", "--storage", url, *extra]
    start = time.time()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=tmp)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    trials = load_trials(url, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    trained = [t for t in complete if t.user_attrs.get("status") == "trained"]
    def key(p: dict) -> str:
        return json.dumps(p, sort_keys=True)

    assert sorted(key(t.params) for t in complete) == sorted(map(key, params)), "not the queued trials"
    train_s = sum(t.user_attrs.get("train_seconds", 0.0) for t in trained)
    first = min((t.datetime_start.timestamp() for t in trials if t.datetime_start), default=float("nan")) - start
    over = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["train_seconds"]
            for t in trained if t.datetime_complete and t.datetime_start]
    return [label, wall, len(complete), len(trained), train_s, first, median(over) if over else None]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, help="target trials per run (default 12; quick 4)")
    ap.add_argument("--epochs", type=int, help="fidelity epochs (default 4; quick 1)")
    ap.add_argument("--budget", default=LOOSE_BUDGET, help=f"study budget (default {LOOSE_BUDGET!r}: all train)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    args = ap.parse_args(argv)
    args.trials = args.trials or (4 if args.quick else 12)
    args.epochs = args.epochs or (1 if args.quick else 4)
    print(machine_header("bench_ray: Ray Tune backend vs local workers", ["bench/bench_ray.py", *argv]), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-ray-"))
    t_all = time.perf_counter()
    try:
        imp, init = ray_startup()
        params = sample_params(args)
        rows = [run_config(tmp, i, label, extra, args, params) for i, (label, extra) in enumerate(CONFIGS)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0][1]
    head = ["configuration", "wall s", "ratio to local x1", "complete", "trained", "sum train_seconds",
            "first trial starts after s", "median non-training s per trained trial"]
    body = [[r[0], r[1], r[1] / base, *r[2:]] for r in rows]
    ray_wall, local2 = rows[2][1], rows[1][1]
    print(f"Study: digits demo space, budget `{args.budget}`, {args.epochs} epochs per trial, target "
          f"{args.trials} trials (the same {args.trials} queued architectures in every run), each run on a fresh "
          "SQLite database, through the `nas` CLI.\n")
    print(table(head, body))
    print(f"\nRay / local (1 worker x 2 threads): {ray_wall / base:.2f}; Ray / local (2 workers x 1 thread): "
          f"{ray_wall / local2:.2f}.")
    print(f"Ray fixed start-up in a fresh process: import ray {imp:.1f} s, ray.init + ray.shutdown {init:.1f} s.")
    print("Commands (NAME and URL per run): " + "; ".join(
        f"`nas study run NAME --quiet --storage URL{' ' + ' '.join(extra) if extra else ''}`" for _, extra in CONFIGS))
    print(f"\nTotal wall time {time.perf_counter() - t_all:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
