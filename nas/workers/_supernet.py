"""Queued supernet training (issue 30): ``nas supernet train NAME ... --queue`` queues it, ``nas worker`` runs it.

The job queue is the refinement jobs' (``lightnas_jobs``, :mod:`._jobs`), with kind ``supernet``:

- ``study`` is ``supernet:NAME`` (:func:`supernet_scope`). A study name never holds ``:``
  (``NAME_PATTERN``), so no study, its listing, its jobs (``GET /studies/{name}/jobs``) or a
  worker scoped to studies (``nas worker s1 s2``) ever meets a supernet job; ``nas worker``
  without names, or with ``--supernet NAME``, claims them.
- ``key`` hashes the supernet's settings (:class:`nas.search.SupernetSpec`), so the same request
  again finds the job queued, running or done; ``settings`` are those settings; ``trial`` is -1.

A worker runs the job with :func:`nas.search.train_stored_supernet`, which stores every epoch as it
ends (record and checkpoint in one transaction), under the job's heartbeat. A stopping worker
(SIGTERM, Ctrl-C) stops at the next epoch boundary and queues the job again; a worker killed
(``kill -9``) leaves the job running without a heartbeat, and the next claim after 3x its heartbeat
takes it again. Either way the next run resumes at the last stored epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from storage import JobRow, Store

from .._errors import NasError, TrialInterrupted
from ..search import (
    SUPERNET_PREFIX,
    SupernetSpec,
    get_supernet,
    list_supernets,
    prepare_supernet,
    supernet_summary,
    train_stored_supernet,
)
from ._jobs import job_info, run_claimed
from ._liveness import Heartbeat, Outages

__all__ = ["SUPERNET_JOB", "active_supernet_job", "queue_supernet", "run_supernet_job", "supernet_job", "supernet_rows",
           "supernet_key", "supernet_scope", "supernet_state_line",
           "check_lease", "lease_holder", "queued_supernet_doc", "training_lease"]

log = logging.getLogger("nas.worker")

#: The kind of a supernet training job.
SUPERNET_JOB = "supernet"


def supernet_scope(name: str) -> str:
    """The ``study`` column of supernet ``name``'s jobs: ``supernet:NAME``, which no study name can be."""
    return f"{SUPERNET_JOB}:{name}"


def supernet_key(spec: SupernetSpec) -> str:
    """What identifies a supernet's training: the hash of its settings (64 hex digits)."""
    return hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()


def supernet_job(store: Store, name: str) -> JobRow | None:
    """The latest job of supernet ``name`` (any state), None when it was never queued."""
    jobs = store.list_jobs(supernet_scope(name))
    return jobs[-1] if jobs else None


def queued_supernet_doc(name: str, job: JobRow) -> dict[str, Any]:
    """What ``nas supernet show --format json`` and ``GET /supernets/{name}`` say of a supernet queued for a
    worker with no epoch stored yet: its job's state, its settings, its job."""
    settings = json.loads(job.settings_json)
    return {"name": name, "status": job.state, "epochs_done": 0, "epochs": settings.get("epochs"),
            "settings": settings, "curve": [], "job": job_info(job)}


def supernet_rows(store: Store) -> list[dict[str, Any]]:
    """The rows of ``nas supernet list`` and ``GET /supernets``: every stored supernet
    (:func:`nas.search.supernet_summary`), and every supernet queued for a worker that has no epoch stored
    yet (its job's state as status, its settings, nothing measured), by name. A damaged record is left out."""
    rows: dict[str, dict[str, Any]] = {}
    stored = list_supernets(store)
    for name in stored:
        try:
            record = get_supernet(store, name)
        except NasError:  # a damaged record: left out, never the listing down
            continue
        if record is not None:
            rows[name] = supernet_summary(store, record)
    prefix = supernet_scope("")
    for job in reversed(store.list_jobs()):  # a supernet's latest job, as 'nas supernet show' says
        name = job.study[len(prefix):]
        if not job.study.startswith(prefix) or name in rows or name in stored:  # a damaged record stays out
            continue
        settings = json.loads(job.settings_json)
        rows[name] = {"name": name, "space": settings.get("space"), "data": settings.get("data"), "input": None,
                      "status": job.state, "epochs": f"0/{settings.get('epochs')}", "params": None,
                      "largest": None, "smallest": None, "kendall_tau": None, "spearman_rho": None,
                      "check_n": None, "check_epochs": None}
    return [rows[k] for k in sorted(rows)]


