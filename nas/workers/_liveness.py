"""Liveness: the one heartbeat thread, and riding out a database that goes away.

Every process that runs work for a study tells the database it is alive: a worker for its
trial, a worker for its refinement job, the Ray driver for the trials it has handed to Tune.
:class:`Heartbeat` is that thread (Optuna's own, ``optuna/storages/_heartbeat.py``, is the
model); what a beat writes is the caller's. When the database is unreachable (a restart, the
network), work goes on: :func:`wait_for_database` retries a step with backoff (a trial's result
within :data:`DB_WAIT`, then it is failed and queued again), and a worker's :class:`Outages`
tells its sweeps that every beat was missed, so nothing is judged dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from storage import error_line, is_transient, retry

__all__ = ["DB_WAIT", "Heartbeat", "Outages", "database_down", "trial_fail_reason", "wait_for_database"]

log = logging.getLogger("nas.worker")
T = TypeVar("T")

#: Seconds a trial that has finished training waits for an unreachable database to store its result
#: (evaluation, weights, attributes) before it is failed and queued again (``run_worker(db_wait=...)``).
DB_WAIT = 60.0

class Outages:
    """When a worker last met its database unreachable. One per worker (``run_worker`` makes it
    and hands it to its study workers, heartbeats, jobs and waits), so that its sweeps are judged
    by the outages it met, not by those of another worker of the same process (threads, tests)."""

    def __init__(self) -> None:
        self._last = -1e9  # time.monotonic() of the last outage met

    def down(self, e: BaseException) -> bool:
        """Whether ``e`` means the database is unreachable for now (:func:`storage.is_transient`);
        remembers when it last was."""
        down = is_transient(e)
        if down:
            self._last = time.monotonic()
        return down

    def within(self, seconds: float) -> bool:
        """Whether the database was met unreachable in the last ``seconds``. Then every worker
        missed beats, so no trial or job is judged dead by its heartbeat yet."""
        return time.monotonic() - self._last <= seconds


def database_down(e: BaseException, outages: Outages | None = None) -> bool:
    """Whether ``e`` means the database is unreachable for now (:func:`storage.is_transient`);
    ``outages`` (the worker's) remembers when it last was."""
    return outages.down(e) if outages is not None else is_transient(e)


def wait_for_database(fn: Callable[[], T], what: str, stop: threading.Event | None = None,
                      max_wait: float | None = None, outages: Outages | None = None) -> T:
    """Run ``fn``; while the database is unreachable, retry with backoff (0.5 s .. 15 s, never past
    the window): for at most ``max_wait`` seconds (None: as long as it takes; a stopping worker, ``stop``
    set, gives up after a minute), then the last error is raised. Other errors are raised at once.
    ``outages``: the worker's, which each unreachable moment is told to."""
    warned: list[bool] = []

    def warn(e: Exception) -> None:
        if not warned:
            log.warning("database unavailable while %s (%s); retrying", what, error_line(e))
            warned.append(True)

    return retry(fn, retryable=lambda e: database_down(e, outages), delay=0.5, max_delay=15.0, max_wait=max_wait,
                 give_up=lambda waited: stop is not None and stop.is_set() and waited > 60, on_retry=warn)


def trial_fail_reason(e: BaseException) -> str:
    """``TrainingError.reason`` (e.g. NaN loss at epoch 3), else the exception's type and text."""
    return str(getattr(e, "reason", None) or f"{type(e).__name__}: {e}")


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on a daemon thread while the ``with`` block runs.

    ``beat`` writes what the caller's liveness is (a trial's heartbeat row, a job's heartbeat and
    progress) and rides out database errors itself: a beat that fails is retried by the next one.

    Args:
        beat: the write; called from the thread (and from :meth:`now`).
        interval: seconds between beats.
        name: the thread's name.
        first: beat once as the block starts (a trial is then never without a heartbeat).
        join_timeout: how long leaving the block waits for a beat in flight (None: as long as it
            takes); a beat stuck on a dead connection is a daemon and dies with the process.
        outages: the worker's, told when a beat fails on an unreachable database.
    """

    def __init__(self, beat: Callable[[], object], interval: float, name: str, *, first: bool = True,
                 join_timeout: float | None = None, outages: Outages | None = None) -> None:
        self._beat, self.interval, self._first = beat, interval, first
        self._outages = outages
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def now(self) -> None:
        """Beat at once (to publish fresh progress without waiting for the next interval)."""
        self._beat()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception as e:  # noqa: BLE001 -- a failed beat never ends the beating (nor the work)
                database_down(e, self._outages)
                log.warning("heartbeat failed (%s: %s); the next one retries", type(e).__name__, error_line(e))

    def __enter__(self) -> Heartbeat:
        if self._first:
            self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._join_timeout)
