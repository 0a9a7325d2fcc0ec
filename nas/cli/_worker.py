"""``nas worker``: a long-running worker on the database."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ._common import STORAGE_HELP, UsageError, app, check_finite, storage_url


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
    device: str = typer.Option(None, "--device", help="train on this torch device instead of each study's own "
                                                      "(cuda:N: one worker per GPU, or several on one)"),
    jobs: bool = typer.Option(True, "--jobs/--no-jobs", help="also run queued refinement jobs (requested through "
                                                             "the HTTP API or 'nas refine --queue'), before trials"),
    supernet: list[str] = typer.Option([], "--supernet", help="train this supernet when its training is queued "
                                                              "('nas supernet train NAME ... --queue'; repeatable); "
                                                              "a worker without NAME or --supernet trains any"),
) -> None:
    """A long-running worker: runs trials of studies in the database until stopped.

    Without NAME it takes any study whose target is not met, oldest first, and waits (polling
    with backoff) when there is none. Queued refinement jobs of those studies go first (--no-jobs:
    trials only). Queued supernet trainings are taken by a worker without NAME and --supernet, or
    by one naming them with --supernet (a worker given NAMEs and no --supernet keeps to those
    studies: a supernet's training can take hours). SIGTERM/SIGINT: the running trial (or job) is
    finished, or stopped at its next epoch and queued again, then the worker exits 0 (a second
    signal aborts).
    """
    import logging
    import signal
    import threading

    from storage import Store

    from ..workers import run_worker, wait_for_database

    if heartbeat < 1:
        raise UsageError(f"--heartbeat: must be >= 1 second, got {heartbeat}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    check_finite(poll_max, "--poll-max", 0.1, "a finite number of seconds >= 0.1")
    check_finite(connect_wait, "--connect-wait", 0.0, "a finite number of seconds >= 0")
    if device is not None:
        _check_device(device)
    if supernet and not jobs:
        raise UsageError("--supernet: a supernet's training is a queued job; accepted: --supernet without --no-jobs")
    url = storage_url(storage)  # a malformed URL fails now, not after waiting
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ..search import get_study_spec

    store = wait_for_database(lambda: Store(url, mode="serve"), "connecting", max_wait=connect_wait)
    assert isinstance(store, Store)
    try:
        for n in names or ():
            get_study_spec(n, store)  # unknown study: one line naming the studies there, exit 2
        for n in supernet:
            _check_supernet(n, store)
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
    scope = [*(names or ()), *(f"supernet {n}" for n in supernet)]
    log.info("worker started on %s (%s)", Store.display_url(url), ", ".join(scope) if scope else "all studies")
    # Samplers are seeded with study seed + worker: the process id keeps workers from proposing
    # the same sequence (a single-process `nas study run` stays reproducible with worker 0).
    stats = run_worker(names or None, url, until_done=until_done, threads=threads, stop=stop, heartbeat=heartbeat,
                       poll_max=poll_max, worker=os.getpid() % 100_000, jobs=jobs, device=device,
                       supernets=supernet or None)
    log.info("worker exiting after %d trials (%s)%s", stats.trials,
             ", ".join(f"{k.lower()} {v}" for k, v in sorted(stats.by_state.items())) or "none",
             f" and {sum(stats.jobs.values())} jobs ({', '.join(f'{k} {v}' for k, v in sorted(stats.jobs.items()))})"
             if stats.jobs else "")


def _check_device(device: str) -> None:
    """A device this host has, or one line naming what it has (exit 2)."""
    import torch

    from objectives import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise UsageError(str(e), field="device") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise UsageError(f"--device: {device} is not on this host ({count} CUDA device(s)); accepted: auto, cpu"
                             + "".join(f", cuda:{i}" for i in range(count)))


def _check_supernet(name: str, store: Any) -> None:
    """A supernet stored or queued in this database, or one line naming those there (exit 2)."""
    from ..search import list_supernets
    from ..workers import supernet_job, supernet_scope

    if name in list_supernets(store) or supernet_job(store, name) is not None:
        return
    known = sorted(set(list_supernets(store)) | {j.study.split(":", 1)[1] for j in store.list_jobs()
                                                  if j.study.startswith(supernet_scope(""))})
    raise UsageError(f"--supernet: {name!r} is neither stored nor queued in this database; accepted: "
                     + (", ".join(known) if known else "none yet (queue one: 'nas supernet train NAME ... --queue')"))
