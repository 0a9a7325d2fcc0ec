"""``nas hardware``: device profiles, cost reports, host calibration, probe networks and fitting your device."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ._common import (
    Format,
    UsageError,
    check_out_dir,
    check_seed,
    emit,
    err,
    hardware_app,
    open_store,
    out,
    parse_options,
    parse_shape,
    read_arch_file,
    si,
)

#: Most classes of a probe network's classifier, and of a network costed by 'nas hardware cost'.
MAX_PROBE_CLASSES = 1000
MAX_CLASSES = 10_000
#: Most probe networks 'nas hardware calibrate' times (as 'nas hardware probe --n'), rounds per network, threads.
MAX_SPECS = 2000
MAX_ROUNDS = 1000
MAX_THREADS = 1024


@hardware_app.command("profiles")
def profiles_cmd(fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv")) -> None:
    """List device profiles (shipped, user-supplied in $NAS_HOME/devices, a calibrated host), with the
    runtime each describes and how well it predicted measurements it was not fitted to."""
    from objectives import DeviceError, list_devices, open_profile

    rows = []
    for name in list_devices():
        try:
            p = open_profile(name)  # a profile file that is a FIFO, a device or enormous: skipped, not a hang
        except DeviceError as e:
            err.print(f"warning: skipped: {' '.join(str(e).split())}", highlight=False, markup=False, soft_wrap=True)
            continue
        row: dict[str, Any] = {"name": name, "runtime": p.runtime or p.dtype, "dtype": p.dtype,
                               "latency_model": "operator-level" if p.opmodel else "roofline",
                               "validation": p.validation_summary(), "peak_macs_per_s": p.peak_macs_per_s,
                               "bandwidth_B_per_s": p.mem_bandwidth_bytes_per_s, "memory_bytes": p.memory_bytes,
                               "board_power_w": p.board_power_w, "pj_per_mac": p.energy_pj_per_mac,
                               "pj_per_byte": p.energy_pj_per_byte, "description": p.description}
        if fmt is Format.json:
            row["validations"] = [v.model_dump() for v in p.validation]
        rows.append(row)
    if fmt is Format.table:
        rows = [{k: r[k] for k in ("name", "runtime", "latency_model", "validation", "board_power_w", "memory_bytes")}
                for r in rows]
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
    from objectives import DeviceError, estimate_cost, open_profile, parse_budget
    from search_spaces import get_space, sample_spec

    shape = parse_shape(input_)
    check_seed(seed)
    if not 1 <= classes <= MAX_CLASSES:
        raise UsageError(f"--classes: got {classes}; accepted: 1 to {MAX_CLASSES:,}")
    try:
        profile = open_profile(device)  # a path that is a FIFO or /dev/zero: one line, at once
    except DeviceError as e:
        raise UsageError(" ".join(str(e).split()), field="device") from None
    if spec_file:
        arch = read_arch_file(spec_file, "spec")
    elif space:
        arch = sample_spec(get_space(space, input_shape=shape, **parse_options(option)), seed)
    else:
        raise UsageError("give --space NAME (see 'nas spaces') or --spec FILE")
    b = parse_budget(budget) if budget else None
    report = estimate_cost(arch, shape, classes, device=profile)
    if b is not None:
        b.check(report)  # a budgeted resource the profile does not define: one line, before any output
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
    specs: int = typer.Option(360, "--specs", help="number of probe networks to time (see 'nas hardware probe')"),
    rounds: int = typer.Option(20, "--rounds", "--repeats", help="timings per network, taken in interleaved rounds"),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: all cores; give a worker's --threads "
                                                        "to calibrate what a worker sees)"),
    name: str = typer.Option("host", "--name", help="profile name to write"),
    device: str = typer.Option("cpu", "--device", help="torch device to measure: cpu, cuda, auto"),
) -> None:
    """Time probe networks on this machine and write an operator-level profile ($NAS_HOME/devices/NAME.toml)."""
    from rich.progress import Progress

    from objectives import calibrate_host, default_calibration_set, save_device

    if not 16 <= specs <= MAX_SPECS:
        raise UsageError(f"--specs: got {specs}; accepted: 16 (the fewest the operator-level model is fitted to) to "
                         f"{MAX_SPECS:,} probe networks")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise UsageError(f"--rounds: got {rounds}; accepted: 1 to {MAX_ROUNDS:,}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads: got {threads}; accepted: 1 to {MAX_THREADS:,} CPU threads")
    _check_torch_device(device)
    check_profile_name(name)
    check_devices_dir()  # before minutes of timing
    pairs = default_calibration_set(specs)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as prog:
        task = prog.add_task(f"timing {len(pairs)} networks", total=rounds)
        res = calibrate_host(pairs, rounds=rounds, threads=threads, device=device, name=name,
                             progress=lambda done, total: prog.update(task, completed=done))
    path = save_device(res.profile)
    v = res.profile.validation[0]
    out.print(f"operator-level model fitted to {len(pairs)} probe networks ({rounds} rounds each): median |ln error| "
              f"{res.median_abs_log_error:.3f} on them; cross-validated tau {v.tau:.3f}, median |ln error| "
              f"{v.median_abs_ln_error:.3f}")
    out.print(f"wrote {path}")


def _check_torch_device(device: str) -> None:
    from objectives import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e), field="device") from None


def check_devices_dir() -> None:
    """Refuse, in one line and before any work, a ``$NAS_HOME/devices`` this process cannot write
    (read-only, a file in the way, under /proc, a name too long); nothing is created."""
    from objectives import check_out_dir, nas_home

    check_out_dir(nas_home() / "devices", None, what="$NAS_HOME/devices", error=UsageError,
                  accepted="accepted: a directory you may write (set $NAS_HOME to one)")


def check_profile_name(name: str) -> None:
    """A profile name is a file name: letters, digits, '.', '_', '-'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name or "") or name.endswith(".toml"):
        raise UsageError(f"profile name: got {name!r}; accepted: letters, digits, '.', '_', '-' (up to 64, no .toml)")


