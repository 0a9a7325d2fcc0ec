"""Issue 19: seed 001 (dynamic pruning + layer fusion) on real data, and its two claims decided.

On an IDX dataset (the real MNIST files: ``--idx ../shared/data/mnist``), with a stratified
random *training subset* of ``--train-subset`` images (the official training files, subsampled
once, seed 0) and the **whole official test set** (t10k, 10,000 images, copied unchanged):

a. a ``resnet`` search (``--trials`` trials, TPE, budget ``--budget``, ``--search-epochs`` epochs
   each) and refinement (``nas.refine.refine_trial``, the product's defaults: baseline 20 epochs,
   F = 8 fine-tuning epochs, short/long/patience 2/5/1 epochs = the paper's 50/200/20 of 320,
   3 pruning iterations, fusion until -3 %) of its most accurate front member;
b. a ResNet-20-like network enqueued by hand (3 stages x 3 basic blocks, widths 16/32/64, stem
   16: ResNet-20's layout, with a stride-2 stem at 28x28) refined the same way under ``--seeds`` seeds.

For every seed of (b), in one process per seed (``--parallel`` at a time, 1 torch thread each):

* **Table 5 of seed 001** -- the refined network (the most compressed candidate within the
  3 % drop) against *the same architecture trained from scratch for the same total epochs* (the
  epochs its weights went through: baseline + fine-tunings on its lineage), same seed;
* **FS-DNN's claim** -- a search *from scratch* under the refined network's FLOPs (the whole
  ``resnet`` space, fitted to the budget, ``--fs-trials`` trials, same seed), its most accurate
  feasible trial retrained for the same total epochs, against the refined network.

Test accuracy on the 10,000 official test images decides; per seed the paired difference, then
the mean, a 95 % t confidence interval over seeds, and a paired t-test (SciPy).

``python bench/bench_claims.py --idx DIR [--train-subset 5000] [--seeds 3] [--parallel 2] [--quick]``
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import gzip
import json
import multiprocessing as mp
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
from _util import loadavg, machine_header, table  # noqa: E402
from bench_refine import SPACE, final_candidate, lineage_epochs, si, step_note, write_idx  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: ResNet-20's layout (He et al. 2016, CIFAR: 3 stages x 3 basic blocks, 16/32/64 channels), with a
#: stride-2 stem at 28x28 (stages at 14, 7, 4 pixels): 17 MFLOPs instead of 62, which a 2-core CPU
#: can refine under 3 seeds in the time of one session.
RESNET20 = {"min_depth": 3, "max_depth": 3, "widths": [16], "stem_widths": [16], "block_types": ["basic"],
            "rank_ratios": [1.0], "stem_stride": 2}
#: Seed 001 (SEEDS.md section 2), ResNet-56 on CIFAR-10: pruning alone and pruning + fusion.
PAPER = {"prune": (-0.6010, -0.42), "fuse": (-0.7211, -0.77)}
IDX = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
       "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


# ------------------------------------------------------------------------------- data
def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for p in (root / f"{stem}.gz", root / stem):
        if p.exists():
            return p
    raise SystemExit(f"--idx {root}: no {stem}[.gz]")


def write_subset(src: Path, dst: Path, n: int, seed: int = 0) -> dict[str, int]:
    """A stratified random ``n`` of the training images as gzipped IDX files; the test files copied as they are."""
    x, y = _read_idx(_find(src, IDX["x_train"])), _read_idx(_find(src, IDX["y_train"]))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep += rng.choice(idx, size=round(n * len(idx) / len(y)), replace=False).tolist()
    keep = sorted(keep)
    dst.mkdir(parents=True, exist_ok=True)
    for name, arr in ((IDX["x_train"], x[keep]), (IDX["y_train"], y[keep])):
        write_idx(dst / f"{name}.gz", arr)
    for key in ("x_test", "y_test"):
        p = _find(src, IDX[key])
        shutil.copy(p, dst / p.name)
    return {"train": len(keep), "test": int(len(_read_idx(_find(src, IDX["y_test"]))))}


# ------------------------------------------------------------------------------- one job
def _row_info(r, base_flops: float) -> dict:
    c = json.loads(r.cost_json)
    return {"step": r.step, "method": r.method, "val": r.val_accuracy, "test": r.test_accuracy,
            "flops": c["flops"], "saved": 1 - c["flops"] / base_flops, "params": c["params"],
            "depth": int(c["depth"]), "s": r.seconds, "note": step_note(r), "id": r.id}


def _train(arch, data, epochs: int, fid, seed: int, threads: int) -> float:
    from objectives import TrainConfig, train_spec

    cfg = TrainConfig(epochs=epochs, batch_size=fid.batch_size, lr=fid.lr, seed=seed, device="cpu", threads=threads)
    return float(train_spec(arch, data, cfg, evaluate_test=True, keep_state=False).test_accuracy or 0.0)


def job(kind: str, db: str, name: str, seed: int, a: dict) -> dict:
    """One process: (a) search + refine, or (b) refine one seed + both claims. Own SQLite copy."""
    from nas.refine import RefineSettings, refine_trial
    from nas.search import create_study, get_study_spec, make_spec, pareto_rows
    from nas.workers import work
    from search_spaces import ArchSpec
    from storage import Store

    torch.set_num_threads(a["threads"])
    t0 = time.perf_counter()
    url = f"sqlite:///{db}"
    out: dict = {"kind": kind, "seed": seed}
    if kind == "a":  # the search whose best front member is refined
        store = Store(url)
        spec = make_spec(name=name, space="resnet", data=a["source"], budget=a["budget"], trials=a["trials"],
                         seed=0, space_options=SPACE, fidelity={"epochs": a["search_epochs"]}, device="cpu")
        create_study(spec, store)
        store.close()
        work(name, url, threads=a["threads"])
        store = Store(url)
        front = pareto_rows(name, store, with_test=False)
        trial = max(front, key=lambda r: (r["accuracy"], -r["flops"]))["trial"]
        out["search_s"] = time.perf_counter() - t0
        out["front"] = len(front)
    else:
        store = Store(url)
        trial = 0
    spec = get_study_spec(name, store)
    data = spec.load_data()
    settings = RefineSettings(**a["refine"], seed=seed)
    t1 = time.perf_counter()
    rows = refine_trial(name, trial, store, settings, threads=a["threads"])
    out["refine_s"] = time.perf_counter() - t1
    base_flops = json.loads(rows[0].cost_json)["flops"]
    final = final_candidate(rows, settings)
    out.update(trial=trial, rows=[_row_info(r, base_flops) for r in rows], final=final.id,
               pruned=_row_info(rows[settings.iterations], base_flops), final_info=_row_info(final, base_flops),
               lineage=lineage_epochs(rows, final, settings), settings=settings.model_dump(),
               sizes=data.sizes, input=list(data.input_shape))
    if kind == "b":
        arch = ArchSpec.from_json(store.get_architecture(final.spec_hash) or "")
        t2 = time.perf_counter()
        out["scratch"] = _train(arch, data, out["lineage"], spec.fidelity, seed, a["threads"])
        out["scratch_s"] = time.perf_counter() - t2
        # FS-DNN: a search from scratch under the refined network's FLOPs, same seed.
        fs_budget = f"flops<={int(out['final_info']['flops'])}"
        fs_name = f"{name}_fs"
        fs_spec = make_spec(name=fs_name, space="resnet", data=a["source"], budget=fs_budget, trials=a["fs_trials"],
                            seed=seed, space_options={}, fidelity={"epochs": a["search_epochs"]}, device="cpu")
        t3 = time.perf_counter()
        create_study(fs_spec, store)
        store.close()
        work(fs_name, url, threads=a["threads"])
        store = Store(url)
        fs_front = pareto_rows(fs_name, store, with_test=False)
        out["fs_search_s"] = time.perf_counter() - t3
        out["fs_budget"] = fs_budget
        if fs_front:
            best = max(fs_front, key=lambda r: r["accuracy"])
            st = optuna.load_study(study_name=fs_name, storage=store.optuna)
            fs_arch = ArchSpec.from_json(store.get_architecture(st.trials[best["trial"]].user_attrs["spec_hash"]) or "")
            c = spec.cost(fs_arch, data.input_shape, data.num_classes, with_depth=True)
            t4 = time.perf_counter()
            out["fs"] = _train(fs_arch, data, out["lineage"], spec.fidelity, seed, a["threads"])
            out["fs_train_s"] = time.perf_counter() - t4
            out["fs_flops"], out["fs_params"], out["fs_depth"] = c["flops"], c["params"], int(c["depth"])
            out["fs_trial"], out["fs_front"] = best["trial"], len(fs_front)
    store.close()
    out["wall_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------- report
def steps_table(res: dict) -> str:
    rows = [[f"{r['step']} {r['method']}" + (" (final)" if r["id"] == res["final"] else ""), f"{r['val']:.4f}",
             f"{r['test']:.4f}", si(r["flops"]), f"{r['saved']:.1%}", si(r["params"]), r["depth"], f"{r['s']:.0f}",
             r["note"]] for r in res["rows"]]
    base = res["rows"][0]
    p, f = res["pruned"], res["final_info"]
    rows.append(["paper, ResNet-56 CIFAR-10: pruning alone", "", f"{PAPER['prune'][1]:+.2f} pt", "",
                 f"{-PAPER['prune'][0]:.1%}", "", "", "", f"here: {p['saved']:.1%} at "
                 f"{100 * (p['test'] - base['test']):+.2f} pt"])
    rows.append(["paper, ResNet-56 CIFAR-10: pruning + fusion", "", f"{PAPER['fuse'][1]:+.2f} pt", "",
                 f"{-PAPER['fuse'][0]:.1%}", "", "24 conv", "", f"here: {f['saved']:.1%} at "
                 f"{100 * (f['test'] - base['test']):+.2f} pt, depth {f['depth']}"])
    return table(["step", "val acc", "test acc", "FLOPs", "FLOPs saved", "params", "depth", "s", "note"], rows)


def paired(diffs: list[float]) -> str:
    from scipy import stats

    d = np.asarray(diffs, float)
    m = float(d.mean())
    if len(d) < 2:
        return f"{100 * m:+.2f} pt (one seed)"
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    t = float(stats.t.ppf(0.975, len(d) - 1))
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if se > 0 else float("nan")
    lo, hi = 100 * (m - t * se), 100 * (m + t * se)
    return f"{100 * m:+.2f} pt, 95 % CI [{lo:+.2f}, {hi:+.2f}], paired t-test p = {p:.3f}"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx", required=True, help="directory of an IDX dataset (the MNIST files)")
    ap.add_argument("--train-subset", type=int, default=5000, help="training images used (stratified, seed 0)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--trials", type=int, default=8, help="trials of the search of part a")
    ap.add_argument("--budget", default="flops<=15M", help="budget of the search of part a")
    ap.add_argument("--search-epochs", type=int, default=5, help="epochs per search trial (parts a and FS-DNN)")
    ap.add_argument("--fs-trials", type=int, default=12, help="trials of the FS-DNN search from scratch")
    ap.add_argument("--skip-a", action="store_true", help="only part b")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)")
    ap.add_argument("--json", help="also write every job's result to this file")
    args = ap.parse_args(argv)
    refine = {}
    if args.quick:
        args.train_subset, args.seeds, args.trials, args.fs_trials, args.search_epochs = 600, 2, 2, 2, 1
        refine = {"epochs": 2, "finetune_epochs": 2, "iterations": 1}
    print(machine_header("bench_claims: seed 001 on real data, Table 5 and FS-DNN decided",
                         ["bench/bench_claims.py", *argv]), flush=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-claims-"))
    atexit.register(shutil.rmtree, tmp, True)
    sizes = write_subset(Path(args.idx), tmp / "data", args.train_subset)
    source = f"idx:{tmp / 'data'}"

    from nas.search import create_study, make_spec
    from nas.workers import work
    from search_spaces import get_space, sample_spec
    from storage import Store

    # (b) the ResNet-20-like study: one trial, the hand-made spec enqueued (1 epoch: the
    # refinement trains its own baseline from scratch, settings.epochs).
    base_db = tmp / "r20.db"
    store = Store(f"sqlite:///{base_db}")
    spec = make_spec(name="r20", space="resnet", data=source, budget="flops<=500M", trials=1, seed=0,
                     space_options=RESNET20, fidelity={"epochs": 1}, device="cpu")
    data_shape = spec.load_data().input_shape
    arch = sample_spec(get_space("resnet", input_shape=data_shape, **RESNET20), 0)
    create_study(spec, store, enqueue=[("ResNet-20-like", arch)])
    store.close()
    work("r20", f"sqlite:///{base_db}", threads=args.threads)

    a = {"source": source, "budget": args.budget, "trials": args.trials, "search_epochs": args.search_epochs,
         "fs_trials": args.fs_trials, "threads": args.threads, "refine": refine}
    jobs = [] if args.skip_a else [("a", str(tmp / "search.db"), "search", 0)]
    for seed in range(args.seeds):
        db = tmp / f"r20-s{seed}.db"
        shutil.copy(base_db, db)
        jobs.append(("b", str(db), "r20", seed))
    results = []
    with cf.ProcessPoolExecutor(max_workers=args.parallel, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(job, *j, a): j for j in jobs}
        for f in cf.as_completed(futs):
            r = f.result()
            results.append(r)
            if args.json:  # every finished job, as soon as it finishes
                Path(args.json).write_text(json.dumps(results, indent=1))
            print(f"  job {r['kind']} seed {r['seed']}: {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bs = sorted((r for r in results if r["kind"] == "b"), key=lambda r: r["seed"])
    out = [f"Data: `{args.idx}`, training subset {sizes['train']} images (stratified random, seed 0; "
           f"{bs[0]['sizes']} after the validation split), test: all {sizes['test']} official test images. "
           f"Refinement settings: {bs[0]['settings']} (short/long/patience epochs from F by the paper's ratios).", ""]
    for r in sorted(results, key=lambda r: (r["kind"], r["seed"])):
        if r["kind"] == "a":
            out += [f"### a. The most accurate front member of a `resnet` search (trial {r['trial']})", "",
                    f"Search: {args.trials} trials, {args.search_epochs} epochs each, budget `{args.budget}`, "
                    f"{r['front']} on the front, {r['search_s']:.0f} s; refinement {r['refine_s']:.0f} s.", "",
                    steps_table(r), ""]
    out += ["### b. ResNet-20-like (3 x 3 basic blocks, 16/32/64, stride-2 stem), seed 0", "",
            f"Refinement {bs[0]['refine_s']:.0f} s.", "", steps_table(bs[0]), ""]
    rows, d5, dfs = [], [], []
    for r in bs:
        base, p, f = r["rows"][0], r["pruned"], r["final_info"]
        rows.append([r["seed"], f"{base['test']:.4f}", f"{p['saved']:.1%} / {p['test']:.4f}",
                     f"{f['saved']:.1%} / {f['test']:.4f} / depth {f['depth']}", r["lineage"],
                     f"{r['scratch']:.4f}",
                     (f"{si(r['fs_flops'])} / {r['fs']:.4f} (trial {r['fs_trial']})" if "fs" in r
                      else "no feasible trial"),
                     f"{r['wall_s']:.0f}"])
        d5.append(f["test"] - r["scratch"])
        if "fs" in r:
            dfs.append(r["fs"] - f["test"])
    out += ["### Per seed (ResNet-20-like)", "", table(
        ["seed", "baseline test", "pruned: FLOPs saved / test", "final: FLOPs saved / test / depth",
         "lineage epochs", "same arch from scratch, lineage epochs: test", "FS-DNN searched: FLOPs / test", "s"],
        rows), ""]
    out += ["### The two claims", "", table(["claim", "difference per seed (pt)", "mean, CI, test"], [
        ["Table 5: refined - same architecture from scratch (same total epochs)",
         ", ".join(f"{100 * x:+.2f}" for x in d5), paired(d5)],
        ["FS-DNN: searched from scratch at <= the refined FLOPs - refined",
         ", ".join(f"{100 * x:+.2f}" for x in dfs), paired(dfs) if dfs else "-"]]), ""]
    out.append(f"Total wall time {time.perf_counter() - t0:.0f} s ({args.parallel} processes, {args.threads} torch "
               f"thread(s) each); load average at end: {loadavg()}")
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
