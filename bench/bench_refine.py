"""Benchmark of post-search refinement (issue 5, docs/methods.md section 2) against training from scratch.

For each dataset (scikit-learn's digits, and an IDX dataset):

1. search: a small ``resnet`` study (``--trials`` trials at a low fidelity, TPE, a loose FLOPs
   budget); the front member with the best validation accuracy is the one refined;
2. refine: ``nas.refine.refine_trial`` with its default settings (baseline 20 epochs, F = 8:
   short 2, long 5, patience 1; 3 pruning iterations; fusion until -3 %), one table row per
   stored candidate: baseline -> each pruning iteration -> each fusion candidate;
3. the seed's Table 5 comparison: the *final* architecture (the most compressed candidate
   within the 3 % drop) trained from scratch with the trainer, for the baseline's epochs and
   for as many epochs as its lineage saw (baseline + one fine-tuning per pruning iteration
   + every short and long fusion fine-tuning on its path), ``--seeds`` seeds;
4. the FS-DNN claim (docs/methods.md section 1): a search *from scratch* with a budget of the final
   architecture's FLOPs (the whole ``resnet`` space, LightLayer ranks included, ``--fs-trials``
   trials), its most accurate feasible trial retrained at the refinement fidelity, ``--seeds``
   seeds.

Accuracies are on each dataset's held-out test split (validation accuracy chose thresholds,
candidates and trials). Without ``--idx DIR`` the IDX dataset is *generated* from digits
(upsampled to 16x16 and written as IDX files), which the output says; it is not an
independent dataset, only a second input size through the IDX loader.

``python bench/bench_refine.py [--idx DIR] [--trials N] [--seeds S] [--threads T] [--quick]``
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

if "NAS_HOME" not in os.environ:  # never touch ~/.lightnas; removed at exit
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from _util import loadavg, machine_header, mean_std, table  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"min_depth": 2, "max_depth": 4, "widths": [12, 16, 24, 32], "stem_widths": [16, 24, 32],
         "block_types": ["basic"], "rank_ratios": [1.0]}


def write_idx_digits(root: Path, size: int, seed: int = 0) -> Path:
    """digits upsampled (bilinear) to ``size`` x ``size``, as MNIST-style gzipped IDX files."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    y = d.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    root.mkdir(parents=True, exist_ok=True)

    write_idx(root / "train-images-idx3-ubyte.gz", x[~test])
    write_idx(root / "train-labels-idx1-ubyte.gz", y[~test])
    write_idx(root / "t10k-images-idx3-ubyte.gz", x[test])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", y[test])
    return root


def write_idx(path: Path, arr: np.ndarray) -> None:
    """``arr`` (uint8, 1-D labels or 3-D images) as a gzipped IDX file, as MNIST ships them."""
    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", n) for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def final_candidate(rows, settings):
    """The run's final candidate: the most compressed fusion step within ``max_drop`` of the
    pruned model, else the pruned model."""
    pruned = rows[settings.iterations]
    floor = pruned.val_accuracy - settings.max_drop
    within = [r for r in rows if r.method == "fuse" and r.val_accuracy >= floor]
    return within[-1] if within else pruned


def step_note(r) -> str:
    """What a stored refinement step did, in a few words (thresholds tried, channels, blocks)."""
    d = json.loads(r.detail_json)
    if r.method == "prune":
        tried = f"{len(d['visited'])} thresholds tried"
        if d["removed_channels"]:
            return f"Pc={d['threshold']:.4f}, -{sum(d['removed_channels'].values())} channels, {tried}"
        return f"nothing removed: every removal fell below the target {d['target']:.4f}; {tried}"
    if r.method == "fuse":
        return f"{d['removals']} blocks removed" + (", stop: accuracy drop" if d.get("stop", "") and
                                                     "below" in d["stop"] else "")
    return ""


def lineage_epochs(rows, final, settings) -> int:
    """Epochs of training the final candidate's weights went through (failed attempts not counted)."""
    by_step = {r.step: r for r in rows}
    epochs, r = 0, final
    while r is not None:
        detail = json.loads(r.detail_json)
        if r.method == "baseline":
            epochs += int(detail.get("epochs", settings.epochs))
        elif r.method == "prune":
            epochs += settings.finetune_epochs if detail.get("removed_channels") else 0
        elif r.method == "fuse":
            epochs += len(detail.get("removed", [])) * settings.short_epochs + settings.long_epochs
        else:
            epochs += settings.long_epochs
        r = by_step.get(r.parent_step) if r.parent_step is not None else None
    return epochs


