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
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="lightnas: neural architecture search for lightweight CNNs under hardware budgets.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
hardware_app = typer.Typer(help="Device profiles, cost reports and host calibration.", no_args_is_help=True)
app.add_typer(hardware_app, name="hardware")

out = Console()
if not out.is_terminal:  # pipes and files: wide tables rather than folded 80-column ones
    out = Console(width=160)
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class UsageError(ValueError):
    """Bad command-line input detected by the CLI itself."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2), not a bug."""
    from nas._errors import NasError
    from objectives import BudgetError, DataError, DeviceError
    from search_spaces import SpaceError, SpecError
    from storage import StorageError

    return (UsageError, SpecError, SpaceError, BudgetError, DeviceError, DataError, StorageError, NasError)


def say_error(message: object) -> None:
    """``error: <message>`` on stderr, one line (the message is text, never markup)."""
    from rich.markup import escape

    text = " ".join(str(message).splitlines())  # one line, whatever the message
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)



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
            over = b.check(report)
            state = "[green]within budget[/]" if not over else "[red]over budget: " + ", ".join(
                f"{k} +{x:.0%}" for k, x in over.items()) + "[/]"
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


# --------------------------------------------------------------------------------------- studies
study_app = typer.Typer(help="Create, run, list, show and delete studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")

STORAGE_HELP = "database URL (default $NAS_STORAGE or sqlite:///nas.db); postgresql+psycopg://... for many workers"


#: The database the command opened, named by a database error's one line.
_opened: list[str] = []


def open_store(url: str | None, mode: str = "existing"):  # -> Store
    """The command's store. Every command but creation opens an existing lightnas database only
    (``mode="existing"``): a mistyped path is refused, never created."""
    from storage import Store

    store = Store(url, mode=mode)
    _opened.append(Store.display_url(store.url))
    return store