@hardware_app.command("probe")
def probe_cmd(
    to: str = typer.Option(..., "--to", help="directory to write the probe networks to (new or empty)"),
    n: int = typer.Option(60, "--n", help="number of probe networks"),
    seed: int = typer.Option(0, "--seed", help="seed of the probe set"),
    classes: int = typer.Option(10, "--classes", help="classifier width of the probes"),
) -> None:
    """Write probe networks (ONNX, fixed shapes) and a CSV manifest to time on your device; then 'nas hardware fit'."""
    from rich.progress import Progress

    from objectives import probe_set, write_probes

    check_out_dir(to)  # before the probes are made
    if not 8 <= n <= 2000:
        raise UsageError(f"--n: expected 8 to 2000 probe networks, got {n}")
    if not 2 <= classes <= MAX_PROBE_CLASSES:
        raise UsageError(f"--classes: got {classes}; accepted: 2 to {MAX_PROBE_CLASSES:,} (the probes' classifier "
                         "width)")
    check_seed(seed)
    probes = probe_set(n, seed, num_classes=classes)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as prog:
        task = prog.add_task(f"exporting {n} probes", total=n)
        path = write_probes(Path(to), probes, progress=lambda done, total: prog.update(task, completed=done))
    out.print(f"wrote {n} probe networks to {Path(to) / 'onnx'} and the manifest {path}")
    out.print(f"time each on your device (batch 1), fill latency_ms (ms) in {path}, then run "
              f"'nas hardware fit NAME --measurements {path}'")


@hardware_app.command("fit")
def fit_cmd(
    name: str = typer.Argument(..., help="name of the profile to write"),
    measurements: str = typer.Option(..., "--measurements", help="the filled probes.csv of 'nas hardware probe', "
                                     "or a per-layer lookup table (operator,cin,h,w,cout,kernel,stride,groups,"
                                     "latency_ms)"),
    probes: str = typer.Option(None, "--probes", help="the probe directory (default: the measurement file's)"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="fit without the probes that have no latency"),
    dtype: str = typer.Option("float32", "--dtype", help="precision the device ran: float32, float16, bfloat16, int8"),
    runtime: str = typer.Option("", "--runtime", help="the runtime that timed them, for the record (e.g. TFLite 2.14)"),
    folds: int = typer.Option(5, "--folds", help="cross-validation folds"),
    storage: str = typer.Option(None, "--storage", help="study database to store the profile in (default $NAS_STORAGE, "
                                                        "or ./nas.db when it exists)"),
    no_store: bool = typer.Option(False, "--no-store", help="write $NAS_HOME/devices/NAME.toml only"),
) -> None:
    """Fit a device profile to your measurements; write it to $NAS_HOME/devices and the study database."""
    from objectives import fit_measurements, get_device, save_device, shipped_profile_path

    check_profile_name(name)
    if shipped_profile_path(name) is not None:
        raise UsageError(f"profile name: {name!r} is a shipped profile; choose another name")
    if not 2 <= folds <= 20:
        raise UsageError(f"--folds: expected 2 to 20, got {folds}")
    url = None if no_store else storage or os.environ.get("NAS_STORAGE")
    if not no_store and url is None and os.path.exists("nas.db"):
        url = "sqlite:///nas.db"
    check_devices_dir()
    # The database is opened before anything is written: a mistyped --storage writes nothing.
    store = open_store(url, mode="existing") if url is not None else None
    res = fit_measurements(name, Path(measurements), probes_dir=Path(probes) if probes else None,
                           allow_missing=allow_missing, dtype=dtype, runtime=runtime, folds=folds)
    toml = res.profile.to_toml()
    # Everything checked first; the profile goes into the database before its file takes its name, so a
    # database that refuses it (read-only, damaged) leaves no $NAS_HOME/devices/NAME.toml behind either.
    path = save_device(res.profile, before_commit=None if store is None else
                       (lambda: store.save_device_profile(name, toml)))
    what = "probe networks" if res.kind == "probes" else "layers of the lookup table"
    out.print(f"fitted to {res.n} {what}: median |ln error| {res.fit_median_abs_ln_error:.3f}; {folds}-fold "
              f"cross-validated tau {res.cv_tau:.3f}, median |ln error| {res.cv_median_abs_ln_error:.3f}")
    out.print(f"wrote {path}")
    get_device(str(path))  # the written file reads back
    if store is None:
        if not no_store:
            out.print("not stored in a study database (no ./nas.db; give --storage URL so that workers on other "
                      "hosts cost with it)")
        return
    out.print(f"stored profile {name!r} in {store.display_url(store.url)}")
