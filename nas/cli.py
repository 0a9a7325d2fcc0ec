"""The ``nas`` command line (Typer + Rich).

Bad input exits with code 2 and one line on stderr naming what was wrong and what is
accepted; tracebacks are reserved for bugs. Heavy imports happen inside the commands, so
``nas --help`` stays fast.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="lightnas: neural architecture search for lightweight CNNs under hardware budgets.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
hardware_app = typer.Typer(help="Device profiles, cost reports and host calibration.", no_args_is_help=True)
app.add_typer(hardware_app, name="hardware")

out = Console()
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2), not a bug."""
    from objectives import BudgetError, DeviceError
    from search_spaces import SpaceError, SpecError

    errors: list[type[BaseException]] = [UsageError, SpecError, SpaceError, BudgetError, DeviceError]
    try:
        from nas._errors import NasError

        errors.append(NasError)
    except ImportError:  # pragma: no cover - before issue 3
        pass
    return tuple(errors)


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"1x28x28"`` -> ``(1, 28, 28)``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise UsageError(f"--input: expected CxHxW with positive integers, e.g. 1x28x28 or 3x32x32; got {text!r}")
    return vals  # type: ignore[return-value]


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["max_depth=2", "widths=8,16"]`` -> ``{"max_depth": 2, "widths": (8, 16)}``."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option: expected key=value, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        opts[key.strip()] = value
    return opts


def emit(rows: list[dict[str, Any]], fmt: Format, title: str | None = None,
         formatters: dict[str, Callable[[Any], str]] | None = None) -> None:
    """Print rows as a Rich table, JSON or CSV."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cols = list(rows[0]) if rows else []
    if fmt is Format.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    table = Table(title=title)
    for c in cols:
        table.add_column(c, overflow="fold")
    fmts = formatters or {}
    for r in rows:
        table.add_row(*[fmts.get(c, _fmt)(r[c]) for c in cols])
    out.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else str(list(v))
    return "" if v is None else str(v)


def si(v: float) -> str:
    """Human number: 1.23M, 45.6k."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.4g}"