@study_app.command("create")
def study_create(
    name: str = typer.Argument(None, help="study name"),
    space: str = typer.Option(None, "--space", help="search space (see 'nas spaces')"),
    data: str = typer.Option(None, "--data", help="digits | idx:DIR | cifar10:DIR | npz:FILE"),
    budget: str = typer.Option(None, "--budget", help="e.g. 'flops<=5M params<=100k peak_mem<=256KiB'"),
    objectives: str = typer.Option(None, "--objectives", help="comma list, default accuracy,hw_cost"),
    sampler: str = typer.Option(None, "--sampler", help="tpe | nsga2 | random"),
    pruner: str = typer.Option(None, "--pruner", help="none | pareto (Pareto-aware early stopping, any objectives) | "
                                                      "median | asha | hyperband (objective accuracy only)"),
    es_margin: float = typer.Option(None, "--es-margin", help="--pruner pareto: how much better (validation "
                                                              "accuracy) a peer of no higher cost must be (0.1)"),
    es_rungs: str = typer.Option(None, "--es-rungs", help="--pruner pareto: comma list of epochs to compare at "
                                                          "(default E/9,E/3 of E epochs)"),
    inherit_weights: bool = typer.Option(None, "--inherit-weights/--no-inherit-weights",
                                         help="start each network from the weights of the most overlapping trained "
                                              "architecture of the study (network morphism)"),
    enqueue: list[str] = typer.Option([], "--enqueue", help="an ArchSpec JSON file (spec.json of 'nas export') to "
                                                            "evaluate first (repeatable)"),
    warm_start: str = typer.Option(None, "--warm-start", help="evaluate the Pareto front of this study first "
                                                              "(same database; members that do not fit are skipped)"),
    seed: int = typer.Option(None, "--seed"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs per trial (fidelity)"),
    train_fraction: float = typer.Option(None, "--train-fraction", help="share of training data per trial"),
    trials: int = typer.Option(None, "--trials", help="target: networks evaluated within the budget (over-budget "
                                                       "samples are rejected and do not count)"),
    fit_space: bool = typer.Option(None, "--fit-space/--no-fit-space",
                                   help="scale the space to the budget when too little of it fits (TinyNAS; on by "
                                        "default; your own --option values are kept)"),
    fit_resolution: bool = typer.Option(None, "--fit-resolution/--no-fit-resolution",
                                        help="let budget fitting also resize the inputs (TinyNAS's resolution knob; "
                                             "off by default: your images are kept as they are)"),
    input_size: int = typer.Option(None, "--input-size", help="resize inputs to this short side in pixels"),
    device: str = typer.Option(None, "--device", help="torch device: auto | cpu | cuda"),
    cost_device: str = typer.Option(None, "--cost-device", help="device profile for latency/energy"),
    option: list[str] = typer.Option([], "--option", help="space option key=value (repeatable)"),
    config: str = typer.Option(None, "--config", help="a study spec TOML file"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Create a study (once); then run it with 'nas study run NAME'."""
    from nas._study import check_name_free, describe_plan, load_spec_file, make_spec, plan_study
    from nas._warm import create_warm_started, plan_warm_start, read_spec_file

    fields: dict[str, Any] = {"name": name, "space": space, "data": data, "budget": budget, "sampler": sampler,
                              "pruner": pruner, "seed": seed, "trials": trials, "device": device,
                              "cost_device": cost_device}
    if objectives is not None:
        fields["objectives"] = [o.strip() for o in objectives.split(",") if o.strip()]
    if inherit_weights is not None:
        fields["inherit_weights"] = inherit_weights
    if fit_space is not None:
        fields["fit_space"] = fit_space
    if fit_resolution is not None:
        fields["fit_resolution"] = fit_resolution
    if input_size is not None:
        fields["input_size"] = input_size
    early: dict[str, Any] = {}
    if es_margin is not None:
        early["margin"] = es_margin
    if es_rungs is not None:
        try:
            early["rungs"] = [int(r) for r in es_rungs.split(",") if r.strip()]
        except ValueError:
            raise UsageError(f"--es-rungs: expected a comma list of epochs, e.g. 3,7; got {es_rungs!r}") from None
    if early:
        fields["early_stop"] = early
    if option:
        fields["space_options"] = parse_options(option)
    fid = {k: v for k, v in {"epochs": epochs, "train_fraction": train_fraction}.items() if v is not None}
    if config:
        spec = load_spec_file(config, **{k: v for k, v in fields.items() if v is not None})
        if fid:
            spec = make_spec(**{**spec.model_dump(), "fidelity": {**spec.fidelity.model_dump(), **fid}})
    else:
        if not name:
            raise UsageError("give a study NAME (or --config FILE)")
        if not space:
            raise UsageError("--space is required; accepted: see 'nas spaces'")
        if fid:
            fields["fidelity"] = fid
        spec = make_spec(**{k: v for k, v in fields.items() if v is not None})
    specs = [(path, read_spec_file(path)) for path in enqueue]
    store = open_store(storage, mode="create")
    check_name_free(spec.name, store)
    study_plan = plan_study(spec)  # budget first: refused, warned or fitted before anything is written
    spec = study_plan.spec
    plan = None
    if enqueue or warm_start:
        plan = plan_warm_start(spec, store, specs=specs, from_study=warm_start)  # checked before anything is written
    create_warm_started(spec, store, plan, study_plan=study_plan)
    out.print(f"created study [bold]{spec.name}[/] ({spec.space} on {spec.data}, budget {spec.budget or 'none'}, "
              f"target {spec.trials} networks within budget) in {store.url}")
    for line in describe_plan(study_plan):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if plan is not None:
        out.print(f"warm start: {len(plan.enqueued)} architecture(s) queued to run first"
                  + (f", {len(plan.skipped)} skipped" if plan.skipped else ""))
        for src, reason in plan.skipped:
            out.print(f"  skipped {src}: {reason}", highlight=False, markup=False)


def _progress_bar(quiet: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if quiet:
        return None
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("within budget  rejected {task.fields[rejected]}  front {task.fields[front]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err)


def run_with_progress(name: str, store, trials: int | None, workers: int, timeout: float | None, quiet: bool,
                      backend: str = "local", ray_options=None):
    """Run ``name`` on the local workers or (``backend="ray"``) on Ray Tune, with a progress bar."""
    from nas._runner import check_run

    # Every argument is checked before a bar is shown or the target written: one line, exit 2.
    check_run(name, store, trials=trials, workers=workers if backend != "ray" else 1, timeout=timeout)
    if backend == "ray":
        from nas._ray import run_ray

        def runner(on_progress=None):
            return run_ray(name, store, trials=trials, options=ray_options, timeout=timeout,
                           on_progress=on_progress,
                           say=lambda msg: err.print(msg, highlight=False, soft_wrap=True, markup=False))
    else:
        from nas._runner import run_study

        def runner(on_progress=None):
            return run_study(name, store, trials=trials, workers=workers, timeout=timeout, on_progress=on_progress)
    bar = _progress_bar(quiet)
    if bar is None:
        return runner()
    with bar:
        task = bar.add_task(name, total=trials or store.get_study(name).target_trials, rejected=0, front=0)

        def update(p) -> None:
            bar.update(task, completed=p.finished, total=p.target, rejected=p.rejected, front=p.pareto)

        return runner(update)


@study_app.command("run")
def study_run(
    name: str = typer.Argument(..., help="study name"),
    trials: int = typer.Option(None, "--trials", help="target: networks evaluated within the budget in total (raises "
                                                       "the stored one; rejected over-budget samples do not count)"),
    workers: int = typer.Option(None, "--workers", help="local worker processes (default 1; --backend local)"),
    timeout: float = typer.Option(None, "--timeout", help="stop starting trials after S seconds"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    backend: str = typer.Option("local", "--backend", help="local (worker processes) | ray (Ray Tune)"),
    address: str = typer.Option(None, "--address", help="--backend ray: a running Ray cluster (default: local Ray)"),
    max_concurrent: int = typer.Option(None, "--max-concurrent",
                                       help="--backend ray: trials at once (default: CPUs // cpus per trial)"),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial", help="--backend ray: CPUs (torch threads), 1"),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", help="--backend ray: GPUs per trial, 0"),
) -> None:
    """Run a study until it has its target of complete trials; rerun to resume."""
    from nas._ray import RayInterrupted, check_backend_options

    backend = backend.strip().lower()
    ray_options = check_backend_options(backend, address=address, max_concurrent=max_concurrent,
                                        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                        workers=workers)
    store = open_store(storage)
    try:
        p = run_with_progress(name, store, trials, 1 if workers is None else workers, timeout, quiet, backend,
                              ray_options)
    except RayInterrupted as e:
        err.print(f"{name}: {e}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        from nas._runner import progress

        p = progress(name, store)
        err.print(f"{name}: interrupted at {p.finished}/{p.target} networks within budget; the running trial was "
                  "failed and queued again; rerun the same command to resume", highlight=False, soft_wrap=True,
                  markup=False)
        raise typer.Exit(130) from None
    out.print(f"{name}: {p.summary()}; Pareto front: {p.pareto} architectures")


@study_app.command("enqueue")
def study_enqueue(
    name: str = typer.Argument(..., help="study name"),
    spec: list[str] = typer.Option([], "--spec", help="an ArchSpec JSON file (spec.json of 'nas export'); "
                                                      "repeatable"),
    from_study: str = typer.Option(None, "--from", help="the Pareto front of this study (same database)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Queue known architectures to be evaluated next (warm start of an existing study)."""
    from nas._warm import read_spec_file, warm_start

    if not spec and not from_study:
        raise UsageError("give --spec FILE (repeatable) and/or --from STUDY")
    from nas._worker import finished

    specs = [(path, read_spec_file(path, flag="--spec")) for path in spec]
    store = open_store(storage)
    plan = warm_start(name, store, specs=specs, from_study=from_study)
    out.print(f"{name}: {len(plan.enqueued)} architecture(s) queued to run next"
              + (f", {len(plan.skipped)} skipped" if plan.skipped else ""))
    row = store.get_study(name)
    if plan.enqueued and row is not None and finished(store, name) >= row.target_trials:
        out.print(f"note: {name} has met its target ({row.target_trials}); raise it ('nas study run {name} --trials "
                  "N' or PATCH target) for the queued architectures to run", highlight=False, markup=False)
    for src, reason in plan.skipped:
        out.print(f"  skipped {src}: {reason}", highlight=False, markup=False)


@study_app.command("list")
def study_list(fmt: Format = typer.Option(Format.table, "--format"),
               storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """List studies with their progress."""
    from nas._runner import progress
    from nas._study import list_studies

    store = open_store(storage)
    rows = []
    for entry in list_studies(store):
        if entry.spec is None:  # listed with the reason, so one bad row never hides the others
            counts = store.study_counts(entry.name)
            rows.append({"name": entry.name, "space": None, "data": None, "budget": None,
                         "within_budget": counts["COUNTED"], "target": entry.target, "rejected": counts["REJECTED"],
                         "front": None, "unreadable": entry.unreadable})
            continue
        spec = entry.spec
        p = progress(spec.name, store, entry.target)
        rows.append({"name": spec.name, "space": spec.space, "data": spec.data, "budget": spec.budget,
                     "within_budget": p.finished, "target": entry.target, "rejected": p.rejected, "front": p.pareto,
                     "unreadable": None})
    if fmt is not Format.json and not any(r["unreadable"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "unreadable"} for r in rows]
    emit(rows, fmt, "studies")


@study_app.command("show")
def study_show(name: str = typer.Argument(...), fmt: Format = typer.Option(Format.table, "--format"),
               storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Spec, progress, trial counts by state, and the best architecture of a study."""
    import optuna

    from nas._pareto import pareto_rows
    from nas._runner import progress
    from nas._study import get_study_spec, study_info

    store = open_store(storage)
    spec = get_study_spec(name, store)
    info = study_info(name, store)
    p = progress(name, store)
    trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        key = t.user_attrs.get("status") or t.state.name.lower()
        if t.state.name != "COMPLETE":
            key = t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    front = pareto_rows(name, store, with_test=False)
    best = max(front, key=lambda r: r["accuracy"], default=None)
    doc = {"spec": spec.model_dump(), "target": p.target, "within_budget": p.finished, "rejected": p.rejected,
           "complete": p.complete, "counts": states, "pareto_size": p.pareto, "best": best,
           "feasibility": info.get("feasibility"), "fit": info.get("fit"),
           "target_converted": info.get("target_converted")}
    if fmt is Format.json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    emit([{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
          for k, v in spec.model_dump().items()], Format.table, f"study {name}")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
    out.print(f"progress: {p.summary()}; trials by status: {counts}", highlight=False)
    from nas._study import StudyPlan, describe_plan

    for line in describe_plan(StudyPlan(spec, info)):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    conv = info.get("target_converted")
    if conv:
        out.print(f"target converted on upgrade (schema 4: only networks within budget count): {conv['old_target']} "
                  f"trials with {conv['old_finished']} finished -> {conv['new_target']} networks with "
                  f"{conv['counted']} evaluated", highlight=False, markup=False, soft_wrap=True)
    if best:
        out.print(f"best: trial {best['trial']} ({best['spec_hash']}), accuracy {best['accuracy']:.4f}, "
                  f"flops {si(best['cost'].get('flops', 0))}, params {si(best['cost'].get('params', 0))}")


@study_app.command("delete")
def study_delete(name: str = typer.Argument(...), yes: bool = typer.Option(False, "--yes", help="confirm"),
                 storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Delete a study and its trials (architectures and evaluations stay for reuse)."""
    from nas._study import check_study_exists, delete_study

    store = open_store(storage)
    check_study_exists(name, store)  # a study whose stored spec no longer reads can still be deleted
    if not yes:
        raise UsageError(f"deleting study {name!r} removes its trials; add --yes to confirm")
    delete_study(name, store)
    out.print(f"deleted study {name}")


# --------------------------------------------------------------------------------------- queries
PARETO_COLS = ("trial", "spec_hash", "accuracy", "test_accuracy", "hw_cost", "flops", "params",
               "peak_activation_bytes", "latency_ms")


@app.command("worker")
def worker_cmd(
    names: list[str] = typer.Argument(None, help="studies to work on (default: any study with work left)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    threads: int = typer.Option(None, "--threads", envvar="NAS_WORKER_THREADS",
                                help="CPU threads for training (default: all cores; with K workers on one host "
                                     "use cores/K)"),
    heartbeat: int = typer.Option(10, "--heartbeat", help="seconds between heartbeats; a trial silent for 3x this "
                                                          "is failed and retried"),
    until_done: bool = typer.Option(False, "--until-done", help="exit once the studies have met their targets "
                                                                "instead of waiting for more work"),
    poll_max: float = typer.Option(30.0, "--poll-max", help="longest wait (s) between polls when there is no work"),
    connect_wait: float = typer.Option(120.0, "--connect-wait", help="how long (s) to wait for the database at "
                                                                     "start"),
    quiet: bool = typer.Option(False, "--quiet", help="log warnings only"),
    jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="also run queued refinement jobs (requested through "
                                                             "the HTTP API or 'nas refine --queue'), before trials"),
) -> None:
    """A long-running worker: runs trials of studies in the database until stopped.

    Without NAME it takes any study whose target is not met, oldest first, and waits (polling
    with backoff) when there is none. Queued refinement jobs of those studies go first (--no-jobs:
    trials only). SIGTERM/SIGINT: the running trial (or job) is finished, or stopped at its next
    epoch and queued again, then the worker exits 0 (a second signal aborts).
    """
    import logging
    import signal
    import threading

    from nas._worker import run_worker, wait_for_database
    from storage import Store, normalize_url

    if heartbeat < 1:
        raise UsageError(f"--heartbeat: must be >= 1 second, got {heartbeat}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    if poll_max < 0.1:
        raise UsageError(f"--poll-max: must be >= 0.1 seconds, got {poll_max}")
    url = normalize_url(storage)  # a malformed URL fails now, not after waiting
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from nas._study import get_study_spec

    store = wait_for_database(lambda: Store(url, mode="serve"), "connecting", max_wait=connect_wait)
    assert isinstance(store, Store)
    try:
        for n in names or ():
            get_study_spec(n, store)  # unknown study: one line naming the studies there, exit 2
    finally:
        store.close()
    stop = threading.Event()
    log = logging.getLogger("nas.worker")

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: finishing the running trial (stopping it at its next epoch), then exiting",
                    signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("worker started on %s (%s)", Store.display_url(url), ", ".join(names) if names else "all studies")
    # Samplers are seeded with study seed + worker: the process id keeps workers from proposing
    # the same sequence (a single-process `nas study run` stays reproducible with worker 0).
    stats = run_worker(names or None, url, until_done=until_done, threads=threads, stop=stop, heartbeat=heartbeat,
                       poll_max=poll_max, worker=os.getpid() % 100_000, jobs=jobs)
    log.info("worker exiting after %d trials (%s)%s", stats.trials,
             ", ".join(f"{k.lower()} {v}" for k, v in sorted(stats.by_state.items())) or "none",
             f" and {sum(stats.jobs.values())} jobs ({', '.join(f'{k} {v}' for k, v in sorted(stats.jobs.items()))})"
             if stats.jobs else "")


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    insecure: bool = typer.Option(False, "--insecure", help="accept writes without a token (only when "
                                                            "NAS_API_TOKEN is unset; never on a shared network)"),
    read_only: bool = typer.Option(False, "--read-only", help="refuse every write (403); needs no token"),
    protect_reads: bool = typer.Option(False, "--protect-reads", envvar="NAS_API_PROTECT_READS",
                                       help="reads need a token too (NAS_API_TOKEN or NAS_API_READ_TOKEN)"),
    max_body: int = typer.Option(1 << 20, "--max-body", help="largest request body in bytes (413 above)"),
    data_root: list[str] = typer.Option([], "--data-root", help="directory under which studies may read idx:, "
                                                                "cifar10: and npz: data (repeatable; default: only "
                                                                "digits); also $NAS_API_DATA_ROOT"),
    connect_wait: float = typer.Option(60.0, "--connect-wait", help="how long (s) to wait for the database at start"),
    log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug"),
) -> None:
    """The HTTP API (FastAPI): studies, Pareto queries, trials, exports, refinement requests.

    Writes need 'Authorization: Bearer TOKEN' with a token of $NAS_API_TOKEN (comma-separated,
    at least 16 characters each); $NAS_API_READ_TOKEN holds read-only tokens. Without a write
    token the server starts only with --read-only or --insecure. The API never trains: workers
    ('nas worker') run the trials and refinements it queues. /docs has the OpenAPI page.
    """
    import logging

    from nas._api import ApiSettings, create_app
    from nas._worker import wait_for_database
    from storage import Store, normalize_url

    if not 0 < port < 65536:
        raise UsageError(f"--port: must be 1..65535, got {port}")
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level.lower() not in levels:
        raise UsageError(f"--log-level: must be one of {', '.join(levels)}, got {log_level!r}")
    url = normalize_url(storage)
    settings = ApiSettings.from_env(storage=url, insecure=insecure or None, read_only=read_only or None,
                                    protect_reads=protect_reads or None, max_body_bytes=max_body,
                                    data_roots=tuple(data_root) or None).check()
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    store = wait_for_database(lambda: Store(url, mode="serve"), "connecting", max_wait=connect_wait)
    assert isinstance(store, Store)
    mode = ("read-only" if settings.read_only else "INSECURE: anyone may write" if settings.insecure
            else f"{len(settings.tokens)} write token(s)")
    err.print(f"lightnas API on http://{host}:{port} ({Store.display_url(url)}; {mode}); docs at /docs",
              highlight=False, soft_wrap=True, markup=False)
    # The access log prints request lines only; tokens travel in the Authorization header, never logged.
    uvicorn.run(create_app(settings, store), host=host, port=port, log_level=log_level.lower(), access_log=True,
                proxy_headers=False, server_header=False)


@app.command("pareto")
def pareto_cmd(
    name: str = typer.Argument(..., help="study name"),
    where: str | None = typer.Option(None, "--where", help="filter, e.g. 'flops<=1M accuracy>=0.95'"),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    include_refined: Annotated[bool, typer.Option(
        "--include-refined", help="refined candidates ('nas refine') join the front, marked in 'source'")] = False,
) -> None:
    """The feasible Pareto front (accuracy vs cost) with spec hash, costs and test accuracy."""
    from nas._pareto import pareto_rows

    rows = pareto_rows(name, open_store(storage), where=where, include_refined=include_refined)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    cols = ("source", "refined", *PARETO_COLS) if include_refined else PARETO_COLS
    flat = [{k: r.get(k) for k in cols} for r in rows]
    if fmt is Format.csv:
        emit(flat, fmt)
        return
    if not rows:
        out.print(f"{name}: no evaluated architecture within the budget{' and --where' if where else ''} yet")
        return
    emit(flat, fmt, f"Pareto front of {name}" + (f" where {where}" if where else ""),
         {k: lambda v: si(float(v)) for k in ("flops", "params", "peak_activation_bytes")})


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help="study name"),
    trial: int = typer.Option(None, "--trial", help="trial number"),
    to: str = typer.Option(..., "--to", help="output directory"),
    epochs: int = typer.Option(None, "--epochs", help="retrain for N epochs instead of using stored weights"),
    formats: str = typer.Option("json,state_dict,onnx", "--formats", help="comma list of json, state_dict, onnx"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    refined: Annotated[int | None, typer.Option(
        "--refined", help="a refined candidate's id (column 'refined' of 'nas pareto --include-refined')")] = None,
) -> None:
    """Export a trial or a refined candidate: spec JSON, state_dict, ONNX (checked against onnxruntime)."""
    from nas._export import export_refined, export_trial

    if (trial is None) == (refined is None):
        raise UsageError("give exactly one of --trial N (a trial) or --refined ID (a refined candidate, see "
                         "'nas pareto NAME --include-refined')")
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    if not fmts:
        raise UsageError(f"--formats: give at least one of json, state_dict, onnx (comma list), got {formats!r}")
    if refined is not None:
        if epochs is not None:
            raise UsageError("--epochs retrains a trial; a refined candidate is exported with its stored weights")
        info = export_refined(name, refined, to, open_store(storage), formats=fmts)
    else:
        info = export_trial(name, trial, to, open_store(storage), epochs=epochs, formats=fmts)
    for f in info["files"]:
        out.print(f"wrote {f}")
    if "onnx_max_abs_diff" in info:
        out.print(f"ONNX vs PyTorch: max |diff| {info['onnx_max_abs_diff']:.2e}")


REFINE_COLS = ("source", "refined", "accuracy", "test_accuracy", "flops", "params", "mem_traffic_bytes", "depth",
               "hw_cost")


@app.command("refine")
def refine_cmd(
    name: str = typer.Argument(..., help="study name"),
    trial: int = typer.Option(None, "--trial", help="the trial to refine (trained, within the budget)"),
    pareto: bool = typer.Option(False, "--pareto", help="refine every member of the study's Pareto front"),
    epochs: int = typer.Option(None, "--epochs", help="baseline training epochs at the refinement fidelity (20)"),
    reuse_weights: bool = typer.Option(False, "--reuse-weights",
                                       help="baseline = the weights the search stored (no training)"),
    finetune_epochs: int = typer.Option(None, "--finetune-epochs",
                                        help="F, fine-tuning epochs per pruning attempt, the paper's 320 (8); short "
                                             "fusion fine-tuning ceil(F*50/320), long ceil(F*200/320), patience "
                                             "ceil(F*20/320)"),
    margin: float = typer.Option(None, "--margin", help="pruning keeps accuracy >= baseline - margin (0.01)"),
    iterations: int = typer.Option(None, "--iterations", help="outer pruning iterations (3)"),
    max_drop: float = typer.Option(None, "--max-drop",
                                   help="fusion stops once accuracy is this far below the pruned model's (0.03)"),
    long_every: int = typer.Option(None, "--long-every", help="long fine-tuning after this many removals (4)"),
    temperature: float = typer.Option(None, "--temperature", help="distillation temperature T (4)"),
    alpha: float = typer.Option(None, "--alpha", help="weight of the soft (distillation) loss; 1-alpha on labels "
                                                      "(0.9)"),
    low_rank: str = typer.Option(None, "--low-rank", help="last, LightLayers (low rank) until this budget holds, "
                                                          "e.g. 'params<=20k flops<=1M'"),
    seed: int = typer.Option(None, "--seed", help="seed of initialisation and batch order (0)"),
    threads: int = typer.Option(None, "--threads", help="torch threads (default: all cores)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress display"),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    queue: bool = typer.Option(False, "--queue", help="queue the refinement for a worker ('nas worker') instead "
                                                      "of running it here"),
) -> None:
    """Refine trained architectures: dynamic pruning, then layer fusion with distillation (SEEDS.md 2).

    Every candidate (baseline, each pruning iteration, each fusion step, low rank) is stored as
    soon as it exists, with its lineage; 'nas pareto NAME --include-refined' puts them on the
    front and 'nas export NAME --refined ID' exports one. After Ctrl-C, the same command
    continues from the last stored step. With --queue a worker does the work instead.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    from nas._refine import make_settings, parent_trials, refine_trial
    from objectives import threads_per_worker

    if (trial is None) == (not pareto):
        raise UsageError("give exactly one of --trial N (refine one trial) or --pareto (every Pareto-front member)")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    settings = make_settings(epochs=epochs, reuse_weights=reuse_weights or None, finetune_epochs=finetune_epochs,
                             margin=margin, iterations=iterations, max_drop=max_drop, long_every=long_every,
                             temperature=temperature, alpha=alpha, low_rank=low_rank, seed=seed)
    store = open_store(storage)
    numbers = parent_trials(name, store, trial=trial, pareto=pareto)
    if queue:
        from nas._jobs import job_info, queue_refinement

        jobs = []
        for number in numbers:
            job, created = queue_refinement(name, number, store, settings)
            jobs.append({**job_info(job), "created": created})
        emit([{k: j[k] for k in ("id", "trial", "state", "created")} for j in jobs], fmt, f"refinement jobs of {name}")
        return
    threads = threads or threads_per_worker(1)
    # One bar per trial over its steps (stored candidates of expected), the current phase beside it.
    prog = None if quiet else Progress(
        SpinnerColumn(), TextColumn("[bold]{task.fields[label]}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=16), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
        TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=err, transient=True, expand=True)
    rows: list[Any] = []
    stored = 0
    try:
        if prog is not None:
            prog.start()
        for i, number in enumerate(numbers):
            label = f"{name} trial {number}" + (f" ({i + 1}/{len(numbers)})" if len(numbers) > 1 else "")
            task = prog.add_task("", total=None, label=label) if prog is not None else None

            def show(e: Any, number: int = number, task: Any = task) -> None:
                nonlocal stored
                if e.kind == "candidate":
                    stored += 1
                if prog is None:
                    return
                prog.update(task, completed=e.stored, total=e.expected or None, description=e.message)
                if e.kind in ("candidate", "note", "resumed"):
                    prog.console.print(f"trial {number}: {e.message}", highlight=False, soft_wrap=True)
            rows += refine_trial(name, number, store, settings, threads=threads, on_event=show)
    except KeyboardInterrupt:
        if prog is not None:
            prog.stop()
        err.print(f"interrupted: {stored} new candidate(s) stored; run the same command again to continue from the "
                  "last stored step", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        if prog is not None:
            prog.stop()
    table = []
    for r in rows:
        cost = json.loads(r.cost_json)
        table.append({"source": f"refined {r.parent_trial}/{r.method}/{r.step}", "refined": r.id,
                      "accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
                      **{k: cost.get(k) for k in REFINE_COLS[4:]}, "parent_step": r.parent_step,
                      "spec_hash": r.spec_hash[:12]})
    if fmt is Format.json:
        sys.stdout.write(json.dumps(table, indent=2) + "\n")
        return
    emit(table, fmt, f"refined candidates of {name} (trial{'s' if len(numbers) > 1 else ''} "
                     f"{', '.join(map(str, numbers))})",
         {k: lambda v: si(float(v)) for k in ("flops", "params", "mem_traffic_bytes")})


@app.command("report")
def report_cmd(name: str = typer.Argument(...), to: str = typer.Option(..., "--to", help="output directory"),
               storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Pareto plot (PNG and HTML) with the budget marked, and the search history."""
    from nas._report import write_report

    info = write_report(name, open_store(storage), to)
    for f in info["files"]:
        out.print(f"wrote {f}")


# --------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo_cmd(
    name: str = typer.Option("demo", "--name", help="study name"),
    trials: int = typer.Option(None, "--trials", help="target trials (default from the demo spec)"),
    workers: int = typer.Option(1, "--workers"),
    to: str = typer.Option("nas_runs/demo", "--to", help="where the report goes"),
    quiet: bool = typer.Option(False, "--quiet"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Search the bundled digits under a budget, print the Pareto table and write the plot."""
    import time

    from nas._demo import demo_spec
    from nas._report import write_report
    from nas._study import describe_plan, plan_study
    from nas._warm import cheapest_anchors, create_warm_started, plan_warm_start

    store = open_store(storage, mode="create")
    spec = demo_spec(name, trials)
    if store.get_study(name) is None:
        made = plan_study(spec)
        anchors = plan_warm_start(made.spec, store, specs=cheapest_anchors(made))
        create_warm_started(made.spec, store, anchors, study_plan=made)
        out.print(f"created study [bold]{name}[/]: {spec.space} on {spec.data}, budget [bold]{spec.budget}[/], "
                  f"{spec.trials} networks within budget, in {store.url}")
        for line in describe_plan(made):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
        out.print(f"warm start: {', '.join(src for src, _ in anchors.enqueued)} queued first (the front's "
                  "low-cost end)", highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(f"resuming study [bold]{name}[/] in {store.url}")
    t0 = time.time()
    p = run_with_progress(name, store, trials, workers, None, quiet)
    out.print(f"{p.complete + p.pruned} trials in {time.time() - t0:.0f} s: {p.trained} trained, "
              f"{p.rejected} rejected over budget before training, {p.feasible - p.trained} reused")
    pareto_cmd(name, None, Format.table, store.url)
    info = write_report(name, store, to)
    out.print(f"Pareto plot: {info['files'][0]} (and {info['files'][2]})")


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception class ``name`` as Typer raises it: Typer 0.29 carries its own copy of
    Click (``typer._click``), older ones use the ``click`` package; both are caught."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is not None:
            found.append(cls)
    return tuple(found)


def _usage_line(e: Any) -> str:
    """A click usage error as one line: what was wrong, and where the accepted forms are listed."""
    message = " ".join(e.format_message().replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    return f"{message}{where}"


def _database_line(e: BaseException) -> str | None:
    """One line for a database that answered with an error a user can act on (damaged file,
    read-only file, permissions, disk full, server gone); None for a bug (bad SQL)."""
    from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError

    from storage import error_hint, error_line, is_transient

    cause = e.__cause__ if isinstance(e.__cause__, DatabaseError) else e
    if not isinstance(cause, DatabaseError) or isinstance(cause, (ProgrammingError, IntegrityError)):
        return None
    where = _opened[-1] if _opened else "the database"
    text = error_line(cause)
    hint = error_hint(text) or (" (the database is unreachable; retry when it is back)" if is_transient(cause)
                                else "")
    return f"storage {where}: {text}{hint}"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nas`` console script: bad input of any kind (arguments, files,
    databases) ends in one line on stderr and exit code 2; tracebacks are for bugs."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="nas", standalone_mode=False)
    except _click_classes("NoArgsIsHelpError") as e:
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except _click_classes("ClickException") as e:
        say_error(_usage_line(e))
        sys.exit(getattr(e, "exit_code", 2) or 2)
    except _click_classes("Abort"):
        err.print("aborted", highlight=False)
        sys.exit(1)
    except user_errors() as e:
        say_error(e)
        sys.exit(2)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        line = _database_line(e)
        if line is None:
            raise
        say_error(line)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)  # as Typer's standalone mode: always SystemExit


if __name__ == "__main__":  # pragma: no cover
    main()
