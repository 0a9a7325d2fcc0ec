"""Helpers shared by the benchmark scripts: machine description and markdown tables."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_header(title: str, argv: Sequence[str]) -> str:
    import torch

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f"## {title}\n\n"
            f"- command: `python {' '.join(argv)}`\n"
            f"- date: {now}\n"
            f"- machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
            f"(torch threads {torch.get_num_threads()}), Python {platform.python_version()}\n"
            f"- load average at start: {loadavg()}\n")


def fmt(v: Any, digits: int = 4) -> str:
    """Floats with ``digits`` significant digits; everything else as ``str``."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in r) + " |")
    return "\n".join(out)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = float(statistics.fmean(xs))
    s = float(statistics.stdev(xs)) if len(xs) > 1 else 0.0
    return m, s
