"""Issue 18 item 4: a low-fidelity trial validating every epoch vs only where it decides.

One network (the first random ``resnet`` architecture within ``--budget``) is trained at
``--epochs`` epochs on ``--train-fraction`` of the training split, validating after every epoch
(as before) and only after the last one (what a study without a per-epoch pruner now does), in
the order A B B A; the ratio of the mean wall times is reported, and the final accuracies must be
equal.

    python bench/bench_validation.py --data idx:/work/shared/data/mnist --train-fraction 0.1 --epochs 4
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _util import machine_header, table  # noqa: E402

from objectives import TrainConfig, estimate_cost, load_dataset, parse_budget, train_spec  # noqa: E402
from search_spaces import get_space  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--train-fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--budget", default="flops<=10M")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=0, train_fraction=args.train_fraction)
    space = get_space("resnet", input_shape=data.input_shape)
    limit, rng = parse_budget(args.budget), random.Random(0)
    arch = next(a for a in (space.sample(rng) for _ in range(10_000))
                if not limit.violations(dict(estimate_cost(a, data.input_shape, data.num_classes).totals)))
    cfg = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.1, seed=0, device="cpu", threads=args.threads)
    print(machine_header("bench_validation: validation passes of a low-fidelity trial", argv))
    print(f"- data {args.data}, splits {data.sizes}, {args.epochs} epochs, network {arch.short_hash} "
          f"({estimate_cost(arch, data.input_shape, data.num_classes).totals['flops'] / 1e6:.2f} MFLOPs)\n")
    times: dict[str, list[float]] = {"every epoch": [], "last epoch only": []}
    accs: dict[str, set[float]] = {k: set() for k in times}
    for label in ["every epoch", "last epoch only", "last epoch only", "every epoch"]:
        t0 = time.perf_counter()
        r = train_spec(arch, data, cfg, keep_state=False, validate_epochs=None if label == "every epoch" else set())
        times[label].append(time.perf_counter() - t0)
        accs[label].add(r.val_accuracy)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    rows = [[k, mean[k], mean[k] / mean["every epoch"], ", ".join(f"{a:.4f}" for a in sorted(accs[k]))]
            for k in times]
    print(table(["validation", "mean seconds (info)", "time / every epoch", "final val accuracy"], rows))
    print(f"\n- same final accuracy: {accs['every epoch'] == accs['last epoch only']}")


if __name__ == "__main__":
    main(sys.argv)
