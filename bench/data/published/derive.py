#!/usr/bin/env python3
"""Derive the compact published-measurement tables of this directory from the researcher's
extraction (``/work/research17/out``, made by its ``extract.py`` from the repositories and
commits listed in ``README.md``). Stdlib only; run from anywhere:

    python bench/data/published/derive.py [/path/to/research17/out]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/research17/out")
#: NAS-Bench-201's operation order (its ``SearchSpaceNames['nas-bench-201']``).
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def g(x: str) -> str:
    """Seven significant digits: far beyond the timings' precision, a third of the bytes."""
    return f"{float(x):.7g}"


def nb201_code(arch: str) -> str:
    """``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|`` -> six digits, edges in that order."""
    ops = [tok.split("~")[0] for node in arch.strip("|").split("|+|") for tok in node.split("|")]
    return "".join(str(NB201_OPS.index(o)) for o in ops)


def main() -> None:
    with open(SRC / "hwnasbench_nb201_help.csv") as f, open(HERE / "nb201_cifar10_raspi4.csv", "w", newline="") as o:
        w = csv.writer(o)
        w.writerow(["arch_index", "arch_code", "raspi4_ms"])
        for r in csv.DictReader(f):
            w.writerow([r["arch_index"], nb201_code(r["arch_str"]), g(r["raspi4_latency_ms"])])
    with open(SRC / "hwnasbench_fbnet_cifar100_help5000.csv") as f, \
            open(HERE / "fbnet_cifar100_raspi4.csv", "w", newline="") as o:
        w = csv.writer(o)
        w.writerow(["arch_id", "op_idx", "raspi4_ms"])
        for r in csv.DictReader(f):
            w.writerow([r["arch_id"], r["op_idx"], g(r["raspi4_latency_ms"])])
    with open(SRC / "hwnasbench_fbnet_cifar100_lut_delta.csv") as f, \
            open(HERE / "fbnet_cifar100_lut_delta_raspi4.csv", "w", newline="") as o:
        w = csv.writer(o)
        w.writerow(["pos", "op", "delta_ms"])
        for r in csv.DictReader(f):
            if r["device"] == "raspi4":
                w.writerow([r["pos"], r["op"], g(r["delta_ms"])])
    (HERE / "hwnasbench_published_examples.csv").write_text((SRC / "hwnasbench_published_examples.csv").read_text())
    keep = ["source", "source_commit", "board", "cpu_mhz", "submitter", "system", "runtime", "precision",
            "benchmark", "mode", "model", "latency_ms", "energy_uj", "note", "results_path"]
    with open(SRC / "cortex_m7_published_latency.csv") as f, \
            open(HERE / "cortex_m7_published.csv", "w", newline="") as o:
        w = csv.DictWriter(o, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        for r in csv.DictReader(f):
            w.writerow(r)


if __name__ == "__main__":
    main()
