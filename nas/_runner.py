"""Running a study to its target: local worker processes sharing the database.

``run_study`` runs until the study has its target number of finished trials (COMPLETE, over
budget trials included since they are complete with their cost, plus PRUNED ones), so running
it again after a crash or Ctrl-C resumes. The trial loop, the slot lock that keeps concurrent
workers from overshooting the target and the failure handling live in :mod:`nas._worker`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from objectives import threads_per_worker
from storage import Store

from ._errors import NasError
from ._study import get_study_spec
from ._worker import make_pruner, make_sampler, run_worker

__all__ = ["Progress", "make_pruner", "make_sampler", "progress", "run_study", "work"]

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Progress:
    complete: int
    target: int
    running: int
    failed: int
    feasible: int
    trained: int
    pareto: int
    pruned: int = 0

    @property
    def finished(self) -> int:
        """Trials that count towards the target: complete + pruned."""
        return self.complete + self.pruned

    @property
    def feasible_share(self) -> float:
        return self.feasible / self.complete if self.complete else 0.0


def progress(name: str, store: Store, target: int | None = None) -> Progress:
    from ._pareto import front_trials

    study = optuna.load_study(study_name=name, storage=store.optuna)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if t.user_attrs.get("status") in ("trained", "reused")]
    trained = sum(t.user_attrs.get("status") == "trained" for t in complete)
    tgt = target if target is not None else store.get_study(name).target_trials  # type: ignore[union-attr]
    front = front_trials(get_study_spec(name, store), feasible) if feasible else []
    return Progress(len(complete), tgt, sum(t.state == TrialState.RUNNING for t in trials),
                    sum(t.state == TrialState.FAIL for t in trials), len(feasible), trained, len(front),
                    sum(t.state == TrialState.PRUNED for t in trials))


def work(name: str, url: str, *, target: int | None = None, deadline: float | None = None, worker: int = 0,
         threads: int | None = None, callback: Callable[[], None] | None = None,
         max_consecutive_failures: int = 20, heartbeat: int = 10, stop: threading.Event | None = None) -> int:
    """Run trials of one study in this process until it has its target of finished trials.

    Returns the number of trials this worker ran. See :func:`nas._worker.run_worker`.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if target is not None:
        store = Store(url)
        try:
            store.set_target(name, target)
        finally:
            store.close()
    stats = run_worker([name], url, until_done=True, deadline=deadline, worker=worker, threads=threads, stop=stop,
                       heartbeat=heartbeat, max_consecutive_failures=max_consecutive_failures,
                       on_trial=(lambda _n, _t: callback()) if callback else None)
    return stats.trials


def _worker_main(name: str, url: str, deadline: float | None, worker: int, threads: int, heartbeat: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish or cleanly fail the trial, then exit
    with contextlib.suppress(KeyboardInterrupt):
        work(name, url, deadline=deadline, worker=worker, threads=threads, heartbeat=heartbeat, stop=stop)


def run_study(name: str, store: Store, *, trials: int | None = None, workers: int = 1, timeout: float | None = None,
              on_progress: Callable[[Progress], None] | None = None, heartbeat: int = 10) -> Progress:
    """Run ``name`` until it has its target of complete trials (``trials`` raises the target).

    Args:
        workers: local worker processes sharing the database; threads per worker are sized
            so that workers x threads <= cores.
        timeout: stop starting new trials after this many seconds.
        on_progress: called with a :class:`Progress` after each trial (or poll with workers).

    Raises:
        NasError: unknown study or bad arguments.
    """
    get_study_spec(name, store)  # unknown study: NasError listing the studies there
    row = store.get_study(name)
    assert row is not None
    if trials is not None:
        if trials < 1:
            raise NasError(f"--trials: must be >= 1, got {trials}")
        if trials != row.target_trials:
            store.set_target(name, trials)
    target = trials if trials is not None else row.target_trials
    if workers < 1 or workers > 64:
        raise NasError(f"--workers: must be between 1 and 64, got {workers}")
    if timeout is not None and timeout <= 0:
        raise NasError(f"--timeout: must be positive seconds, got {timeout}")
    deadline = time.time() + timeout if timeout else None
    threads = threads_per_worker(workers)
    report = (lambda: on_progress(progress(name, store, target))) if on_progress else None
    if workers == 1:
        work(name, store.url, deadline=deadline, threads=threads, callback=report, heartbeat=heartbeat)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(name, store.url, deadline, i, threads, heartbeat),
                             name=f"nas-worker-{i}") for i in range(workers)]
        for p in procs:
            p.start()
        try:
            while any(p.is_alive() for p in procs):
                if report:
                    report()
                for p in procs:
                    p.join(timeout=POLL_SECONDS / len(procs))
        except KeyboardInterrupt:
            # The workers got the SIGINT too: each fails its trial cleanly and queues it again.
            for p in procs:
                p.join(timeout=30)
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
            raise
    final = progress(name, store, target)
    if on_progress:
        on_progress(final)
    return final

