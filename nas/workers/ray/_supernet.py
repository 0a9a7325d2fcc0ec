"""``nas supernet train NAME ... --backend ray``: a supernet trained as one Ray task.

The task (:func:`_train_task`, ``num_cpus`` = ``--cpus-per-trial``) opens the database itself and
trains with :func:`nas.search.train_stored_supernet`, which stores every epoch as it ends; so the
database must be reachable from the Ray workers (PostgreSQL for a cluster of several hosts; a SQLite
file only on one host). The driver waits, printing each epoch the task stores. Ctrl-C cancels the
task (its process is killed; the epochs it stored stay) and the same command resumes at the last
stored epoch, on Ray or locally.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from storage import Store

from ..._errors import NasError
from ...search import SupernetRecord, SupernetSpec, get_supernet, train_stored_supernet
from ._experiment import PIP_HINT, RayOptions, _init_ray, absolute_url, check_backend_options

__all__ = ["run_supernet_ray"]

#: How often the driver looks for epochs the task stored (seconds).
POLL_SECONDS = 1.0


def _train_task(spec_doc: dict[str, Any], url: str, threads: int) -> dict[str, Any]:
    """The Ray task: train supernet ``spec_doc`` in the database at ``url``, storing every epoch."""
    store = Store(url, mode="serve")
    try:
        record = train_stored_supernet(SupernetSpec(**spec_doc), store, threads=threads)
        return {"status": record.status, "epochs_done": record.epochs_done}
    finally:
        store.close()


def run_supernet_ray(spec: SupernetSpec, store: Store, *, options: RayOptions | None = None,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     say: Callable[[str], None] | None = None) -> SupernetRecord:
    """Train supernet ``spec`` as one Ray task (``options.cpus_per_trial`` CPUs, as many torch
    threads) on a local Ray or the cluster at ``options.address``; wait for it and return its record.

    ``on_epoch(curve entry)`` for each epoch the task stores (seen by polling the database).
    Call :func:`nas.search.prepare_supernet` first: the task trains what it would.

    Raises:
        NasError: Ray missing or unreachable, more CPUs asked than the cluster has, the training
            failed (its one line).
        KeyboardInterrupt: Ctrl-C; the task is cancelled, the epochs it stored stay.
    """
    options = options or RayOptions()
    check_backend_options("ray", address=options.address, cpus_per_trial=options.cpus_per_trial)
    if importlib.util.find_spec("ray") is None:
        raise NasError(PIP_HINT)
    import ray

    notify = say or (lambda _msg: None)
    url = absolute_url(store.url)
    t0 = time.perf_counter()
    started = _init_ray(options)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if started:
            what = f"connected to the Ray cluster at {options.address}" if options.address else "started a local Ray"
            notify(f"{what} ({cpus:g} CPUs) in {time.perf_counter() - t0:.1f} s")
        if options.cpus_per_trial > cpus:
            raise NasError(f"{options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs", field="cpus_per_trial")
        if options.address and store.url.startswith("sqlite"):
            notify(f"note: SQLite database {url}: Ray workers on other hosts cannot open it; use PostgreSQL "
                   "for a multi-host cluster")
        task = ray.remote(num_cpus=options.cpus_per_trial, max_retries=0)(_train_task)
        ref = task.remote(spec.model_dump(), url, options.threads)
        seen = _stored_epochs(store, spec.name)
        try:
            while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
                seen = _report(store, spec.name, seen, on_epoch)
            _report(store, spec.name, seen, on_epoch)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                line = str(cause) if isinstance(cause, NasError) else \
                    f"{type(cause).__name__}: {cause}" if cause is not None else str(e).strip().splitlines()[-1]
                raise NasError(f"supernet {spec.name!r}: its Ray task failed: {line}") from None
            except ray.exceptions.RayError as e:  # the task's worker died (killed, out of memory), Ray gone
                raise NasError(f"supernet {spec.name!r}: its Ray task was lost ({type(e).__name__}); the epochs it "
                               "stored stay: rerun the same command to resume") from None
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)  # the task's process is killed; its stored epochs stay
            raise
    finally:
        if started:
            ray.shutdown()
    record = get_supernet(store, spec.name)
    assert record is not None
    return record


def _stored_epochs(store: Store, name: str) -> int:
    record = get_supernet(store, name)
    return record.epochs_done if record is not None else 0


def _report(store: Store, name: str, seen: int, on_epoch: Callable[[dict[str, Any]], None] | None) -> int:
    """Call ``on_epoch`` for the epochs stored since epoch ``seen``; the last stored epoch."""
    record = get_supernet(store, name)
    if record is None:
        return seen
    for entry in record.curve:
        if entry["epoch"] > seen and on_epoch is not None:
            on_epoch(entry)
    return max(seen, record.epochs_done)
