"""Issue 18: rank correlation of zero-cost proxies with trained validation accuracy.

For each search space: draw ``--n`` distinct architectures at random (seeded) whose FLOPs are within
``--budget`` (the regime a study searches), score every proxy (one batch of 64 training images,
weights initialised under seed 0), train each network at a low fidelity (``--epochs`` epochs on
``--train-fraction`` of the training split) and validate it on the validation split (or a fixed
random subset of ``--val-limit`` examples); then
Spearman rho and Kendall tau of every proxy (and the vote) with validation accuracy.

    python bench/bench_proxies.py --data digits --n 60 --epochs 2
    python bench/bench_proxies.py --data idx:/work/shared/data/mnist --n 25 --epochs 1 \
        --train-fraction 0.04 --val-limit 3000

Prints markdown; ``--json FILE`` also writes every architecture's scores and accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _util import machine_header, table  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

from objectives import (  # noqa: E402
    PROXIES,
    VOTE,
    VOTE_MEMBERS,
    TrainConfig,
    load_dataset,
    parse_budget,
    proxy_batch,
    sample_within,
    score_arch,
    train_spec,
    vote_scores,
)
from search_spaces import get_space  # noqa: E402

#: Abdelfattah et al., ICLR 2021, table 2: Spearman rho on NAS-Bench-201 CIFAR-10.
HEADERS = ["space", "proxy", "networks", "Spearman rho", "Kendall tau", "published rho (NB201 C10)"]
PUBLISHED = {"synflow": 0.74, "jacob_cov": 0.73, "snip": 0.60, "grad_norm": 0.60, VOTE: 0.82}


def draw(space_name: str, input_shape: tuple[int, int, int], classes: int, budget: str, n: int, seed: int) -> list:
    return sample_within(get_space(space_name, input_shape=input_shape), parse_budget(budget), classes, n, seed=seed)


def corr(xs: list[float], ys: list[float]) -> tuple[float, float]:
    xs = [x if math.isfinite(x) else -1e300 for x in xs]
    return float(spearmanr(xs, ys).statistic), float(kendalltau(xs, ys).statistic)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--spaces", default="plain,resnet,mobilenetv2")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--budget", default=None, help="FLOPs budget of the drawn networks (default by data)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--val-limit", type=int, default=None,
                    help="validate on N examples of the validation split (a fixed random subset, seeded)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=args.seed, train_fraction=args.train_fraction)
    if args.val_limit:
        from dataclasses import replace

        keep = torch.randperm(len(data.y_val), generator=torch.Generator().manual_seed(args.seed))[:args.val_limit]
        data = replace(data, x_val=data.x_val[keep], y_val=data.y_val[keep])
    budget = args.budget or ("flops<=2M" if data.input_shape[1] <= 16 else "flops<=10M")
    batch = proxy_batch(data.x_train, data.y_train, data.num_classes, seed=args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu",
                      threads=args.threads)
    print(machine_header("bench_proxies: zero-cost proxies vs trained accuracy", argv))
    print(f"- data: {args.data}, input {'x'.join(map(str, data.input_shape))}, splits {data.sizes}; "
          f"fidelity: {args.epochs} epochs on train fraction {args.train_fraction}, batch {args.batch_size}, "
          f"lr {args.lr}; validation on "
          f"{'a fixed random ' + str(args.val_limit) + ' examples of ' if args.val_limit else ''}the validation split")
    print(f"- architectures: --n {args.n} per space, drawn uniformly (seed {args.seed}) and kept when within "
          f"`{budget}`\n")
    names = list(PROXIES)
    records: dict[str, list[dict]] = {}
    rows = []
    t_all = time.perf_counter()
    for space_name in args.spaces.split(","):
        archs = draw(space_name, data.input_shape, data.num_classes, budget, args.n, args.seed)
        recs = []
        t_proxy = t_train = 0.0
        for arch in archs:
            t0 = time.perf_counter()
            scores = score_arch(arch, batch, names, seed=args.seed)
            t1 = time.perf_counter()
            try:
                acc = train_spec(arch, data, cfg, keep_state=False).val_accuracy
            except Exception as e:  # a diverged network: lowest accuracy, as a search would count it
                print(f"  {space_name} {arch.short_hash}: {e}", file=sys.stderr)
                acc = 0.0
            t2 = time.perf_counter()
            t_proxy, t_train = t_proxy + t1 - t0, t_train + t2 - t1
            recs.append({"spec_hash": arch.hash, "val_accuracy": acc, "scores": scores})
        records[space_name] = recs
        accs = [r["val_accuracy"] for r in recs]
        votes = vote_scores([r["scores"] for r in recs], VOTE_MEMBERS)
        space_rows = []
        for name in [*names, VOTE]:
            xs = votes if name == VOTE else [r["scores"][name] for r in recs]
            rho, tau = corr(xs, accs)
            space_rows.append([space_name, name, len(recs), rho, tau, PUBLISHED.get(name, "-")])
        rows += space_rows
        print(f"- {space_name}: {len(recs)} networks, accuracy {min(accs):.3f}..{max(accs):.3f} "
              f"(median {sorted(accs)[len(accs) // 2]:.3f}); proxies {t_proxy:.0f} s "
              f"({1000 * t_proxy / max(1, len(recs)):.0f} ms per network, all {len(names)}), training "
              f"{t_train:.0f} s (info)", flush=True)
        # each space's table as soon as it is done, so an interrupted run still reports what it measured
        print("\n" + table(HEADERS, space_rows) + "\n", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "budget": budget, "records": records},
                                                  default=lambda v: None))
    print()
    print(table(HEADERS, rows))
    print(f"\n- total {time.perf_counter() - t_all:.0f} s (info)")


if __name__ == "__main__":
    main(sys.argv)
