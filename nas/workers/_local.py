"""Running a study to its target: local worker processes sharing the database.

``run_study`` runs until the study has its target number of networks evaluated within its
budget (trained, reused, or stopped early; samples rejected over budget do not count), so
running it again after a crash, Ctrl-C or SIGTERM resumes. SIGTERM is handled as Ctrl-C
(:class:`nas.Terminated`), and worker processes die with the run, even when it is killed by
``kill -9``. The trial loop, the slot lock that keeps concurrent
workers from overshooting the target and the failure handling live in :mod:`nas.workers._worker`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives import threads_per_worker, worker_devices
from storage import Store

from .._errors import NasError, Terminated
from ..search import Status, front_trials, get_study_spec, status_of
from ._fast import is_supernet_study, run_fast
from ._worker import REJECTION_STREAK, finished, in_evaluation, run_worker

__all__ = ["MAX_TARGET", "Progress", "check_run", "progress", "run_study", "work"]

POLL_SECONDS = 1.0
#: The largest target a study takes (as ``StudySpec.trials``).
MAX_TARGET = 1_000_000


@dataclass(frozen=True)
class Progress:
    """Trials of a study: ``complete`` (Optuna COMPLETE, ``rejected`` over-budget samples among
    them), ``feasible`` (complete within budget: ``trained`` + reused), ``pruned`` (stopped early)."""

    complete: int
    target: int
    running: int
    failed: int
    feasible: int
    trained: int
    pareto: int
    pruned: int = 0
    rejected: int = 0
    supernet: int = 0  #: evaluated with a supernet's weights (supernet accuracy), among ``feasible``
    finetuned: int = 0  #: added by fine-tuning members (``nas study finetune``), among ``feasible``; not counted

    @property
    def finished(self) -> int:
        """Trials that count towards the target: networks evaluated within the budget (complete
        within budget + pruned); over-budget rejections do not count."""
        return self.complete - self.rejected - self.finetuned + self.pruned

    @property
    def feasible_share(self) -> float:
        return self.feasible / self.complete if self.complete else 0.0

    def summary(self) -> str:
        """``12/16 within budget (10 trained, 2 reused, 1 stopped early), 40 rejected over budget, 0 failed``."""
        parts = [f"{self.trained} trained", f"{self.feasible - self.trained - self.supernet - self.finetuned} reused"]
        if self.supernet:
            parts = [f"{self.supernet} evaluated on the supernet"] + (
                parts if self.feasible > self.supernet + self.finetuned else [])
        if self.finetuned:
            parts.append(f"{self.finetuned} fine-tuned from the supernet, not counted")
        if self.pruned:
            parts.append(f"{self.pruned} stopped early")
        return (f"{self.finished}/{self.target} within budget ({', '.join(parts)}), {self.rejected} rejected over "
                f"budget, {self.failed} failed")


def progress(name: str, store: Store, target: int | None = None,
             trials: Sequence[FrozenTrial] | None = None) -> Progress:
    """The study's :class:`Progress`, read fresh (``target``: the stored one when None; ``trials``: the
    study's trials as a worker holds them, instead of reading them all from the database)."""
    if trials is None:
        trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if status_of(t) in Status.EVALUATED]
    trained = sum(status_of(t) == Status.TRAINED for t in complete)
    tgt = target if target is not None else store.get_study(name).target_trials  # type: ignore[union-attr]
    front = front_trials(get_study_spec(name, store), feasible) if feasible else []
    rejected = sum(status_of(t) == Status.OVER_BUDGET for t in complete)
    return Progress(len(complete), tgt, sum(t.state == TrialState.RUNNING for t in trials),
                    sum(t.state == TrialState.FAIL for t in trials), len(feasible), trained, len(front),
                    sum(t.state == TrialState.PRUNED for t in trials), rejected,
                    sum(status_of(t) == Status.SUPERNET for t in complete),
                    sum(status_of(t) == Status.FINETUNED for t in complete))


