"""``nas study``: create, run, enqueue, list, show and delete studies."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from .._fields import EARLY_STOP, FIDELITY, STUDY, help_text
from ._common import (
    INTERRUPTED,
    STORAGE_HELP,
    TERMINATED,
    Format,
    UsageError,
    emit,
    err,
    open_store,
    open_store_if_exists,
    out,
    parse_options,
    read_arch_file,
    si,
    study_app,
)


@study_app.command("create")
def study_create(
    name: str = typer.Argument(None, help=STUDY["name"].help),
    space: str = typer.Option(None, "--space", help=STUDY["space"].help),
    data: str = typer.Option(None, "--data", help=help_text(STUDY["data"])),
    budget: str = typer.Option(None, "--budget", help=STUDY["budget"].help),
    objectives: str = typer.Option(None, "--objectives", help=f"comma list: {help_text(STUDY['objectives'])}"),
    sampler: str = typer.Option(None, "--sampler", help=help_text(STUDY["sampler"])),
    proxy: str = typer.Option(None, "--proxy", help=help_text(STUDY["proxy"])),
    proxy_candidates: int = typer.Option(None, "--proxy-candidates", help=help_text(STUDY["proxy_candidates"])),
    pruner: str = typer.Option(None, "--pruner", help=help_text(STUDY["pruner"])),
    es_margin: float = typer.Option(None, "--es-margin", help=help_text(EARLY_STOP["margin"])),
    es_rungs: str = typer.Option(None, "--es-rungs", help=f"comma list: {help_text(EARLY_STOP['rungs'])}"),
    inherit_weights: bool = typer.Option(None, "--inherit-weights/--no-inherit-weights",
                                         help=help_text(STUDY["inherit_weights"])),
    enqueue: list[str] = typer.Option([], "--enqueue", help="an ArchSpec JSON file (spec.json of 'nas export') to "
                                                            "evaluate first (repeatable)"),
    warm_start: str = typer.Option(None, "--warm-start", help="evaluate the Pareto front of this study first "
                                                              "(same database; members that do not fit are skipped)"),
    seed: int = typer.Option(None, "--seed", help=help_text(STUDY["seed"])),
    epochs: int = typer.Option(None, "--epochs", help=help_text(FIDELITY["epochs"])),
    train_fraction: float = typer.Option(None, "--train-fraction", help=help_text(FIDELITY["train_fraction"])),
    trials: int = typer.Option(None, "--trials", help=help_text(STUDY["trials"])),
    fit_space: bool = typer.Option(None, "--fit-space/--no-fit-space", help=help_text(STUDY["fit_space"])),
    fit_resolution: bool = typer.Option(None, "--fit-resolution/--no-fit-resolution",
                                        help=help_text(STUDY["fit_resolution"])),
    input_size: int = typer.Option(None, "--input-size", help=help_text(STUDY["input_size"])),
    device: str = typer.Option(None, "--device", help=help_text(STUDY["device"])),
    amp: str = typer.Option(None, "--amp", help=help_text(STUDY["amp"])),
    augment: str = typer.Option(None, "--augment", help=help_text(FIDELITY["augment"])),
    cost_device: str = typer.Option(None, "--cost-device", help=help_text(STUDY["cost_device"])),
    precision: str = typer.Option(None, "--precision", help=help_text(STUDY["precision"])),
    calibration: int = typer.Option(None, "--calibration", help=help_text(STUDY["calibration"])),
    qat_epochs: int = typer.Option(None, "--qat-epochs", help=help_text(STUDY["qat_epochs"])),
    qat_threshold: float = typer.Option(None, "--qat-threshold", help=help_text(STUDY["qat_threshold"])),
    option: list[str] = typer.Option([], "--option", help="space option key=value (repeatable; see 'nas spaces')"),
    config: str = typer.Option(None, "--config", help="a study spec TOML file (the fields of nas.StudySpec)"),
    supernet: str = typer.Option(None, "--supernet", help=help_text(STUDY["supernet"])),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Create a study (once); then run it with 'nas study run NAME'."""
    from ..search import describe_plan, load_spec_file, make_spec, prepare_study, store_study

    fields: dict[str, Any] = {"name": name, "space": space, "data": data, "budget": budget, "sampler": sampler,
                              "pruner": pruner, "seed": seed, "trials": trials, "device": device,
                              "amp": amp, "cost_device": cost_device, "proxy": proxy,
                              "proxy_candidates": proxy_candidates, "precision": precision,
                              "calibration": calibration, "qat_epochs": qat_epochs, "qat_threshold": qat_threshold}
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
    fid = {k: v for k, v in {"epochs": epochs, "train_fraction": train_fraction, "augment": augment}.items()
           if v is not None}
    store = None
    if supernet is not None:  # the space, data and split are the supernet's
        from ..search import require_supernet, supernet_study_fields

        if config:
            fields["supernet"] = supernet
        else:
            store = open_store_if_exists(storage)
            fields = supernet_study_fields(require_supernet(store, supernet, trained=True), fields)
    if config:
        study_spec = load_spec_file(config, **{k: v for k, v in fields.items() if v is not None})
        if fid:
            study_spec = make_spec(**{**study_spec.model_dump(), "fidelity": {**study_spec.fidelity.model_dump(),
                                                                              **fid}})
    else:
        if not name:
            raise UsageError("give a study NAME (or --config FILE)")
        if not fields.get("space"):
            raise UsageError("--space is required; accepted: see 'nas spaces'")
        if fid:
            fields["fidelity"] = fid
        study_spec = make_spec(**{k: v for k, v in fields.items() if v is not None})
    given = [(path, read_arch_file(path, "enqueue")) for path in enqueue]
    # Budget first, checked against the database as it is; a database is created only for a good
    # study (a refused one leaves no new file), and the write is all or nothing.
    store = store or open_store_if_exists(storage)
    plan = prepare_study(study_spec, store, enqueue=given, warm_start=warm_start)
    store = store or open_store(storage, mode="create")
    plan = store_study(plan, store)
    study_spec = plan.study_spec
    out.print(f"created study [bold]{study_spec.name}[/] ({study_spec.space} on {study_spec.data}, budget "
              f"{study_spec.budget or 'none'}, target {study_spec.trials} networks within budget) in {store.url}")
    for line in describe_plan(plan):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if study_spec.supernet is not None:
        out.print(f"trials are subnets of supernet {study_spec.supernet}, evaluated with its weights (BN "
                  "recalibrated): their accuracy is supernet accuracy, not stand-alone accuracy", highlight=False,
                  markup=False, soft_wrap=True)
    if plan.warm is not None:
        out.print(f"warm start: {len(plan.warm.enqueued)} architecture(s) queued to run first"
                  + (f", {len(plan.warm.skipped)} skipped" if plan.warm.skipped else ""))
        for src, reason in plan.warm.skipped:
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
                      backend: str = "local", ray_options=None, workers_per_device: int = 1):
    """Run ``name`` on the local workers or (``backend="ray"``) on Ray Tune, with a progress bar."""
    from ..workers import check_run

    # Every argument is checked before a bar is shown or the target written: one line, exit 2.
    check_run(name, store, trials=trials, workers=workers if backend != "ray" else 1, timeout=timeout,
              workers_per_device=workers_per_device)
    if backend == "ray":
        from ..workers.ray import run_ray

        def runner(on_progress=None):
            return run_ray(name, store, trials=trials, options=ray_options, timeout=timeout,
                           on_progress=on_progress,
                           say=lambda msg: err.print(msg, highlight=False, soft_wrap=True, markup=False))
    else:
        from ..workers import run_study

        def runner(on_progress=None):
            return run_study(name, store, trials=trials, workers=workers, timeout=timeout, on_progress=on_progress,
                             workers_per_device=workers_per_device)
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
    workers_per_device: int = typer.Option(1, "--workers-per-device",
                                           help="on CUDA: workers sharing each GPU (worker i on cuda:i//N; tiny "
                                                "networks leave one GPU idle); ignored on the CPU"),
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
    from ..workers.ray import RayInterrupted, check_backend_options

    backend = backend.strip().lower()
    ray_options = check_backend_options(backend, address=address, max_concurrent=max_concurrent,
                                        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                                        workers=workers)
    store = open_store(storage)
    try:
        p = run_with_progress(name, store, trials, 1 if workers is None else workers, timeout, quiet, backend,
                              ray_options, workers_per_device)
    except RayInterrupted as e:
        err.print(f"{name}: {e}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(INTERRUPTED) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (nas.Terminated) handled alike
        from .._errors import Terminated
        from ..search import get_study_spec
        from ..workers import progress

        p = progress(name, store)
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        try:  # the fast path's batches (a supernet study run locally)
            batched = backend == "local" and get_study_spec(name, store).supernet is not None
        except Exception:  # noqa: BLE001 -- the study unreadable now: say what the standard loop does
            batched = False
        running = ("the subnets evaluated were stored, the one in evaluation dropped" if batched else
                   "the running trial was failed and queued again")
        err.print(f"{name}: {how} at {p.finished}/{p.target} networks within budget; {running}; rerun the same "
                  "command to resume", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(TERMINATED if isinstance(e, Terminated) else INTERRUPTED) from None
    out.print(f"{name}: {p.summary()}; Pareto front: {p.pareto} architectures")


@study_app.command("enqueue")
def study_enqueue(
    name: str = typer.Argument(..., help="study name"),
    spec_files: list[str] = typer.Option([], "--spec", help="an ArchSpec JSON file (spec.json of 'nas export'); "
                                                            "repeatable"),
    from_study: str = typer.Option(None, "--from", help="the Pareto front of this study (same database)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Queue known architectures to be evaluated next (warm start of an existing study)."""
    from ..search import warm_start

    if not spec_files and not from_study:
        raise UsageError("give --spec FILE (repeatable) and/or --from STUDY")
    from ..workers import finished

    archs = [(path, read_arch_file(path, "spec")) for path in spec_files]
    store = open_store(storage)
    plan = warm_start(name, store, specs=archs, from_study=from_study)
    out.print(f"{name}: {len(plan.enqueued)} architecture(s) queued to run next"
              + (f", {len(plan.skipped)} skipped" if plan.skipped else ""))
    row = store.get_study(name)
    if plan.enqueued and row is not None and finished(store, name) >= row.target_trials:
        out.print(f"note: {name} has met its target ({row.target_trials}); raise it ('nas study run {name} --trials "
                  "N' or PATCH target) for the queued architectures to run", highlight=False, markup=False)
    for src, reason in plan.skipped:
        out.print(f"  skipped {src}: {reason}", highlight=False, markup=False)


@study_app.command("finetune")
def study_finetune(
    name: str = typer.Argument(..., help="study name (a study created with --supernet)"),
    front: bool = typer.Option(False, "--front", help="the study's Pareto front (the default)"),
    trial: list[int] = typer.Option([], "--trial", help="a member's trial number (repeatable), instead of the front"),
    epochs: int = typer.Option(..., "--epochs", help="fine-tuning epochs, from the subnet's inherited weights"),
    threads: int = typer.Option(1, "--threads", help="torch threads"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Train members of a supernet study further from their inherited weights, stored as evaluations at that
    fidelity and as trials labelled 'finetuned' ('nas pareto', 'nas export', 'nas refine' take them)."""
    from ..search import finetune_study

    if front and trial:
        raise UsageError("give --front (the Pareto front) or --trial N (repeatable), not both")
    if not 1 <= epochs <= 10_000:
        raise UsageError(f"--epochs: got {epochs}; accepted: 1 to 10000 fine-tuning epochs")
    if threads < 1:
        raise UsageError(f"--threads: got {threads}; accepted: 1 or more")
    store = open_store(storage)
    done: list[dict[str, Any]] = []

    def line(m: dict[str, Any]) -> None:
        done.append(m)
        what = {"trained": f"fine-tuned {epochs} epoch(s) in {m['seconds']:.1f} s",
                "reused": "reused: fine-tuned before for another study on the same supernet",
                "kept": "fine-tuned before in this study"}[m["done"]]
        origin = "-" if m["supernet_accuracy"] is None else f"{m['supernet_accuracy']:.4f}"
        err.print(f"trial {m['trial']} ({m['spec_hash'][:12]}): supernet accuracy {origin} -> fine-tuned "
                  f"{m['accuracy']:.4f}, trial {m['finetuned_trial']} ({what})", highlight=False, markup=False,
                  soft_wrap=True)

    try:
        results = finetune_study(name, store, epochs=epochs, trials=trial or None, threads=threads, on_member=line)
    except KeyboardInterrupt:
        err.print(f"{name}: interrupted; {len(done)} member(s) fine-tuned and stored; rerun the same command to go "
                  "on (stored ones are not trained again)", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    new = sum(m["done"] != "kept" for m in results)
    out.print(f"{name}: {len(results)} member(s) at {epochs} fine-tuning epoch(s), {new} new; their trials' accuracy "
              f"is labelled 'finetuned from supernet' ('nas pareto {name}')", highlight=False, markup=False,
              soft_wrap=True)


@study_app.command("list")
def study_list(fmt: Format = typer.Option(Format.table, "--format"),
               storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """List studies with their progress."""
    from ..search import list_studies
    from ..workers import progress

    store = open_store(storage)
    rows = []
    for entry in list_studies(store):
        if entry.study_spec is None:  # listed with the reason, so one bad row never hides the others
            counts = store.study_counts(entry.name)
            rows.append({"name": entry.name, "space": None, "data": None, "budget": None,
                         "within_budget": counts["COUNTED"], "target": entry.target, "rejected": counts["REJECTED"],
                         "front": None, "unreadable": entry.unreadable})
            continue
        study_spec = entry.study_spec
        p = progress(study_spec.name, store, entry.target)
        rows.append({"name": study_spec.name, "space": study_spec.space, "data": study_spec.data,
                     "budget": study_spec.budget,
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

    from ..search import StudyPlan, describe_plan, get_study_spec, pareto_rows, status_of, study_info
    from ..workers import progress

    store = open_store(storage)
    study_spec = get_study_spec(name, store)
    info = study_info(name, store)
    p = progress(name, store)
    trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        key = status_of(t) or t.state.name.lower()
        if t.state.name != "COMPLETE":
            key = t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    front = pareto_rows(name, store, with_test=False)
    best = max(front, key=lambda r: r["accuracy"], default=None)
    from ._results import warn_damaged

    damaged = warn_damaged(name, store)  # a trial whose stored attributes are damaged: marked, the rest shown
    doc = {"spec": study_spec.model_dump(), "target": p.target, "within_budget": p.finished, "rejected": p.rejected,
           "complete": p.complete, "counts": states, "pareto_size": p.pareto, "best": best,
           "feasibility": info.get("feasibility"), "fit": info.get("fit"),
           "target_converted": info.get("target_converted"), "damaged": damaged}
    if fmt is Format.json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    emit([{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
          for k, v in study_spec.model_dump().items()], Format.table, f"study {name}")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
    out.print(f"progress: {p.summary()}; trials by status: {counts}", highlight=False)
    for line in describe_plan(StudyPlan(study_spec, info)):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    conv = info.get("target_converted")
    if conv:
        out.print(f"target converted on upgrade (schema 4: only networks within budget count): {conv['old_target']} "
                  f"trials with {conv['old_finished']} finished -> {conv['new_target']} networks with "
                  f"{conv['counted']} evaluated", highlight=False, markup=False, soft_wrap=True)
    if best:
        int8 = f" (int8; fp32 {best['fp32_accuracy']:.4f}, drop {best['int8_drop']:+.4f})" \
            if best.get("fp32_accuracy") is not None else ""
        device = "".join(f", {label} {si(best['cost'][k])}B"
                         for k, label in (("ram_bytes", "ram"), ("flash_bytes", "flash")) if k in best["cost"])
        out.print(f"best: trial {best['trial']} ({best['spec_hash']}), accuracy {best['accuracy']:.4f}{int8}, "
                  f"flops {si(best['cost'].get('flops', 0))}, params {si(best['cost'].get('params', 0))}{device}")


@study_app.command("delete")
def study_delete(name: str = typer.Argument(...), yes: bool = typer.Option(False, "--yes", help="confirm"),
                 storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Delete a study and its trials (architectures and evaluations stay for reuse)."""
    from ..search import check_study_exists, delete_study

    store = open_store(storage)
    check_study_exists(name, store)  # a study whose stored spec no longer reads can still be deleted
    if not yes:
        raise UsageError(f"deleting study {name!r} removes its trials; add --yes to confirm")
    delete_study(name, store)
    out.print(f"deleted study {name}")