#: Seconds between the beats of a foreground training's lease (:func:`training_lease`); 3 missed: it is free.
LEASE_INTERVAL = 10.0


def _lease_key(name: str) -> str:
    return f"{SUPERNET_PREFIX}{name}/lease.json"


def _holder(doc: dict[str, Any], interval: float) -> str | None:
    """Who holds a stored lease, with its age, or None when it is free: its beats stopped (3 intervals), or its
    process is gone (same host, no such pid: a kill -9 frees it at once)."""
    age = time.time() - float(doc.get("heartbeat", 0.0))
    if age > 3 * interval:
        return None
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's live process
            pass
    return f"{doc.get('host')}:{doc.get('pid')} (last heartbeat {max(0.0, age):.0f} s ago)"


def _lease(store: Store, name: str) -> dict[str, Any] | None:
    blob = store.get_artifact(_lease_key(name))
    return json.loads(blob) if blob else None


def _mine(doc: dict[str, Any]) -> bool:
    return doc.get("host") == socket.gethostname() and doc.get("pid") == os.getpid()


def lease_holder(store: Store, name: str, *, interval: float = LEASE_INTERVAL) -> str | None:
    """Who trains supernet ``name`` in the foreground now (another process; see :func:`training_lease`), or None."""
    doc = _lease(store, name)
    return None if doc is None or _mine(doc) else _holder(doc, interval)


def check_lease(store: Store, name: str, *, interval: float = LEASE_INTERVAL) -> None:
    """Refuse to train (or queue) supernet ``name`` while another process trains it in the foreground.

    Raises:
        NasError: one line naming the holder.
    """
    holder = lease_holder(store, name, interval=interval)
    if holder is not None:
        raise NasError(f"supernet {name!r} is being trained by {holder}; accepted: wait for it (or stop it), "
                       "then rerun to resume, or another name")


@contextlib.contextmanager
def training_lease(store: Store, name: str, *, interval: float = LEASE_INTERVAL) -> Iterator[None]:
    """Hold supernet ``name``'s training lease while the block runs (``nas supernet train`` in the foreground):
    a second training of the same name meanwhile, here or on another host, is refused instead of writing the
    same records. The lease is a stored artifact refreshed every ``interval`` seconds and removed at the end;
    one left by a killed process is free once 3 beats are missed (at once on the same host).

    Raises:
        NasError: another live process holds it (one line naming it).
    """
    key = _lease_key(name)

    def write() -> None:
        store.put_artifact(key, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                            "heartbeat": time.time()}).encode())

    with store.lock(f"supernet-lease:{name}"):
        check_lease(store, name, interval=interval)
        write()
    try:
        with Heartbeat(write, interval, "supernet-lease", first=False):
            yield
    finally:
        with contextlib.suppress(Exception), store.lock(f"supernet-lease:{name}"):
            doc = _lease(store, name)
            if doc is not None and _mine(doc):
                store.put_artifacts({key: None})


def active_supernet_job(store: Store, name: str) -> JobRow | None:
    """The job of supernet ``name`` that is queued or running, None when there is none."""
    job = supernet_job(store, name)
    return job if job is not None and job.state in ("queued", "running") else None


