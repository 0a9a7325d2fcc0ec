"""``nas demo``: the README's main job, a search of the bundled digits under a budget."""

from __future__ import annotations

import typer

from ._common import STORAGE_HELP, Format, app, open_store, out
from ._results import pareto_cmd
from ._study import run_with_progress


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

    from .._report import write_report
    from ..search import create_study, demo_spec, describe_plan
    from ..workers import check_run_args

    # Bad arguments are refused before the database is opened.
    check_run_args(trials=trials, workers=workers)
    study_spec = demo_spec(name, trials)
    store = open_store(storage, mode="create")
    if store.get_study(name) is None:
        # The space's cheapest architectures run first: the front's low-cost end is never left unexplored.
        made = create_study(study_spec, store, anchors=True)
        out.print(f"created study [bold]{name}[/]: {study_spec.space} on {study_spec.data}, budget "
                  f"[bold]{study_spec.budget}[/], {study_spec.trials} networks within budget, in {store.url}")
        for line in describe_plan(made):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
        enqueued = made.warm.enqueued if made.warm is not None else []
        out.print(f"warm start: {', '.join(src for src, _ in enqueued)} queued first (the front's low-cost end)",
                  highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(f"resuming study [bold]{name}[/] in {store.url}")
    t0 = time.time()
    p = run_with_progress(name, store, trials, workers, None, quiet)
    out.print(f"{p.complete + p.pruned} trials in {time.time() - t0:.0f} s: {p.trained} trained, "
              f"{p.rejected} rejected over budget before training, {p.feasible - p.trained} reused")
    pareto_cmd(name, None, Format.table, store.url)
    info = write_report(name, store, to)
    out.print(f"Pareto plot: {info['files'][0]} (and {info['files'][2]})")