def train_scratch(spec, data, epochs: int, seeds: int, batch: int, lr: float, threads: int) -> list[float]:
    from objectives import TrainConfig, train_spec

    accs = []
    for seed in range(seeds):
        res = train_spec(spec, data, TrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=seed, device="cpu",
                                                 threads=threads), evaluate_test=True, keep_state=False)
        accs.append(float(res.test_accuracy or 0.0))
    return accs


def fmt_acc(xs: list[float]) -> str:
    m, s = mean_std(xs)
    return f"{m:.4f} ± {s:.4f}" if len(xs) > 1 else f"{m:.4f}"


def si(v: float) -> str:
    for div, suf in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.4g}"


def run_dataset(label: str, source: str, budget: str, args: argparse.Namespace, tmp: Path) -> str:
    from nas.refine import RefineSettings, refine_trial
    from nas.search import create_study, make_spec, pareto_rows
    from nas.workers import run_study
    from objectives import estimate_cost, load_dataset
    from search_spaces import ArchSpec
    from storage import Store

    t0 = time.perf_counter()
    url = f"sqlite:///{tmp}/{label}.db"
    store = Store(url)
    fid = {"epochs": 2 if args.quick else 5, "batch_size": 64}
    spec = make_spec(name=label, space="resnet", data=source, budget=budget, trials=args.trials, seed=0,
                     space_options=SPACE, fidelity=fid, device="cpu")
    create_study(spec, store)
    run_study(label, store)  # workers=1: threads_per_worker(1), as `nas study run` does
    t_search = time.perf_counter() - t0
    front = pareto_rows(label, store, with_test=False)
    parent = max(front, key=lambda r: (r["accuracy"], -r["flops"]))["trial"]
    settings = RefineSettings(**({"epochs": 4, "finetune_epochs": 2, "iterations": 2} if args.quick else {}))
    t1 = time.perf_counter()
    rows = refine_trial(label, parent, store, settings, threads=args.threads)
    t_refine = time.perf_counter() - t1

    data = load_dataset(source, seed=0, val_fraction=spec.val_fraction)
    base = rows[0]
    base_cost = json.loads(base.cost_json)
    final = final_candidate(rows, settings)
    out = [f"### {label}: `{source}`" + (" (generated from digits, see note)" if args.generated and label == "idx"
                                          else ""), ""]
    out.append(f"Input {'x'.join(map(str, data.input_shape))}, splits {data.sizes}. Search: {args.trials} trials, "
               f"{fid['epochs']} epochs each, budget `{budget}`, {t_search:.0f} s. Refined: trial {parent} "
               f"(the most accurate front member), {t_refine:.0f} s, settings {settings.model_dump()}; "
               f"short/long/patience epochs {settings.short_epochs}/{settings.long_epochs}/{settings.patience}.")
    out.append("")
    trows = []
    for r in rows:
        c = json.loads(r.cost_json)
        note = step_note(r)
        trows.append([f"{r.step} {r.method}" + (" (final)" if r.id == final.id else ""), f"{r.val_accuracy:.4f}",
                      f"{r.test_accuracy:.4f}", si(c["flops"]), f"{1 - c['flops'] / base_cost['flops']:.1%}",
                      si(c["params"]), si(c["mem_traffic_bytes"]), int(c["depth"]), f"{r.seconds:.0f}", note])
    out.append(table(["step", "val acc", "test acc", "FLOPs", "FLOPs saved", "params", "mem traffic B", "depth",
                      "s", "note"], trows))
    out.append("")

    final_arch = ArchSpec.from_json(store.get_architecture(final.spec_hash) or "")
    final_cost = json.loads(final.cost_json)
    f = spec.fidelity
    e_lineage = lineage_epochs(rows, final, settings)
    scratch_e = train_scratch(final_arch, data, settings.epochs, args.seeds, f.batch_size, f.lr, args.threads)
    scratch_l = train_scratch(final_arch, data, e_lineage, args.seeds, f.batch_size, f.lr, args.threads)

    # FS-DNN: search from scratch under the final architecture's FLOPs.
    fs_budget = f"flops<={int(final_cost['flops'])}"
    # The product's whole resnet space (depth 1-4, widths from 8, basic/bottleneck, LightLayer ranks): the
    # refined parent's space cannot go below ~1M FLOPs on 8x8 inputs.
    fs_spec = make_spec(**{**spec.model_dump(), "name": f"{label}_fs", "budget": fs_budget, "space_options": {},
                           "trials": args.fs_trials})
    create_study(fs_spec, store)
    run_study(f"{label}_fs", store)
    fs_front = pareto_rows(f"{label}_fs", store, with_test=False)
    comp = [["refined (final candidate)", si(final_cost["flops"]), si(final_cost["params"]),
             f"{final.test_accuracy:.4f}", "1 refinement run"],
            ["same architecture from scratch", si(final_cost["flops"]), si(final_cost["params"]),
             fmt_acc(scratch_e), f"{settings.epochs} epochs, {args.seeds} seeds"],
            ["same architecture from scratch, lineage epochs", si(final_cost["flops"]), si(final_cost["params"]),
             fmt_acc(scratch_l), f"{e_lineage} epochs, {args.seeds} seeds"]]
    if fs_front:
        best = max(fs_front, key=lambda r: r["accuracy"])
        arch = ArchSpec.from_json(store.get_architecture(
            optuna.load_study(study_name=f"{label}_fs", storage=store.optuna).trials[best["trial"]]
            .user_attrs["spec_hash"]) or "")
        c = estimate_cost(arch, data.input_shape, data.num_classes)
        fs_acc = train_scratch(arch, data, settings.epochs, args.seeds, f.batch_size, f.lr, args.threads)
        comp.append([f"searched from scratch under `{fs_budget}` (trial {best['trial']})", si(c["flops"]),
                     si(c["params"]), fmt_acc(fs_acc), f"search {args.fs_trials} trials ({len(fs_front)} on the "
                                                       f"front), then {settings.epochs} epochs, {args.seeds} seeds"])
    else:
        comp.append([f"searched from scratch under `{fs_budget}`", "-", "-", "-",
                     f"no feasible trial in {args.fs_trials}"])
    out.append(table(["network", "FLOPs", "params", "test acc", "training"], comp))
    out.append("")
    out.append(f"({label}: {time.perf_counter() - t0:.0f} s wall; load average {loadavg()})")
    out.append("")
    store.close()
    return "\n".join(out)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx", help="directory of an IDX dataset (MNIST-family files); default: generated from digits")
    ap.add_argument("--idx-size", type=int, default=16, help="side of the generated IDX images (default 16)")
    ap.add_argument("--trials", type=int, help="search trials per study (default 10; quick 3)")
    ap.add_argument("--fs-trials", type=int, help="trials of the from-scratch search at equal FLOPs (default 20; "
                                                  "quick 4)")
    ap.add_argument("--seeds", type=int, help="seeds of each from-scratch training (default 2; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see BENCHMARKS.md)")
    ap.add_argument("--only", choices=["digits", "idx"], help="one dataset")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers meaningless)")
    args = ap.parse_args(argv)
    args.trials = args.trials or (3 if args.quick else 10)
    args.seeds = args.seeds or (1 if args.quick else 2)
    args.fs_trials = args.fs_trials or (4 if args.quick else 20)
    torch.set_num_threads(args.threads)
    print(machine_header("bench_refine: pruning + fusion vs from scratch", ["bench/bench_refine.py", *argv]),
          flush=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-refine-"))
    atexit.register(shutil.rmtree, tmp, True)
    args.generated = not args.idx
    notes = []
    if args.only in (None, "digits"):
        print(run_dataset("digits", "digits", "flops<=20M", args, tmp), flush=True)
    if args.only in (None, "idx"):
        if args.idx:
            root = Path(args.idx)
        else:
            root = write_idx_digits(tmp / "idx", args.idx_size)
            notes.append(f"Note: no IDX dataset was given (`--idx DIR`) and none can be downloaded here, so the IDX "
                         f"files were generated from scikit-learn's digits, upsampled bilinearly to "
                         f"{args.idx_size}x{args.idx_size} (1437 train / 360 test images, stratified). It is the same "
                         f"data as the digits rows, at another input size, read through the IDX loader; not MNIST.")
        side = args.idx_size if args.generated else 28
        budget = f"flops<={int(20e6 * (side / 8) ** 2)}"
        print(run_dataset("idx", f"idx:{root}", budget, args, tmp), flush=True)
    for n in notes:
        print(n + "\n")
    print(f"Total wall time {time.perf_counter() - t0:.0f} s; load average at end: {loadavg()}")


if __name__ == "__main__":
    main(sys.argv[1:])
