"""``nas hardware``: device profiles, cost reports, host calibration."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table

from ._common import Format, UsageError, emit, err, hardware_app, out, parse_options, parse_shape, si


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
    check: bool = typer.Option(False, "--check", help="also count MACs and parameters of the built model with thop "
                                                      "(the reference the analytic model is tested against)"),
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
        arch = ArchSpec.from_json(text)
    elif space:
        arch = sample_spec(get_space(space, input_shape=shape, **parse_options(option)), seed)
    else:
        raise UsageError("give --space NAME (see 'nas spaces') or --spec FILE")
    b = parse_budget(budget) if budget else None
    report = estimate_cost(arch, shape, classes, device=device)
    reference = None
    if check:
        from objectives import reference_count
        from search_spaces import build_model

        reference = reference_count(build_model(arch, shape, classes), shape)
    if fmt is Format.json:
        d = report.to_dict()
        d["spec"] = arch.to_dict()
        if reference is not None:
            d["reference"] = {**reference, "agrees": _agrees(report, reference)}
        if b:
            d["budget"] = {"text": str(b), "violations": b.check(report), "hw_cost": b.hw_cost(report)}
        sys.stdout.write(json.dumps(d, indent=2) + "\n")
        return
    rows = [{"layer": r.name, "kind": r.kind, "in": r.in_shape, "out": r.out_shape, "MACs": r.macs,
             "params": r.params, "traffic_B": r.traffic_bytes, "live_B": r.live_bytes,
             "latency_ms": r.latency_ms, "energy_uJ": r.energy_uj} for r in report.rows]
    emit(rows, fmt, f"{arch.family} {arch.short_hash} on {report.device}, input {input_}",
         {k: lambda v: si(float(v)) for k in ("MACs", "params", "traffic_B", "live_B")})
    if fmt is Format.table:
        tot = Table(title="totals")
        tot.add_column("resource")
        tot.add_column("value", justify="right")
        for k, v in report.totals.items():
            tot.add_row(k, si(v) if k not in ("latency_ms", "energy_uj") else f"{v:.4g}")
        out.print(tot)
        if b:
            over = b.check(report)
            state = "[green]within budget[/]" if not over else "[red]over budget: " + ", ".join(
                f"{k} +{x:.0%}" for k, x in over.items()) + "[/]"
            out.print(f"budget {b}: {state}; hw_cost = {b.hw_cost(report):.3f}")
    if reference is not None and fmt is Format.table:
        verdict = "[green]agree[/]" if _agrees(report, reference) else "[red]DISAGREE (a bug: please report it)[/]"
        out.print(f"thop reference: MACs {si(reference['macs'])}, params {si(reference['params'])}; analytic: MACs "
                  f"{si(report['macs'])}, params {si(report['params'])}: {verdict}")
    if reference is not None and not _agrees(report, reference):
        raise typer.Exit(1)


def _agrees(report: Any, reference: dict[str, float]) -> bool:
    return bool(reference["macs"] == report["macs"] and reference["params"] == report["params"])


@hardware_app.command("calibrate")
def calibrate_cmd(
    specs: int = typer.Option(24, "--specs", help="number of sampled specs to time"),
    repeats: int = typer.Option(15, "--repeats", help="timed runs per arch (median)"),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: all cores)"),
    name: str = typer.Option("host", "--name", help="profile name to write"),
    device: str = typer.Option("cpu", "--device", help="torch device to measure: cpu, cuda, auto"),
) -> None:
    """Measure this machine and write a calibrated roofline profile ($NAS_HOME/devices/NAME.toml)."""
    from rich.progress import Progress

    from objectives import calibrate_host, default_calibration_set, save_device

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
