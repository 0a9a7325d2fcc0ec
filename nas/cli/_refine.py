"""``nas refine``: dynamic pruning, layer fusion and LightLayers on trained trials."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from .._fields import REFINE, help_text
from ._common import INTERRUPTED, STORAGE_HELP, Format, UsageError, app, emit, err, open_store, si

REFINE_COLS = ("source", "refined", "accuracy", "test_accuracy", "flops", "params", "mem_traffic_bytes", "depth",
               "hw_cost")


@app.command("refine")
def refine_cmd(
    name: str = typer.Argument(..., help="study name"),
    trial: int = typer.Option(None, "--trial", help="the trial to refine (trained, within the budget)"),
    pareto: bool = typer.Option(False, "--pareto", help="refine every member of the study's Pareto front"),
    epochs: int = typer.Option(None, "--epochs", help=help_text(REFINE["epochs"])),
    reuse_weights: bool = typer.Option(False, "--reuse-weights", help=REFINE["reuse_weights"].help),
    finetune_epochs: int = typer.Option(None, "--finetune-epochs", help=help_text(REFINE["finetune_epochs"])),
    margin: float = typer.Option(None, "--margin", help=help_text(REFINE["margin"])),
    iterations: int = typer.Option(None, "--iterations", help=help_text(REFINE["iterations"])),
    max_drop: float = typer.Option(None, "--max-drop", help=help_text(REFINE["max_drop"])),
    long_every: int = typer.Option(None, "--long-every", help=help_text(REFINE["long_every"])),
    temperature: float = typer.Option(None, "--temperature", help=help_text(REFINE["temperature"])),
    alpha: float = typer.Option(None, "--alpha", help=help_text(REFINE["alpha"])),
    low_rank: str = typer.Option(None, "--low-rank", help=help_text(REFINE["low_rank"])),
    seed: int = typer.Option(None, "--seed", help=help_text(REFINE["seed"])),
    threads: int = typer.Option(None, "--threads", help="torch threads (default: all cores)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress display"),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    queue: bool = typer.Option(False, "--queue", help="queue the refinement for a worker ('nas worker') instead "
                                                      "of running it here"),
) -> None:
    """Refine trained architectures: dynamic pruning, then layer fusion with distillation (docs/methods.md section 2).

    Every candidate (baseline, each pruning iteration, each fusion step, low rank) is stored as
    soon as it exists, with its lineage; 'nas pareto NAME --include-refined' puts them on the
    front and 'nas export NAME --refined ID' exports one. After Ctrl-C, the same command
    continues from the last stored step. With --queue a worker does the work instead.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    from objectives import threads_per_worker

    from ..refine import make_settings, parent_trials, refine_trial
    from ..search import past_drop

    if (trial is None) == (not pareto):
        raise UsageError("give exactly one of --trial N (refine one trial) or --pareto (every Pareto-front member)")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    if low_rank is not None and not low_rank.strip():
        raise UsageError("--low-rank: empty; accepted: a budget the LightLayers step makes hold, e.g. "
                         "'params<=20k flops<=1M' (leave --low-rank out to skip that step)")
    settings = make_settings(epochs=epochs, reuse_weights=reuse_weights or None, finetune_epochs=finetune_epochs,
                             margin=margin, iterations=iterations, max_drop=max_drop, long_every=long_every,
                             temperature=temperature, alpha=alpha, low_rank=low_rank, seed=seed)
    store = open_store(storage)
    numbers = parent_trials(name, store, trial=trial, pareto=pareto)
    if queue:
        from ..workers import job_info, queue_refinement

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
                # Every step is a line (baseline, each threshold tried with its accuracy, each block
                # fused, each stored candidate): on real data one step takes minutes, and the lines
                # stay in a log when stderr is not a terminal.
                if e.kind != "done":
                    prog.console.print(f"trial {number}: {e.message}", highlight=False, soft_wrap=True)
            rows += refine_trial(name, number, store, settings, threads=threads, on_event=show)
    except KeyboardInterrupt:
        if prog is not None:
            prog.stop()
        err.print(f"interrupted: {stored} new candidate(s) stored; run the same command again to continue from the "
                  "last stored step", highlight=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    finally:
        if prog is not None:
            prog.stop()
    table = []
    for r in rows:
        cost = json.loads(r.cost_json)
        mark = " (past max-drop)" if past_drop(r) else ""
        table.append({"source": f"refined {r.parent_trial}/{r.method}/{r.step}{mark}",
                      "refined": r.id,
                      "accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
                      **{k: cost.get(k) for k in REFINE_COLS[4:]}, "parent_step": r.parent_step,
                      "spec_hash": r.spec_hash[:12]})
    if any(past_drop(r) for r in rows):
        err.print("candidates marked (past max-drop) lost more accuracy than --max-drop allows: stored as evidence, "
                  "left out of 'nas pareto --include-refined' unless --past-drop", highlight=False, soft_wrap=True)
    if fmt is Format.json:
        sys.stdout.write(json.dumps(table, indent=2) + "\n")
        return
    emit(table, fmt, f"refined candidates of {name} (trial{'s' if len(numbers) > 1 else ''} "
                     f"{', '.join(map(str, numbers))})",
         {k: lambda v: si(float(v)) for k in ("flops", "params", "mem_traffic_bytes")})
