"""Benchmark of budget-first search (issue 14).

a. Cost model: median time per spec of ``estimate_cost`` analytic vs traced (the reference,
   ``method="trace"``), both uncached and on fresh spec objects (so both pay the spec hash), for
   60 sampled specs per space at 3x32x32 and for ResNet-56; the ratio is taken in this one run.
   Every timed spec is also checked: the analytic rows equal the traced ones.
b. Feasibility: for each space, input (the real MNIST files, 1x28x28, and MNIST padded to
   3x32x32 with three channels, written as npz) and budget: the space's exact minimum of the
   budgeted resource, its share within the budget as given and as fitted (2,000 samples each),
   the options fitting chose, and the time of the whole plan.
c. 16-network studies at low fidelity (``--studies``): for each of those cells, a study run to
   16 networks within budget (or the refusal it gets), its front's best validation accuracy,
   and a LeNet-5-sized network trained at the same fidelity on the same splits.

Usage: python bench/bench_budget.py --mnist ../shared/data/mnist [--studies] [--max-minutes M]
       [--epochs 2] [--train-fraction 0.05] [--val-fraction 0.05] [--workers 2]
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

if "NAS_HOME" not in os.environ:  # never touch ~/.lightnas; removed at exit
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

import numpy as np  # noqa: E402
from _util import machine_header, median, table  # noqa: E402

from nas import NasError  # noqa: E402
from nas.search import create_study, make_spec, plan_study  # noqa: E402
from objectives import estimate_cost, get_device  # noqa: E402
from objectives.cost import analytic_layers, trace_layers  # noqa: E402
from search_spaces import ArchSpec, Block, Head, Stage, Stem, get_space, list_spaces  # noqa: E402

BUDGETS = ["flops<=1M", "params<=10k", "peak_mem<=64KiB", "flops<=4M", "flops<=16M"]


def resnet56() -> ArchSpec:
    stages = tuple(Stage(tuple(Block("basic", w, w, stride=2 if i and not j else 1) for j in range(9)))
                   for i, w in enumerate((16, 32, 64)))
    return ArchSpec(Stem(16), stages)


def lenet5_sized() -> ArchSpec:
    """LeNet-5's layer sizes in this spec language (no max-pooling: strided 5x5 convolutions instead):
    6 then 16 channels of 5x5, a hidden layer of 120, the classifier."""
    return ArchSpec(Stem(6, 5, 2), (Stage((Block("conv", 16, kernel=5, stride=2),)),), head=Head(120))


def time_cost(arch_json: str, shape: tuple[int, int, int], method: str) -> float:
    arch = ArchSpec.from_json(arch_json)  # a fresh object: its hash is computed again
    (analytic_layers if method == "analytic" else trace_layers).cache_clear()
    prof = get_device("rpi4")  # resolved once, as a trial does
    t0 = time.perf_counter()
    estimate_cost(arch, shape, 10, prof, method=method)
    return time.perf_counter() - t0


def part_a() -> str:
    rows, compared = [], 0
    cases = [("ResNet-56", [resnet56().to_json()])]
    rng = random.Random(0)
    for name in list_spaces():
        space = get_space(name, input_shape=(3, 32, 32))
        cases.append((name, [space.sample(rng).to_json() for _ in range(60)]))
    for label, archs in cases:
        ta, tt = [], []
        for j in archs:
            for _ in range(3 if label == "ResNet-56" else 1):
                tt.append(time_cost(j, (3, 32, 32), "trace"))
                ta.append(time_cost(j, (3, 32, 32), "analytic"))
            arch = ArchSpec.from_json(j)
            assert analytic_layers(arch, (3, 32, 32), 10) == trace_layers(arch, (3, 32, 32), 10)
            compared += 1
        rows.append([label, len(archs), f"{median(ta) * 1e3:.3f}", f"{median(tt) * 1e3:.2f}",
                     f"{median(tt) / median(ta):.0f}x"])
    return (table(["specs", "n", "analytic ms (median)", "traced ms (median)", "traced / analytic"], rows)
            + f"\n\nRows equal (analytic == traced) for all {compared} specs timed here; the test suite compares "
              "540 sampled specs (3 spaces x 5 input shapes x 3 option sets x 12) and 16 hand-written edge specs.\n")


def write_padded_npz(mnist: Path, out: Path) -> None:
    """MNIST padded to 32x32, three identical channels, as npz (x as N x 32 x 32 x 3 uint8)."""
    def images(name: str) -> np.ndarray:
        with gzip.open(mnist / name) as f:
            raw = f.read()
        n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        x = np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
        return np.repeat(x[..., None], 3, axis=3)

    def labels(name: str) -> np.ndarray:
        with gzip.open(mnist / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=8)

    np.savez(out, x_train=images("train-images-idx3-ubyte.gz"), y_train=labels("train-labels-idx1-ubyte.gz"),
             x_test=images("t10k-images-idx3-ubyte.gz"), y_test=labels("t10k-labels-idx1-ubyte.gz"))


def fmt_opts(options: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "as given"


def part_b(inputs: list[tuple[str, str]], fidelity: dict, val_fraction: float) -> tuple[str, list]:
    rows, cells = [], []
    for label, data in inputs:
        base = make_spec(name="probe", space="plain", data=data, budget="flops<=1M", fidelity=fidelity,
                         val_fraction=val_fraction)
        loaded = base.load_data()
        for space in list_spaces():
            for budget in BUDGETS:
                spec = make_spec(name="probe", space=space, data=data, budget=budget, fidelity=fidelity,
                                 val_fraction=val_fraction)
                t0 = time.perf_counter()
                try:
                    plan = plan_study(spec, loaded)
                except NasError as e:
                    rows.append([label, space, budget, "-", "-", "-", "refused", f"{time.perf_counter() - t0:.2f}"])
                    cells.append((label, data, space, budget, None, str(e)))
                    continue
                seconds = time.perf_counter() - t0
                feas = plan.info["feasibility"]
                given = plan.info.get("feasibility_as_given", feas)
                resource = next(iter(feas["minimum"]))
                rows.append([label, space, budget, f"{given['minimum'][resource]:.4g}",
                             f"{given['share_within_budget']:.1%}", f"{feas['share_within_budget']:.1%}",
                             fmt_opts({k: v[1] for k, v in plan.info.get("fit", {}).get("scaled", {}).items()}),
                             f"{seconds:.2f}"])
                cells.append((label, data, space, budget, plan, None))
    head = ["input", "space", "budget", "minimum (as given)", "share as given", "share fitted", "fitted options",
            "plan s"]
    return table(head, rows) + "\n", cells


def part_c(cells: list, fidelity: dict, max_minutes: float, workers: int) -> str:
    import optuna

    from nas.search import load_context
    from nas.workers import run_study
    from objectives import train_spec
    from storage import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-budget-"))
    atexit.register(shutil.rmtree, tmp, True)
    store = Store(f"sqlite:///{tmp}/b.db")
    rows, baselines = [], {}
    t_start = time.time()
    # Cheap budgets first, both inputs and every space per budget, so a time cap cuts the dearest.
    cells = sorted(cells, key=lambda c: (BUDGETS.index(c[3]), c[0], c[2]))
    for k, (label, _data, space, budget, plan, refusal) in enumerate(cells):
        if plan is None:
            rows.append([label, space, budget, "refused", "-", "-", "-", refusal[:150]])
            continue
        if time.time() - t_start > max_minutes * 60:
            rows.append([label, space, budget, "not run (time cap)", "-", "-", "-", ""])
            continue
        name = f"c{k}"
        spec = plan.study_spec.model_copy(update={"name": name, "trials": 16, "device": "cpu", "seed": 0})
        t0 = time.time()
        create_study(spec, store, plan=type(plan)(spec, plan.info, plan.warnings))
        p = run_study(name, store, workers=workers)
        wall = time.time() - t0
        study = optuna.load_study(study_name=name, storage=store.optuna)
        accs = [t.user_attrs["val_accuracy"] for t in study.get_trials()
                if t.user_attrs.get("status") in ("trained", "reused")]
        if label not in baselines:
            ctx = load_context(name, store, threads=os.cpu_count())
            arch = lenet5_sized()
            res = train_spec(arch, ctx.data, ctx.train_config)
            baselines[label] = (res.val_accuracy, estimate_cost(arch, ctx.data.input_shape, 10)["flops"])
        base_acc, base_flops = baselines[label]
        rows.append([label, space, budget, f"{p.finished} ({p.trained} trained)", str(p.rejected),
                     f"{max(accs):.4f}" if accs else "-", f"{base_acc:.4f} ({base_flops / 1e6:.2f} MFLOPs)",
                     f"{wall:.0f} s"])
        print(f"  {label} {space} {budget}: {rows[-1][3:]}", file=sys.stderr, flush=True)
    store.close()
    head = ["input", "space", "budget", "networks within budget", "rejected", "best val acc of the front",
            "LeNet-5-sized, same fidelity", "wall"]
    return table(head, rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", type=Path, default=Path("../shared/data/mnist"))
    ap.add_argument("--studies", action="store_true", help="part c: run the 16-network studies")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-fraction", type=float, default=0.05)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=60.0)
    args = ap.parse_args()
    fidelity = {"epochs": args.epochs, "train_fraction": args.train_fraction}
    out = [machine_header("Budget-first search (issue 14)", sys.argv)]
    out.append("\n### a. Cost model: analytic vs traced, per spec (3x32x32)\n\n" + part_a())
    print(out[-1], flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-data-"))
    atexit.register(shutil.rmtree, tmp, True)
    write_padded_npz(args.mnist, tmp / "mnist32x3.npz")
    inputs = [("MNIST 1x28x28", f"idx:{args.mnist.resolve()}"), ("MNIST padded 3x32x32", f"npz:{tmp}/mnist32x3.npz")]
    text, cells = part_b(inputs, fidelity, args.val_fraction)
    out.append("\n### b. Share of each space within the budget, as given and as fitted\n\n" + text)
    print(out[-1], flush=True)
    if args.studies:
        text = part_c(cells, fidelity, args.max_minutes, args.workers)
        out.append(f"\n### c. 16 networks within budget per study (epochs {args.epochs}, train fraction "
                   f"{args.train_fraction}, validation fraction {args.val_fraction}, {args.workers} workers)\n\n"
                   + text)
        print(out[-1], flush=True)
    print("\n".join(out), file=sys.stderr)


if __name__ == "__main__":
    main()
