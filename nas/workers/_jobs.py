"""Queued refinement jobs: requested through the HTTP API (or ``nas refine --queue``), run by workers.

The API never trains: ``POST /studies/{name}/trials/{n}/refine`` only validates the request and
queues a job (``lightnas_jobs``). Every ``nas worker`` (unless ``--no-jobs``) looks for queued
jobs of the studies it serves before it claims a trial, runs the refinement
(:func:`nas.refine.refine_trial`) and records progress and the result on the job.
``nas study run`` (local or Ray) runs trials only: it ends when the target is met.

Failures. A job is claimed under a database-wide lock. Its worker refreshes the job's heartbeat
every ``--heartbeat`` seconds (stored on the job); a job silent for 3x that (worker killed)
goes back to the queue at the next claim of any worker, at most ``max_attempts`` times, except
right after a database outage, when every worker missed beats. A refinement stores every candidate as
soon as it exists and continues from the last stored step, so a re-run job repeats at most the
step that was in progress. SIGTERM stops a job at its next training epoch and queues it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from storage import JobRow, Store, error_line

from .._errors import NasError, TrialInterrupted
from ..refine import RefineEvent, RefineSettings, check_parent, refine_trial, settings_key
from ..search import get_study_spec, past_drop
from ._liveness import Heartbeat, Outages, database_down, trial_fail_reason

__all__ = ["candidate_info", "iso_utc", "job_info", "queue_refinement", "run_claimed", "run_job"]

log = logging.getLogger("nas.worker")


def queue_refinement(name: str, number: int, store: Store, settings: RefineSettings) -> tuple[JobRow, bool]:
    """Queue the refinement of trial ``number`` of study ``name``; returns ``(job, created)``.

    A request for work that is already queued, running or done (same trial, settings and
    architecture) returns that job instead of queueing it twice.

    Raises:
        NasError: unknown study or trial, or a trial that cannot be refined (over budget, not trained).
    """
    study_spec = get_study_spec(name, store)
    trial = check_parent(name, number, store)
    key = settings_key(settings, study_spec, trial.user_attrs["spec_hash"])
    return store.add_job(kind="refine", study=name, trial=number, key=key, settings=settings.model_dump())


def job_info(job: JobRow, store: Store | None = None) -> dict[str, Any]:
    """A job as the API and the CLI show it; with ``store``, its stored candidates too."""
    info: dict[str, Any] = {
        "id": job.id, "kind": job.kind, "study": job.study, "trial": job.trial, "state": job.state,
        "attempts": job.attempts, "worker": job.worker, "settings": json.loads(job.settings_json),
        "progress": json.loads(job.progress_json or "{}"), "error": job.error,
        "created_at": iso_utc(job.created_at), "started_at": iso_utc(job.started_at),
        "heartbeat_at": iso_utc(job.heartbeat_at), "finished_at": iso_utc(job.finished_at),
    }
    if store is not None:
        rows = store.get_refinements(job.study, parent_trial=job.trial, settings_hash=job.key)
        info["candidates"] = [candidate_info(r) for r in rows]
    return info


def candidate_info(r: Any) -> dict[str, Any]:
    cost = json.loads(r.cost_json)
    return {"refined": r.id, "step": r.step, "parent_step": r.parent_step, "method": r.method,
            "spec_hash": r.spec_hash, "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
            **{k: cost.get(k) for k in ("flops", "params", "depth", "hw_cost")}, "past_drop": past_drop(r)}


def iso_utc(t: Any) -> str | None:
    """A time lightnas stored (UTC; SQLite gives it back naive) as ISO 8601 with its offset."""
    if t is None:
        return None
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)).isoformat()


class _JobLiveness:
    """What a job's heartbeat publishes (its latest progress) and learns (that another worker took
    the job over, presuming this one dead)."""

    def __init__(self, store: Store, job_id: int, worker: str) -> None:
        self.store, self.job_id, self.worker = store, job_id, worker
        self.progress: dict[str, Any] = {}
        self.lost = threading.Event()

    def beat(self) -> None:
        try:
            if not self.store.job_heartbeat(self.job_id, self.worker, dict(self.progress)):
                self.lost.set()
        except SQLAlchemyError:
            pass  # database away: the next beat retries; candidates already stored stay stored


def run_job(job: JobRow, store: Store, *, worker: str, stop: threading.Event, threads: int | None = None,
            heartbeat: float = 10.0, wait: Callable[[Callable[[], object], str], object] | None = None,
            outages: Outages | None = None) -> str:
    """Run a claimed job to its end; returns its final state (``done``, ``failed``, ``queued``).

    ``queued``: the worker is stopping (``stop``) or the database went away; the job waits for
    the next claim and continues from its last stored step. Bad requests that became impossible
    meanwhile (study deleted, trial gone) fail the job with a one-line reason. ``outages``: the
    worker's (``nas.workers.Outages``), told when the database is met unreachable.
    """
    wait = wait or (lambda fn, _what: fn())
    if job.kind != "refine":
        state = "failed"
        wait(lambda: store.finish_job(job.id, worker, state, error=f"unknown job kind {job.kind!r}"), "failing a job")
        return state
    def body(hb: _JobLiveness) -> dict[str, Any]:
        def on_event(e: RefineEvent) -> None:
            hb.progress = {"stored": e.stored, "expected": e.expected, "message": e.message, "kind": e.kind}
            if e.kind in ("candidate", "resumed", "done"):
                hb.beat()
            if stop.is_set() or hb.lost.is_set():
                raise TrialInterrupted("worker stopping" if stop.is_set() else "job taken over by another worker")

        def should_stop() -> bool:
            return stop.is_set() or hb.lost.is_set()

        settings = RefineSettings(**json.loads(job.settings_json))
        rows = refine_trial(job.study, job.trial, store, settings, threads=threads, on_event=on_event,
                            should_stop=should_stop)
        return {"candidates": [r.id for r in rows]}

    return run_claimed(job, store, body, worker=worker, heartbeat=heartbeat, wait=wait, outages=outages,
                       label=f" (refine trial {job.trial})")


def run_claimed(job: JobRow, store: Store, body: Callable[[_JobLiveness], dict[str, Any]], *, worker: str,
                heartbeat: float, wait: Callable[[Callable[[], object], str], object], outages: Outages | None,
                label: str = "", after: Callable[[_JobLiveness], str] = lambda hb: "") -> str:
    """Run ``body(liveness)`` for a claimed job under its heartbeat and record its end once: ``done`` with
    what ``body`` returns, ``queued`` when the worker stops (:class:`TrialInterrupted`) or the database is
    away, ``failed`` with a one-line reason otherwise; SIGINT requeues it and propagates. A job another
    worker took over meanwhile is left to it (``queued``, nothing recorded). ``label`` and ``after(hb)``
    complete the log lines. Returns the final state."""
    hb = _JobLiveness(store, job.id, worker)
    state, error, result = "failed", None, None
    with Heartbeat(hb.beat, heartbeat, f"job-heartbeat-{job.id}", first=False, join_timeout=heartbeat + 5,
                   outages=outages):
        try:
            result = body(hb)
            state = "done"
        except TrialInterrupted as e:
            state, error = "queued", str(e)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                store.finish_job(job.id, worker, "queued", error="worker interrupted (SIGINT)")
            raise
        except Exception as e:  # noqa: BLE001 -- a failed job never stops the worker
            if database_down(e, outages):
                state, error = "queued", f"database unavailable: {error_line(e)}"
            else:
                error = str(e) if isinstance(e, NasError) else trial_fail_reason(e)
                log.error("%s job %d%s failed: %s", job.study, job.id, label, error)
    if hb.lost.is_set():
        return "queued"  # someone else holds it now: nothing of ours to record
    wait(lambda: store.finish_job(job.id, worker, state, result=result, error=error), "finishing a job")
    log.info("%s job %d%s %s%s%s", job.study, job.id, label, state, after(hb), f": {error}" if error else "")
    return state