# --------------------------------------------------------------------------------------- spaces
@app.command("spaces")
def spaces_cmd(fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv")) -> None:
    """List the registered search spaces and their options."""
    from search_spaces import list_spaces, space_class

    rows = []
    for name in list_spaces():
        cls = space_class(name)
        opts = ", ".join(f"{k}={_fmt(d) if not isinstance(d, tuple) else list(d)}" for k, d, _ in cls.option_help())
        rows.append({"name": name, "description": cls.description, "options": opts})
    emit(rows, fmt, "search spaces")


# --------------------------------------------------------------------------------------- hardware
@hardware_app.command("profiles")
def profiles_cmd(fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv")) -> None:
    """List device profiles (shipped, user-supplied in $NAS_HOME/devices, and a calibrated host)."""
    from objectives import get_device, list_devices

    rows = []
    for name in list_devices():
        p = get_device(name)
        rows.append({"name": name, "dtype": p.dtype, "peak_macs_per_s": p.peak_macs_per_s,
                     "bandwidth_B_per_s": p.mem_bandwidth_bytes_per_s, "memory_bytes": p.memory_bytes,
                     "pj_per_mac": p.energy_pj_per_mac, "pj_per_byte": p.energy_pj_per_byte,
                     "description": p.description})
    emit(rows, fmt, "device profiles", {k: si for k in ("peak_macs_per_s", "bandwidth_B_per_s", "memory_bytes")})


@hardware_app.command("cost")
def cost_cmd(
    space: str = typer.Option(None, "--space", help="search space to sample from (see 'nas spaces')"),
    seed: int = typer.Option(0, "--seed", help="seed of the random sample"),
    input_: str = typer.Option("3x32x32", "--input", help="input shape CxHxW"),
    classes: int = typer.Option(10, "--classes", help="number of classes"),
    device: str = typer.Option("rpi4", "--device", help="device profile name or .toml path"),
    option: list[str] = typer.Option([], "--option", help="space option key=value (repeatable)"),
    spec_file: str = typer.Option(None, "--spec", help="an ArchSpec JSON file instead of sampling"),
    budget: str = typer.Option(None, "--budget", help="check against a budget, e.g. 'flops<=5M params<=100k'"),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
) -> None:
    """Sample one architecture (or read --spec) and print its per-layer cost table."""
    from objectives import estimate_cost, parse_budget
    from search_spaces import ArchSpec, get_space, sample_spec

    shape = parse_shape(input_)
    if spec_file:
        try:
            with open(spec_file) as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--spec: cannot read {spec_file} ({e.strerror})") from None
        spec = ArchSpec.from_json(text)
    elif space:
        spec = sample_spec(get_space(space, input_shape=shape, **parse_options(option)), seed)
    else:
        raise UsageError("give --space NAME (see 'nas spaces') or --spec FILE")
    b = parse_budget(budget) if budget else None
    report = estimate_cost(spec, shape, classes, device=device)
    if fmt is Format.json:
        d = report.to_dict()
        d["spec"] = spec.to_dict()
        if b:
            d["budget"] = {"text": str(b), "violations": b.check(report), "hw_cost": b.hw_cost(report)}
        sys.stdout.write(json.dumps(d, indent=2) + "\n")
        return
    rows = [{"layer": r.name, "kind": r.kind, "in": r.in_shape, "out": r.out_shape, "MACs": r.macs,
             "params": r.params, "traffic_B": r.traffic_bytes, "live_B": r.live_bytes,
             "latency_ms": r.latency_ms, "energy_uJ": r.energy_uj} for r in report.rows]
    emit(rows, fmt, f"{spec.family} {spec.short_hash} on {report.device}, input {input_}",
         {k: lambda v: si(float(v)) for k in ("MACs", "params", "traffic_B", "live_B")})
    if fmt is Format.table:
        tot = Table(title="totals")
        tot.add_column("resource")
        tot.add_column("value", justify="right")
        for k, v in report.totals.items():
            tot.add_row(k, si(v) if k not in ("latency_ms", "energy_uj") else f"{v:.4g}")
        out.print(tot)
        if b:
            v = b.check(report)
            state = "[green]within budget[/]" if not v else "[red]over budget: " + ", ".join(
                f"{k} +{x:.0%}" for k, x in v.items()) + "[/]"
            out.print(f"budget {b}: {state}; hw_cost = {b.hw_cost(report):.3f}")


@hardware_app.command("calibrate")
def calibrate_cmd(
    specs: int = typer.Option(24, "--specs", help="number of sampled specs to time"),
    repeats: int = typer.Option(15, "--repeats", help="timed runs per spec (median)"),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: all cores)"),
    name: str = typer.Option("host", "--name", help="profile name to write"),
    device: str = typer.Option("cpu", "--device", help="torch device to measure: cpu, cuda, auto"),
) -> None:
    """Measure this machine and write a calibrated roofline profile ($NAS_HOME/devices/NAME.toml)."""
    from rich.progress import Progress

    from objectives import calibrate_host, save_device
    from objectives._latency import default_calibration_set

    if specs < 3:
        raise UsageError(f"--specs: need at least 3 specs to fit 3 numbers, got {specs}")
    if repeats < 1:
        raise UsageError(f"--repeats: must be >= 1, got {repeats}")
    pairs = default_calibration_set(specs)
    with Progress(console=err, transient=True) as prog:
        task = prog.add_task("timing specs", total=len(pairs))
        res = calibrate_host(pairs, repeats=repeats, threads=threads, device=device, name=name,
                             progress=lambda done, total: prog.update(task, completed=done))
    path = save_device(res.profile)
    p = res.profile
    out.print(f"peak {si(p.peak_macs_per_s)}MAC/s, bandwidth {si(p.mem_bandwidth_bytes_per_s)}B/s, "
              f"overhead {p.layer_overhead_us:.1f} us/layer; median |log error| {res.median_abs_log_error:.3f} "
              f"over {len(pairs)} specs")
    out.print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nas`` console script."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="nas")
    except user_errors() as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
