"""Issue 30's time-and-quality target: a supernet flow against the standard search, same data and budget.

Target: "supernet training + a 500-subnet study + fine-tuning the front <= the wall time of the
standard search of 24 networks on the same data and budget, with a final front (same final
epochs for front members) whose hypervolume is >= the standard search's; a second budget's front
in <= 5 % of that time."

Every part goes through the library functions the CLI calls, on one SQLite file in a temporary
directory, each part in its own (spawned) process with ``--threads`` torch threads, timed inside
that process (the interpreter's start-up and imports are not counted; creating a study is):

A. standard search: ``nas study create std --budget B --trials N --epochs E`` (``create_study``; the
   space is fitted to the budget as the CLI does) and ``nas study run std`` with one worker
   (``nas.workers.work(threads=T)``). Its front: the feasible trials' non-dominated (validation
   accuracy after E epochs from scratch, hw_cost) points.
B. supernet flow: ``nas supernet train`` (``train_stored_supernet``) of std's stored (fitted) space;
   ``nas study create sn --supernet NAME --budget B --trials M`` and its run (one worker); ``nas study
   finetune sn --front --epochs E`` (``finetune_study``). Its final front: the fine-tuned members'
   (validation accuracy after E epochs from their inherited weights, hw_cost) points.
C. second budget: ``nas study create sn2 --supernet NAME --budget B2 --trials M`` and its run, no
   new supernet training; its fine-tuning (``--no-finetune2`` skips it) is timed apart.

Hypervolume: 2-D, exact, maximise validation accuracy and minimise hw_cost (the studies'
objectives, ``accuracy,hw_cost``), reference point (accuracy 0, hw_cost 1): hw_cost is the mean of
resource / limit over the budget's resources, so every network within the budget has hw_cost <= 1
and the reference is the budget's limit. Test accuracy of both fronts is shown too (held-out test
split; neither arm chose by it).

    python bench/bench_supernet_flow.py                                   # digits, the demo's space
    python bench/bench_supernet_flow.py --trials-std 4 --trials-sn 20 --supernet-epochs 1 --epochs 1  # smoke
    python bench/bench_supernet_flow.py --data idx:/work/shared/data/mnist --subset 12000 --epochs 5 \\
        --supernet-epochs 10
    # the issue's own MNIST setting: the resnet space fitted to flops<=2M, all 60,000 images, 5 epochs
    python bench/bench_supernet_flow.py --data idx:/work/shared/data/mnist --space resnet --options '{}' \\
        --budget 'flops<=2M' --budget2 'flops<=1M' --epochs 5 --supernet-epochs 10

``--subset N`` (IDX sources only) writes N training images of the source drawn at random (seeded) and
N/5 of its test images to an ``npz:`` file that every part reads: a supernet has no
``--train-fraction``, so a subset is the one way both arms see the same data. Prints markdown;
``--json FILE`` also writes every figure.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import gzip
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if "NAS_HOME" not in os.environ:  # never touch ~/.lightnas; removed at exit
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from _util import machine_header, table  # noqa: E402

#: The demo study's space options (nas/search/_demo.py).
DEMO_OPTIONS = {"max_depth": 2, "widths": [8, 16, 24, 32], "hidden": [0, 32, 64]}
#: Hypervolume reference point (accuracy, hw_cost): see the module docstring.
REF_ACC, REF_COST = 0.0, 1.0
OBJECTIVES = ["accuracy", "hw_cost"]
SUPERNET = "sn-net"


# ------------------------------------------------------------------------------ parts (child processes)
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_child(part: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run ``part`` in this (spawned) process with ``kwargs["threads"]`` torch threads."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(kwargs["threads"])
    out = PARTS[part](**kwargs)
    out["peak_rss_mb"] = _peak_mb()
    return out


def _store(url: str):
    from storage import Store

    return Store(url)


def part_standard(url: str, fields: dict[str, Any], threads: int) -> dict[str, Any]:
    """``nas study create`` + ``nas study run`` (one worker) of the standard search."""
    from nas.search import create_study, make_spec
    from nas.workers import work

    store = _store(url)
    try:
        t0 = time.perf_counter()
        plan = create_study(make_spec(**fields), store)
        create_s = time.perf_counter() - t0
    finally:
        store.close()
    t0 = time.perf_counter()
    work(fields["name"], url, threads=threads)
    run_s = time.perf_counter() - t0
    spec = plan.study_spec
    return {"create_s": create_s, "run_s": run_s, "space_options": spec.space_options,
            "fitted": "fit" in plan.info, "input_size": spec.input_size}


def part_supernet(url: str, fields: dict[str, Any], threads: int) -> dict[str, Any]:
    """``nas supernet train``."""
    from nas.search import make_supernet_spec, supernet_doc, train_stored_supernet

    store = _store(url)
    try:
        t0 = time.perf_counter()
        record = train_stored_supernet(make_supernet_spec(**fields), store, threads=threads)
        seconds = time.perf_counter() - t0
        doc = supernet_doc(store, record)
    finally:
        store.close()
    last = record.curve[-1] if record.curve else {}
    return {"seconds": seconds, "params": record.params, "state_bytes": record.state_bytes,
            "stored_weight_bytes": doc["stored_weight_bytes"], "largest": last.get("largest"),
            "smallest": last.get("smallest"), "curve": record.curve}


def part_supernet_study(url: str, fields: dict[str, Any], threads: int) -> dict[str, Any]:
    """``nas study create NAME --supernet S`` + ``nas study run NAME`` (one worker)."""
    from nas.search import create_study, make_spec, require_supernet, supernet_study_fields
    from nas.workers import work

    store = _store(url)
    try:
        t0 = time.perf_counter()
        full = supernet_study_fields(require_supernet(store, fields["supernet"], trained=True),
                                     {k: v for k, v in fields.items() if k != "supernet"})
        create_study(make_spec(**full), store)
        create_s = time.perf_counter() - t0
    finally:
        store.close()
    t0 = time.perf_counter()
    work(fields["name"], url, threads=threads)
    return {"create_s": create_s, "run_s": time.perf_counter() - t0}


def part_finetune(url: str, name: str, epochs: int, threads: int) -> dict[str, Any]:
    """``nas study finetune NAME --front --epochs E``."""
    from nas.search import finetune_study

    store = _store(url)
    try:
        t0 = time.perf_counter()
        members = finetune_study(name, store, epochs=epochs, threads=threads)
        return {"seconds": time.perf_counter() - t0, "members": members}
    finally:
        store.close()


PARTS = {"standard": part_standard, "supernet": part_supernet, "supernet_study": part_supernet_study,
         "finetune": part_finetune}


def run_part(part: str, **kwargs: Any) -> dict[str, Any]:
    """One part in a fresh spawned process (its own peak RSS); raises what the part raised."""
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(_in_child, part, kwargs).result()


# ------------------------------------------------------------------------------ fronts and hypervolume
def hv2d(points: list[tuple[float, float]]) -> float:
    """Exact 2-D hypervolume of (accuracy, hw_cost) points, maximising accuracy and minimising cost,
    against (REF_ACC, REF_COST); a point beyond the reference adds nothing."""
    pts = sorted((c, a) for a, c in points if c < REF_COST and a > REF_ACC)
    area, best = 0.0, REF_ACC
    for i, (c, a) in enumerate(pts):  # sweep cost upwards; the height is the best accuracy so far
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else REF_COST
        area += (nxt - c) * (best - REF_ACC)
    return area


def nondominated(points: list[tuple[float, float]]) -> list[bool]:
    from nas.search import pareto_mask

    return [bool(k) for k in pareto_mask([[-a, c] for a, c in points])] if points else []


def front_of(url: str, name: str, *, finetuned: bool) -> dict[str, Any]:
    """The (accuracy, hw_cost) points of study ``name``: its feasible evaluated trials (``finetuned``:
    only its fine-tuned ones), one per architecture; with test accuracy of the non-dominated ones."""
    import optuna

    from nas.search import Status, get_study_spec, record_of, test_accuracy, trial_fidelity_key

    store = _store(url)
    try:
        spec = get_study_spec(name, store)
        trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
        rows: dict[str, Any] = {}
        for t in sorted(trials, key=lambda t: t.number):
            r = record_of(t)
            if not r.evaluated or (finetuned and r.status != Status.FINETUNED) or t.values is None:
                continue
            rows.setdefault(str(r.spec_hash), t)
        chosen = list(rows.values())
        points = [(float(t.values[0]), float(t.values[1])) for t in chosen]
        keep = nondominated(points)
        data = spec.load_data()
        members = []
        for t, p, k in zip(chosen, points, keep, strict=True):
            if not k:
                continue
            r = record_of(t)
            test = test_accuracy(name, store, spec, str(r.spec_hash), data, trial_fidelity_key(spec, t))
            members.append({"trial": t.number, "spec_hash": str(r.spec_hash)[:12], "accuracy": p[0], "hw_cost": p[1],
                            "params": r.cost.get("params"), "flops": r.cost.get("flops"), "test_accuracy": test,
                            "supernet_accuracy": t.user_attrs.get("finetuned_from", {}).get("supernet_accuracy")})
        test_pts = [(m["test_accuracy"], m["hw_cost"]) for m in members if m["test_accuracy"] is not None]
        status: dict[str, int] = {}
        for t in trials:
            s = str(record_of(t).status or t.state.name.lower())
            status[s] = status.get(s, 0) + 1
        return {"points": len(points), "front": sorted(members, key=lambda m: m["hw_cost"]), "hv": hv2d(points),
                "hv_test": hv2d(test_pts) if test_pts else None, "trials": len(trials), "status": status}
    finally:
        store.close()


# ------------------------------------------------------------------------------ data
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def subset_npz(source: str, n: int, seed: int, tmp: Path) -> str:
    """``npz:FILE`` with ``n`` random training images (and ``n // 5`` test images) of IDX ``source``."""
    if not source.startswith("idx:"):
        raise SystemExit(f"--subset: takes an idx:DIR source; got {source!r}")
    root = Path(source[4:])
    x_tr, y_tr = _read_idx(root / "train-images-idx3-ubyte.gz"), _read_idx(root / "train-labels-idx1-ubyte.gz")
    x_te, y_te = _read_idx(root / "t10k-images-idx3-ubyte.gz"), _read_idx(root / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    a = rng.permutation(len(x_tr))[:n]
    b = rng.permutation(len(x_te))[:max(n // 5, 1)]
    path = tmp / f"subset-{n}.npz"
    np.savez(path, x_train=x_tr[a], y_train=y_tr[a].astype(np.int64), x_test=x_te[b], y_test=y_te[b].astype(np.int64))
    return f"npz:{path}"


# ------------------------------------------------------------------------------ main
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", help="digits | idx:DIR | cifar10:DIR | npz:FILE")
    ap.add_argument("--subset", type=int, default=None, help="idx: only: N training images drawn at random (seeded), "
                    "written to an npz that every part reads")
    ap.add_argument("--input-size", type=int, default=None, help="resize images to this short side")
    ap.add_argument("--space", default="plain")
    ap.add_argument("--options", default=json.dumps(DEMO_OPTIONS), help="space options as JSON (default: the demo's)")
    ap.add_argument("--budget", default="params<=50k", help="budget B of both arms (default: about the median params "
                    "of the demo space's architectures)")
    ap.add_argument("--budget2", default="params<=20k", help="the second budget B2 (supernet arm only)")
    ap.add_argument("--trials-std", type=int, default=24, help="networks of the standard search")
    ap.add_argument("--trials-sn", type=int, default=500, help="subnets of each supernet study")
    ap.add_argument("--epochs", type=int, default=20, help="E: epochs of every standard trial and of fine-tuning")
    ap.add_argument("--supernet-epochs", type=int, default=20)
    ap.add_argument("--sandwich", type=int, default=2, help="random subnets per supernet step besides the largest "
                    "and smallest")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--sn-sampler", default=None, help="the supernet studies' sampler (default: --sampler)")
    ap.add_argument("--no-finetune2", action="store_true", help="do not fine-tune the second budget's front")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the SQLite database at this path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv[1:])

    tmp = Path(tempfile.mkdtemp(prefix="bench-supernet-flow-"))
    atexit.register(shutil.rmtree, tmp, True)
    data = subset_npz(args.data, args.subset, args.seed, tmp) if args.subset else args.data
    url = f"sqlite:///{tmp}/flow.db"
    options = json.loads(args.options)
    fidelity = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    common = {"objectives": OBJECTIVES, "sampler": args.sampler, "fidelity": fidelity}
    T = args.threads

    print(machine_header("bench_supernet_flow: supernet training + study + fine-tuning vs the standard search",
                         argv))
    print(f"- data: {args.data}" + (f", a random subset of {args.subset} training images ({data[4:]})"
                                    if args.subset else "")
          + (f", resized to {args.input_size}" if args.input_size else ""))
    print(f"- space: {args.space} {args.options} (fitted to the budget as `nas study create` does; the supernet "
          f"holds the standard study's stored space)")
    print(f"- budget B `{args.budget}`, second budget B2 `{args.budget2}`; objectives accuracy, hw_cost; sampler "
          f"{args.sampler}{f' (supernet studies: {args.sn_sampler})' if args.sn_sampler else ''}; seed {args.seed}; "
          f"{T} torch thread(s) in every part, one worker")
    print(f"- standard search: {args.trials_std} networks within B, {args.epochs} epochs each, batch "
          f"{args.batch_size}, lr {args.lr}")
    print(f"- supernet: {args.supernet_epochs} epochs, sandwich largest + smallest + {args.sandwich} random, "
          f"in-place distillation; studies of {args.trials_sn} subnets; front fine-tuned {args.epochs} epochs\n",
          flush=True)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # A. the standard search
    std = run_part("standard", url=url, threads=T, fields={
        "name": "std", "space": args.space, "data": data, "budget": args.budget, "seed": args.seed,
        "trials": args.trials_std, "space_options": options, "input_size": args.input_size, **common})
    t_std = std["create_s"] + std["run_s"]
    say(f"A. standard search: {t_std:.1f} s (create {std['create_s']:.1f} s, run {std['run_s']:.1f} s)")

    # B. supernet, its study on B, fine-tuning its front
    sn = run_part("supernet", url=url, threads=T, fields={
        "name": SUPERNET, "space": args.space, "space_options": std["space_options"], "data": data,
        "input_size": std["input_size"], "epochs": args.supernet_epochs, "seed": args.seed,
        "batch_size": args.batch_size, "lr": args.lr, "sandwich": args.sandwich})
    say(f"B. supernet trained: {sn['seconds']:.1f} s")
    study_fields = {"supernet": SUPERNET, "trials": args.trials_sn, **common,
                    "sampler": args.sn_sampler or args.sampler}
    s1 = run_part("supernet_study", url=url, threads=T, fields={"name": "sn", "budget": args.budget, **study_fields})
    say(f"B. supernet study: {s1['create_s'] + s1['run_s']:.1f} s")
    sn_before = front_of(url, "sn", finetuned=False)
    ft1 = run_part("finetune", url=url, threads=T, name="sn", epochs=args.epochs)
    say(f"B. fine-tuning {len(ft1['members'])} members: {ft1['seconds']:.1f} s")
    t_study1 = s1["create_s"] + s1["run_s"]
    t_sn = sn["seconds"] + t_study1 + ft1["seconds"]

    # C. a second budget on the same supernet
    s2 = run_part("supernet_study", url=url, threads=T, fields={"name": "sn2", "budget": args.budget2,
                                                                 **study_fields})
    t_2 = s2["create_s"] + s2["run_s"]
    say(f"C. second budget's study: {t_2:.1f} s")
    ft2 = None if args.no_finetune2 else run_part("finetune", url=url, threads=T, name="sn2", epochs=args.epochs)

    std_front = front_of(url, "std", finetuned=False)
    sn_front = front_of(url, "sn", finetuned=True)
    sn2_before = front_of(url, "sn2", finetuned=False)
    sn2_front = front_of(url, "sn2", finetuned=True) if ft2 is not None else None

    # report
    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    rows = [
        ["A. standard search: create", std["create_s"], "", std["peak_rss_mb"]],
        ["A. standard search: run (1 worker)", std["run_s"],
         f"{args.trials_std} networks, {std['run_s'] / args.trials_std:.2f} s per network", ""],
        ["**A. T_std**", t_std, "", ""],
        ["B. supernet training", sn["seconds"],
         f"{args.supernet_epochs} epochs, {sn['seconds'] / args.supernet_epochs:.2f} s per epoch", sn["peak_rss_mb"]],
        ["B. supernet study: create", s1["create_s"], "", s1["peak_rss_mb"]],
        ["B. supernet study: run (1 worker)", s1["run_s"], f"{args.trials_sn} subnets, "
         f"{args.trials_sn / s1['run_s']:.2f} subnets/s (and {sn_before['status'].get('over_budget', 0)} samples "
         "rejected over the budget)", ""],
        ["B. fine-tuning the front", ft1["seconds"], f"{len(ft1['members'])} members x {args.epochs} epochs",
         ft1["peak_rss_mb"]],
        ["**B. T_sn**", t_sn, f"T_sn / T_std = {pct(t_sn / t_std)} (target <= 100 %)", ""],
        ["C. second budget: create + run", t_2, f"T_2 / T_std = {pct(t_2 / t_std)} (target <= 5 %); "
         f"{args.trials_sn / s2['run_s']:.2f} subnets/s", s2["peak_rss_mb"]],
    ]
    if ft2 is not None:
        rows.append(["C. second budget: fine-tuning its front (apart)", ft2["seconds"],
                     f"{len(ft2['members'])} members; with it (T_2 + fine-tuning) / T_std = "
                     f"{pct((t_2 + ft2['seconds']) / t_std)}", ft2["peak_rss_mb"]])
    print("### Wall times\n")
    print(table(["part", "wall s", "note", "peak RSS of its process, MB"], rows))

    def front_row(label: str, f: dict[str, Any], what: str) -> list[Any]:
        return [label, what, f["points"], len(f["front"]), f["hv"], f["hv_test"]]

    print("\n### Fronts (hypervolume: maximise accuracy, minimise hw_cost, reference (accuracy "
          f"{REF_ACC}, hw_cost {REF_COST}) = the budget's limit)\n")
    frows = [front_row("A. standard, B", std_front, f"validation accuracy, {args.epochs} epochs from scratch"),
             front_row("B. supernet flow, B (final)", sn_front,
                       f"validation accuracy, {args.epochs} epochs fine-tuned from inherited weights"),
             front_row("B. supernet study before fine-tuning (info)", sn_before, "supernet accuracy (not stand-alone)"),
             front_row("C. second budget B2, supernet study (info)", sn2_before, "supernet accuracy (not stand-alone)")]
    if sn2_front is not None:
        frows.append(front_row("C. second budget B2, fine-tuned (info)", sn2_front,
                               f"validation accuracy, {args.epochs} epochs fine-tuned"))
    print(table(["front", "accuracy", "points", "front size", "HV (validation)", "HV (test, front members)"], frows))
    ok_hv = sn_front["hv"] >= std_front["hv"]
    ok_test = (sn_front["hv_test"] or 0.0) >= (std_front["hv_test"] or 0.0)
    print(f"\n- **HV_sn >= HV_std (validation): {'yes' if ok_hv else 'no'}** ({sn_front['hv']:.4f} vs "
          f"{std_front['hv']:.4f}); on test (front members): {'yes' if ok_test else 'no'} "
          f"({sn_front['hv_test'] or 0.0:.4f} vs {std_front['hv_test'] or 0.0:.4f})")
    print(f"- **T_sn <= T_std: {'yes' if t_sn <= t_std else 'no'}** ({t_sn:.1f} s vs {t_std:.1f} s, "
          f"{pct(t_sn / t_std)}); **T_2 <= 5 % of T_std: {'yes' if t_2 <= 0.05 * t_std else 'no'}** "
          f"({t_2:.1f} s, {pct(t_2 / t_std)})")
    print(f"- supernet: {sn['params']:,} parameters, state_dict {sn['state_bytes']:,} bytes, stored weights artifact "
          f"{sn['stored_weight_bytes']:,} bytes; peak RSS of the process training it (ru_maxrss) "
          f"{sn['peak_rss_mb']:.0f} MB; last epoch's largest / smallest subnet (supernet accuracy) "
          f"{sn['largest']} / {sn['smallest']}")
    print(f"- standard study space: {json.dumps(std['space_options'])}"
          + (" (fitted to the budget)" if std["fitted"] else " (as given: not fitted)"))
    print(f"- trial statuses: std {std_front['status']}; sn {sn_before['status']}; sn2 {sn2_before['status']}")

    for label, f in (("A. standard search", std_front), ("B. supernet flow, fine-tuned", sn_front)):
        print(f"\n{label}: front members\n")
        print(table(["trial", "spec", "params", "flops", "hw_cost", "val accuracy", "test accuracy",
                     "supernet accuracy before fine-tuning"],
                    [[m["trial"], m["spec_hash"], m["params"], m["flops"], m["hw_cost"], m["accuracy"],
                      m["test_accuracy"], m["supernet_accuracy"]] for m in f["front"]]))

    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "data_source": data, "t_std": t_std, "t_sn": t_sn, "t_2": t_2,
            "parts": {"standard": std, "supernet": sn, "sn_study": s1, "sn_finetune": ft1, "sn2_study": s2,
                      "sn2_finetune": ft2},
            "fronts": {"std": std_front, "sn": sn_front, "sn_before": sn_before, "sn2_before": sn2_before,
                       "sn2": sn2_front},
            "hv_sn_ge_std": ok_hv}, indent=1, default=str))
    if args.keep:
        shutil.copy(tmp / "flow.db", args.keep)


if __name__ == "__main__":
    main(sys.argv)