def queue_supernet(spec: SupernetSpec, store: Store) -> tuple[JobRow, bool]:
    """Queue the training of supernet ``spec.name`` for a worker; returns ``(job, created)``.

    The same request while its job is queued, running or done returns that job. Call
    :func:`nas.search.prepare_supernet` first (it checks the data, the space and the stored supernet).

    Raises:
        NasError: a job of that name with other settings is queued or running.
    """
    key = supernet_key(spec)
    active = active_supernet_job(store, spec.name)
    if active is not None and active.key != key:
        stored = SupernetSpec(**json.loads(active.settings_json))
        diff = "; ".join(f"{k} {json.dumps(v)} (given {json.dumps(getattr(spec, k))})"
                         for k, v in stored.model_dump().items() if v != spec.model_dump()[k])
        raise NasError(f"supernet {spec.name!r} is {active.state} as job {active.id} with other settings: {diff}; "
                       "accepted: its settings or another name")
    return store.add_job(kind=SUPERNET_JOB, study=supernet_scope(spec.name), trial=-1, key=key,
                         settings=spec.model_dump())


def supernet_state_line(job: JobRow) -> str:
    """One line on a supernet's job: its state, worker, progress (``nas supernet show``)."""
    info = job_info(job)
    p = info["progress"]
    epochs = f", {p['epochs_done']}/{p['epochs']} epochs stored" if "epochs_done" in p else ""
    if job.state == "queued":
        again = " again" if job.attempts else ""
        return (f"job {job.id}: queued{again}{epochs}, waiting for a 'nas worker' (without study names, or "
                f"--supernet {job.study.split(':', 1)[1]})" + (f"; last stopped: {job.error}" if job.error else ""))
    if job.state == "running":
        return (f"job {job.id}: running on worker {job.worker} (attempt {job.attempts}, last heartbeat "
                f"{info['heartbeat_at']}){epochs}")
    if job.state == "failed":
        return f"job {job.id}: failed after {job.attempts} attempt(s): {job.error}"
    return f"job {job.id}: done{epochs}"


def run_supernet_job(job: JobRow, store: Store, *, worker: str, stop: threading.Event, threads: int | None = None,
                     heartbeat: float = 10.0, wait: Callable[[Callable[[], object], str], object] | None = None,
                     outages: Outages | None = None) -> str:
    """Train a claimed supernet job to its end; returns its final state (``done``, ``failed``, ``queued``).

    ``queued``: the worker is stopping (``stop``, seen at the next epoch boundary) or the database
    went away; the next claim resumes at the last stored epoch. Settings that became impossible
    meanwhile (a supernet of that name trained with other settings, data unreadable on this
    worker) fail the job with one line.
    """
    wait = wait or (lambda fn, _what: fn())
    def body(hb: Any) -> dict[str, Any]:
        spec = SupernetSpec(**json.loads(job.settings_json))
        if stop.is_set():
            raise TrialInterrupted("worker stopping: before the training started")
        prepared = prepare_supernet(spec, store)
        done = prepared[2].epochs_done if prepared[2] is not None else 0
        hb.progress = {"epochs_done": done, "epochs": spec.epochs,
                       "message": f"resumed after epoch {done}" if done else "training"}
        hb.beat()

        def on_epoch(entry: dict[str, Any]) -> None:
            hb.progress = {"epochs_done": entry["epoch"], "epochs": spec.epochs,
                           "message": f"epoch {entry['epoch']} stored", "largest": entry.get("largest"),
                           "smallest": entry.get("smallest")}
            hb.beat()
            if entry["epoch"] < spec.epochs and (stop.is_set() or hb.lost.is_set()):
                raise TrialInterrupted(f"worker stopping after epoch {entry['epoch']}" if stop.is_set()
                                       else "job taken over by another worker")

        record = train_stored_supernet(spec, store, prepared=prepared, threads=threads, on_epoch=on_epoch)
        return {"status": record.status, "epochs_done": record.epochs_done, "seconds": record.seconds}

    return run_claimed(job, store, body, worker=worker, heartbeat=heartbeat, wait=wait, outages=outages,
                       after=lambda hb: f" after epoch {hb.progress.get('epochs_done', 0)}")