def work(name: str, url: str, *, target: int | None = None, deadline: float | None = None, worker: int = 0,
         threads: int | None = None, callback: Callable[[], None] | None = None,
         max_consecutive_failures: int = 20, heartbeat: int = 10, stop: threading.Event | None = None,
         rejection_streak: int = REJECTION_STREAK, device: str | None = None, fast: bool = True,
         on_trials: Callable[[list[FrozenTrial]], None] | None = None) -> int:
    """Run trials of one study in this process until it has its target of finished trials.

    Returns the number of trials this worker ran. See :func:`nas.workers.run_worker`. A study on a
    supernet runs on the fast path (``fast``; :mod:`nas.workers._fast`): its trials are asked and told
    in memory and stored in batches, ``callback`` called after each batch, or ``on_trials`` with the
    study's finished trials as the worker holds them (a progress display then reads no database).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if target is not None:
        store = Store(url, mode="existing")
        try:
            store.set_target(name, target)
        finally:
            store.close()
    if fast and _on_supernet(name, url):
        # Trials of milliseconds: asked and told in memory, stored in batches (nas.workers._fast).
        return run_fast(name, url, deadline=deadline, worker=worker, threads=threads, stop=stop, heartbeat=heartbeat,
                        max_consecutive_failures=max_consecutive_failures, rejection_streak=rejection_streak,
                        device=device,
                        on_batch=on_trials or ((lambda _trials: callback()) if callback else None))
    stats = run_worker([name], url, until_done=True, deadline=deadline, worker=worker, threads=threads, stop=stop,
                       heartbeat=heartbeat, max_consecutive_failures=max_consecutive_failures,
                       rejection_streak=rejection_streak, device=device,
                       on_trial=(lambda _n, _t: callback()) if callback else None)
    return stats.trials


def _on_supernet(name: str, url: str) -> bool:
    store = Store(url, mode="existing")
    try:
        return is_supernet_study(name, store)
    finally:
        store.close()


#: How often a worker process looks whether its parent is still there (where the kernel cannot tell it).
PARENT_POLL = 1.0
#: How long a worker whose parent died may take to give its trial back before it is killed outright.
ORPHAN_GRACE = 60.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """Make this worker process end when ``parent`` (the ``nas study run`` that started it) dies, even
    by ``kill -9``: SIGTERM then (handled as :class:`Terminated`: the running trial is failed and queued
    again at once), and SIGKILL if that has not ended it within :data:`ORPHAN_GRACE`. On Linux the kernel
    sends the SIGTERM (``prctl(PR_SET_PDEATHSIG)``); everywhere a daemon thread also watches
    ``os.getppid()`` change, which covers other systems and a parent that died before the ``prctl``."""
    import ctypes
    import ctypes.util
    import os
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)  # no-op if the kernel's SIGTERM came first (handled once)
        time.sleep(ORPHAN_GRACE)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _terminate_once(stop: threading.Event | None = None, *, defer: bool = False) -> Callable[[int, Any], None]:
    """A SIGTERM handler for Ctrl-C's path: the first SIGTERM sets ``stop`` and raises
    :class:`Terminated` (the running trial is failed and queued again at once), with ``defer`` only
    while a trial is being evaluated (:func:`nas.workers._worker.in_evaluation`): in the worker loop's
    own database steps (claiming a trial, telling a result) ``stop`` alone ends the loop milliseconds
    later, so that no trial is left RUNNING half claimed or half told. A second SIGTERM is ignored."""
    fired = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        if fired.is_set():
            return
        fired.set()
        if stop is not None:
            stop.set()
        if not defer or in_evaluation():
            raise Terminated("terminated (SIGTERM)")

    return handler


@contextlib.contextmanager
def sigterm_interrupts(stop: threading.Event | None = None, *, defer: bool = False) -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM interrupts it as Ctrl-C does, raising
    :class:`Terminated`, a ``KeyboardInterrupt`` (with ``defer``, see :func:`_terminate_once`: a
    block that ends because ``stop`` was set raises it then); elsewhere (another thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _terminate_once(stop, defer=defer)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stop is not None and stop.is_set():  # the SIGTERM came between two steps: the block ended cleanly
        raise Terminated("terminated (SIGTERM)")


def _worker_main(name: str, url: str, deadline: float | None, worker: int, threads: int, heartbeat: int,
                 errors: Any, device: str | None = None, parent: int | None = None) -> None:
    stop = threading.Event()
    # SIGTERM (from the parent, or the kernel when the parent died): fail the trial cleanly, queue it
    # again and exit, as on Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate_once(stop, defer=True))
    if parent is not None:
        _die_with(parent)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            work(name, url, deadline=deadline, worker=worker, threads=threads, heartbeat=heartbeat, stop=stop,
                 device=device)
        except NasError as e:  # the study cannot go on (failures or rejections in a row): tell the parent
            errors.put(str(e))


def check_run_args(*, trials: int | None = None, workers: int = 1, timeout: float | None = None,
                   workers_per_device: int = 1, device: str = "auto") -> None:
    """The checks of :func:`check_run` that need no study (a command that creates the study it
    runs makes them before it writes anything).

    Raises:
        NasError: workers outside 1..64, a timeout that is not a positive number of seconds, a
            target outside 1..1,000,000, GPUs the device cannot give.
    """
    if workers < 1 or workers > 64:
        raise NasError(f"must be between 1 and 64, got {workers}", field="workers")
    if workers_per_device < 1 or workers_per_device > 64:
        raise NasError(f"must be between 1 and 64, got {workers_per_device}", field="workers_per_device")
    try:
        worker_devices(workers, device=device, per_device=workers_per_device)
    except ValueError as e:
        raise NasError.of(e) from None
    if timeout is not None and not (0 < timeout < 1e9):
        raise NasError(f"must be positive seconds, got {timeout}", field="timeout")
    if trials is not None and not 1 <= trials <= MAX_TARGET:
        raise NasError(f"must be between 1 and {MAX_TARGET:,}, got {trials}", field="trials")


def check_run(name: str, store: Store, *, trials: int | None = None, workers: int = 1,
              timeout: float | None = None, workers_per_device: int = 1) -> Any:
    """Check a run's arguments against the stored study before anything is written or shown;
    returns the study's row.

    Raises:
        NasError: unknown or unreadable study, workers outside 1..64, a timeout that is not a
            positive number of seconds, a target outside 1..1,000,000 or below the networks
            already evaluated within the budget.
    """
    study_spec = get_study_spec(name, store)  # unknown study: NasError listing the studies there
    row = store.get_study(name)
    assert row is not None
    check_run_args(trials=trials, workers=workers, timeout=timeout, workers_per_device=workers_per_device,
                   device=study_spec.device)
    if trials is not None:
        done = finished(store, name)
        if trials < done:
            raise NasError(f"{name} has {done} networks evaluated within its budget already; "
                           f"the target cannot go below that (got {trials})", field="trials")
    return row


def run_study(name: str, store: Store, *, trials: int | None = None, workers: int = 1, timeout: float | None = None,
              on_progress: Callable[[Progress], None] | None = None, heartbeat: int = 10,
              workers_per_device: int = 1) -> Progress:
    """Run ``name`` until it has its target of complete trials (``trials`` raises the target).

    Args:
        workers: local worker processes sharing the database; threads per worker are sized
            so that workers x threads <= cores.
        workers_per_device: on CUDA, workers share each GPU this many at a time (tiny networks
            leave one GPU mostly idle): worker ``i`` trains on ``cuda:(i // workers_per_device)``;
            ignored on the CPU. See :func:`objectives.worker_devices`.
        timeout: stop starting new trials after this many seconds.
        on_progress: called with a :class:`Progress` after each trial (or poll with workers).

    Raises:
        NasError: unknown study or bad arguments.
        KeyboardInterrupt: Ctrl-C, or :class:`nas.Terminated` for a SIGTERM to this process (called
            from the main thread): the running trials were failed and queued again, the workers stopped.
    """
    # One worker runs in this process: its loop stops on SIGTERM as a worker process does (_worker_main).
    stop = threading.Event() if workers == 1 else None
    with sigterm_interrupts(stop, defer=workers == 1):
        return _run_study(name, store, trials=trials, workers=workers, timeout=timeout, on_progress=on_progress,
                          heartbeat=heartbeat, workers_per_device=workers_per_device, stop=stop)


def _run_study(name: str, store: Store, *, trials: int | None, workers: int, timeout: float | None,
               on_progress: Callable[[Progress], None] | None, heartbeat: int, workers_per_device: int,
               stop: threading.Event | None = None) -> Progress:
    row = check_run(name, store, trials=trials, workers=workers, timeout=timeout,
                    workers_per_device=workers_per_device)
    if trials is not None and trials != row.target_trials:
        store.set_target(name, trials)
    target = trials if trials is not None else row.target_trials
    deadline = time.time() + timeout if timeout else None
    threads = threads_per_worker(workers)
    devices = worker_devices(workers, device=get_study_spec(name, store).device, per_device=workers_per_device)
    report = (lambda: on_progress(progress(name, store, target))) if on_progress else None
    if workers == 1:
        work(name, store.url, deadline=deadline, threads=threads, callback=report, heartbeat=heartbeat,
             device=devices[0], stop=stop,
             on_trials=(lambda ts: on_progress(progress(name, store, target, trials=ts))) if on_progress else None)
        if stop is not None and stop.is_set():
            raise Terminated("terminated (SIGTERM)")
    else:
        ctx = mp.get_context("spawn")
        errors = ctx.SimpleQueue()
        # Each worker dies with this process, even by kill -9 (``_die_with``).
        procs = [ctx.Process(target=_worker_main,
                             args=(name, store.url, deadline, i, threads, heartbeat, errors, devices[i], os.getpid()),
                             name=f"nas-worker-{i}") for i in range(workers)]
        try:
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                if report:
                    report()
                for p in procs:
                    p.join(timeout=POLL_SECONDS / len(procs))
        except KeyboardInterrupt as e:
            # Ctrl-C: the workers got the SIGINT too (the terminal's process group). SIGTERM came to this
            # process alone: pass it on. Either way each fails its trial cleanly and queues it again.
            if isinstance(e, Terminated):
                for p in procs:
                    if p.pid is not None and p.is_alive():
                        with contextlib.suppress(OSError):
                            os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                if p.pid is not None:
                    p.join(timeout=30)
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
            raise
        if not errors.empty():
            raise NasError(errors.get())
    final = progress(name, store, target)
    if on_progress:
        on_progress(final)
    return final

