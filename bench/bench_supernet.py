"""Issue 30: a weight-shared supernet's ranking of subnets against stand-alone training, and its costs.

Trains one supernet of a space (BigNAS sandwich rule, in-place distillation) per ``--variants``
entry, then evaluates ``--n`` subnets spanning the space's parameter range (optionally within
``--budget``) two ways: inherited from the supernet (exact weight slices, BatchNorm recalibrated on
``--bn-batches`` training batches, validated) and trained stand-alone at the demo's fidelity
(``--standalone-epochs`` epochs, batch 64, lr 0.1). Reports Kendall tau and Spearman rho between
the two, wall times (supernet training, seconds per subnet evaluation, as ratios to one stand-alone
training), the supernet's parameters, its ``state_dict`` size and the process's peak RAM.

    python bench/bench_supernet.py                                  # digits, the demo's space
    python bench/bench_supernet.py --variants crop,transform,crop-nodistill
    python bench/bench_supernet.py --data idx:/work/shared/data/mnist --train-fraction 0.1 \
        --epochs 10 --standalone-epochs 3 --val-limit 3000 --input-size 28

Prints markdown; ``--json FILE`` also writes every subnet's figures.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _util import machine_header, table  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from objectives import (  # noqa: E402
    TrainConfig,
    estimate_cost,
    evaluate_subnet,
    load_dataset,
    parse_budget,
    rank_agreement,
    sample_within,
    spanning_subnets,
    train_spec,
    train_supernet,
)
from objectives.train import default_dense_epochs  # noqa: E402
from search_spaces import SuperNet, get_space  # noqa: E402

#: The demo study's space options (nas/search/_demo.py).
DEMO_OPTIONS = {"max_depth": 2, "widths": [8, 16, 24, 32], "hidden": [0, 32, 64]}


def variant(name: str) -> dict:
    parts = set(name.split("-"))
    unknown = parts - {"crop", "transform", "nodistill", "nodense"}
    if unknown or not parts & {"crop", "transform"}:
        raise SystemExit(f"--variants: {name!r} is not a variant; accepted: crop, transform, optionally -nodistill, "
                         "-nodense")
    return {"kernel_transform": "transform" in parts, "inplace_distill": "nodistill" not in parts,
            "dense_epochs": 0 if "nodense" in parts else None}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--space", default="plain")
    ap.add_argument("--options", default=json.dumps(DEMO_OPTIONS), help="space options as JSON (default: the demo's)")
    ap.add_argument("--input-size", type=int, default=None, help="resize images to this short side")
    ap.add_argument("--budget", default=None, help="keep subnets within this budget (e.g. 'params<=20k flops<=1.5M')")
    ap.add_argument("--n", type=int, default=25, help="subnets compared")
    ap.add_argument("--pool", type=int, default=400, help="random subnets drawn to pick the --n from")
    ap.add_argument("--variants", default="crop", help="comma-separated: crop, transform (kernel transform "
                    "matrices), each optionally -nodistill (no in-place distillation), -nodense (no dense-first "
                    "epochs: every rank trains from the start)")
    ap.add_argument("--epochs", type=int, default=20, help="supernet training epochs")
    ap.add_argument("--sandwich", type=int, default=2, help="random subnets per step besides largest and smallest")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bn-batches", type=int, default=8)
    ap.add_argument("--standalone-epochs", default="20", help="stand-alone epochs, comma-separated fidelities")
    ap.add_argument("--ceiling", action="store_true", help="train every subnet stand-alone under a second seed too: "
                    "the Kendall tau between the two is the most a ranking can agree with one run")
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--val-limit", type=int, default=None, help="validate on a fixed random subset of N examples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache", default=None, help="JSON file keeping stand-alone accuracies between runs (keyed by "
                    "data, split sizes, subnet, epochs, seed): variants of the supernet compare against one reference "
                    "without retraining it")
    ap.add_argument("--eval-bn-batches", default=None, help="comma-separated BN recalibration batch counts to "
                    "evaluate every trained supernet with (default: --bn-batches)")
    ap.add_argument("--keep", default=None, help="a directory keeping each trained supernet (by variant, epochs, "
                    "data and seed): a rerun evaluates it again without training")
    args = ap.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    variants = [(v, variant(v)) for v in args.variants.split(",")]

    data = load_dataset(args.data, seed=args.seed, train_fraction=args.train_fraction)
    if args.input_size:
        data = data.resized(args.input_size)
    if args.val_limit:
        keep = torch.randperm(len(data.y_val), generator=torch.Generator().manual_seed(args.seed))[:args.val_limit]
        data = replace(data, x_val=data.x_val[keep], y_val=data.y_val[keep])
    space = get_space(args.space, input_shape=data.input_shape, **json.loads(args.options))
    budget = parse_budget(args.budget) if args.budget else None
    pool = sample_within(space, budget, data.num_classes, args.pool, seed=args.seed)
    subnets = spanning_subnets(pool, data.input_shape, data.num_classes, args.n)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device="cpu", threads=args.threads)

    print(machine_header("bench_supernet: supernet-inherited vs stand-alone accuracy", argv))
    print(f"- data: {args.data}, input {'x'.join(map(str, data.input_shape))}, splits {data.sizes}")
    print(f"- space: {args.space} {args.options}; {len(subnets)} subnets spanning the params range of "
          f"{len(pool)} drawn{' within `' + args.budget + '`' if args.budget else ''} (seed {args.seed})")
    print(f"- supernet: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} (warm-up + cosine), sandwich "
          f"largest + smallest + {args.sandwich} random, BN recalibration on {args.bn_batches} batches of 128; "
          f"dense first for {default_dense_epochs(args.epochs)} epochs (variants without -nodense)")
    print(f"- stand-alone: {args.standalone_epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
          f"{args.threads} thread(s)\n", flush=True)

    # stand-alone training, once for every variant (and again under another seed: the noise ceiling)
    fidelities = [int(e) for e in args.standalone_epochs.split(",")]
    alone: dict[int, list[float]] = {}
    alone_s: dict[int, list[float]] = {}
    ceiling: dict[int, float | None] = {}

    cache_path = Path(args.cache) if args.cache else None
    cache: dict = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    data_key = "|".join(map(str, (args.data, args.input_size, args.train_fraction, args.val_limit, data.sizes,
                                  args.batch_size, args.lr)))

    def standalone(epochs: int, seed: int) -> tuple[list[float], list[float]]:
        accs, secs = [], []
        for spec in subnets:
            key = f"{data_key}|{spec.hash}|{epochs}|{seed}"
            if key in cache:
                accs.append(cache[key]["acc"])
                secs.append(cache[key]["seconds"])
                continue
            t = time.perf_counter()
            try:
                acc = train_spec(spec, data, replace(cfg, epochs=epochs, seed=seed), keep_state=False).val_accuracy
            except Exception as e:  # a diverged network counts as the lowest accuracy, as a search would
                print(f"  {spec.short_hash}: {e}", file=sys.stderr)
                acc = 0.0
            accs.append(acc)
            secs.append(time.perf_counter() - t)
            if cache_path:
                cache[key] = {"acc": acc, "seconds": secs[-1]}
                cache_path.write_text(json.dumps(cache))
        return accs, secs

    for f in fidelities:
        alone[f], alone_s[f] = standalone(f, args.seed)
        ceiling[f] = None
        if args.ceiling:
            again = standalone(f, args.seed + 1)[0]
            ceiling[f] = float(kendalltau(alone[f], again).statistic)
        print(f"- stand-alone training at {f} epochs: {sum(alone_s[f]):.0f} s in all, "
              f"{statistics.fmean(alone_s[f]):.2f} s per network on average, accuracy "
              f"{min(alone[f]):.3f}..{max(alone[f]):.3f}"
              + (f"; Kendall tau between seeds {args.seed} and {args.seed + 1}: {ceiling[f]:.3f}"
                 if ceiling[f] is not None else ""), flush=True)
        size_tau = rank_agreement([estimate_cost(s, data.input_shape, data.num_classes)["params"] for s in subnets],
                                  alone[f])
        print(f"  (ranking by parameter count alone: Kendall tau {size_tau[0]:.3f}, Spearman {size_tau[1]:.3f})")
    print()

    rows: list[list] = []
    records: dict = {"args": vars(args), "subnets": [s.to_dict() for s in subnets], "standalone": alone,
                     "standalone_seconds": alone_s, "ceiling": ceiling, "variants": {}}
    for name, kw in variants:
        torch.manual_seed(args.seed)
        net = SuperNet.from_space(space, data.input_shape, data.num_classes, kernel_transform=kw["kernel_transform"])
        n_params = sum(p.numel() for p in net.parameters())
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        kept = (Path(args.keep) / f"{name}-e{args.epochs}-s{args.sandwich}-{Path(args.data).name}-{args.train_fraction}"
                f"-{args.input_size}-seed{args.seed}.pt") if args.keep else None
        if kept is not None and kept.exists():
            saved = torch.load(kept, weights_only=False)
            net.load_state_dict(saved["state"])
            result, train_s = saved["result"], saved["seconds"]
        else:
            t = time.perf_counter()
            result = train_supernet(net, data, replace(cfg, epochs=args.epochs), sandwich=args.sandwich,
                                    inplace_distill=kw["inplace_distill"], bn_batches=args.bn_batches,
                                    dense_epochs=kw["dense_epochs"])
            train_s = time.perf_counter() - t
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"state": net.state_dict(), "result": result, "seconds": train_s}, kept)
        for bn in [int(b) for b in (args.eval_bn_batches or str(args.bn_batches)).split(",")]:
            inherited, eval_s = [], []
            for spec in subnets:
                t = time.perf_counter()
                inherited.append(evaluate_subnet(net, spec, data, bn_batches=bn))
                eval_s.append(time.perf_counter() - t)
            print(f"  {name} bn_batches={bn}: " + ", ".join(
                f"{f} ep tau/rho {rank_agreement(inherited, alone[f])}" for f in fidelities), file=sys.stderr)
        per_eval = statistics.fmean(eval_s)
        taus = {}
        for f in fidelities:
            tau, rho = rank_agreement(inherited, alone[f])
            taus[f] = (tau, rho)
            mean_alone = statistics.fmean(alone_s[f])
            gap = statistics.fmean(a - b for a, b in zip(alone[f], inherited, strict=True))
            rows.append([name, f, len(subnets), tau, rho, ceiling[f], result.largest, result.smallest,
                         f"{statistics.fmean(inherited):.3f} ({min(inherited):.3f}..{max(inherited):.3f})", gap,
                         f"{train_s:.1f} s", f"{train_s / mean_alone:.1f}", f"{per_eval:.3f} s",
                         f"{per_eval / mean_alone:.4f}", f"{n_params:,}", f"{len(buf.getvalue()):,}"])
        records["variants"][name] = {"inherited": inherited, "eval_seconds": eval_s, "train_seconds": train_s,
                                     "curve": [{k: v for k, v in vars(r).items() if k != "_state"}
                                               for r in result.curve],
                                     "params": n_params, "state_bytes": len(buf.getvalue()), "tau_rho": taus}
        print(f"- {name}: supernet trained in {train_s:.0f} s (largest {result.largest:.3f}, smallest "
              f"{result.smallest:.3f}); tau/rho by stand-alone epochs {taus}", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(records, default=lambda v: None))
    print(table(["variant", "stand-alone epochs", "subnets", "Kendall tau", "Spearman rho",
                 "tau between 2 stand-alone seeds", "largest (val)", "smallest (val)",
                 "subnets' supernet accuracy: mean (range)", "mean acc gap (alone - inherited)", "supernet training",
                 "x one stand-alone",
                 "per subnet eval", "x one stand-alone", "supernet params", "state_dict bytes"], rows))
    print("\nper subnet (params, stand-alone val accuracy per fidelity, inherited accuracy per variant):\n")
    per = []
    for i, spec in enumerate(subnets):
        cost = estimate_cost(spec, data.input_shape, data.num_classes)
        per.append([spec.short_hash, int(cost["params"]), int(cost["flops"]), *[alone[f][i] for f in fidelities],
                    *[records["variants"][v]["inherited"][i] for v, _ in variants]])
    print(table(["spec", "params", "flops", *[f"alone {f} ep" for f in fidelities], *[v for v, _ in variants]], per))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n- peak RAM of this process (ru_maxrss): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main(sys.argv)
