"""Running a study to its target: local workers sharing the database.

``run_study`` runs until the study has its target number of COMPLETE trials in total (over
budget trials included: they are complete, with their cost), so running it again after a
crash or Ctrl-C resumes. Each worker asks for a new trial only while complete + running +
waiting trials are below the target, so the target is met without extra trials (two workers
asking in the same instant can overshoot by one). Heartbeats mark a killed worker's trial
failed, and ``RetryHeartbeatStaleTrialCallback`` re-queues its parameters.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from objectives import threads_per_worker
from storage import Store

from ._errors import NasError
from ._study import StudySpec, get_study_spec
from ._trial import TrialObjective, load_context

__all__ = ["Progress", "make_sampler", "progress", "run_study", "work"]

POLL_SECONDS = 1.0


def make_sampler(spec: StudySpec, worker: int = 0, n_target: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker (``seed + worker``)."""
    seed = spec.seed + worker
    target = n_target or spec.trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, target // 4)))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=max(4, min(10, target // 4)))


@dataclass(frozen=True)
class Progress:
    complete: int
    target: int
    running: int
    failed: int
    feasible: int
    trained: int
    pareto: int

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
                    sum(t.state == TrialState.FAIL for t in trials), len(feasible), trained, len(front))


def work(name: str, url: str, *, target: int | None = None, deadline: float | None = None, worker: int = 0,
         threads: int | None = None, callback: Callable[[], None] | None = None,
         max_consecutive_failures: int = 20) -> int:
    """Run trials of one study until it has ``target`` complete trials (or the deadline passes).

    Returns the number of trials this worker finished. Training failures (NaN loss, errors)
    fail that trial with its reason; the worker goes on, unless ``max_consecutive_failures``
    of its trials failed in a row (then the study itself is broken: NasError with the reason).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(url)
    try:
        row = store.get_study(name)
        if row is None:
            raise NasError(f"unknown study {name!r}")
        goal = target if target is not None else row.target_trials
        ctx = load_context(name, store, threads=threads)
        study = optuna.load_study(study_name=name, storage=store.optuna,
                                  sampler=make_sampler(ctx.spec, worker, goal))
        objective = TrialObjective(ctx)
        done = 0
        failures: list[str] = []

        def watch(_study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            if t.state == TrialState.FAIL:
                failures.append(t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason") or "error")
            else:
                failures.clear()

        while deadline is None or time.time() < deadline:
            trials = study.get_trials(deepcopy=False)
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            pending = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
            if complete >= goal:
                break
            if complete + pending >= goal:
                # Enough in flight: wait for them (a stale one is failed and re-queued).
                optuna.storages.fail_stale_trials(study)
                time.sleep(POLL_SECONDS)
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False, callbacks=[watch])
            done += 1
            if len(failures) >= max_consecutive_failures:
                raise NasError(f"{len(failures)} trials of {name!r} failed in a row, last: {failures[-1]}; "
                               "fix the study (e.g. its learning rate or data) and rerun")
            if callback:
                callback()
        return done
    finally:
        store.close()


def _worker_main(name: str, url: str, target: int, deadline: float | None, worker: int, threads: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        work(name, url, target=target, deadline=deadline, worker=worker, threads=threads)


def run_study(name: str, store: Store, *, trials: int | None = None, workers: int = 1, timeout: float | None = None,
              on_progress: Callable[[Progress], None] | None = None) -> Progress:
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
        work(name, store.url, target=target, deadline=deadline, threads=threads, callback=report)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(name, store.url, target, deadline, i, threads),
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
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
            raise
    final = progress(name, store, target)
    if on_progress:
        on_progress(final)
    return final

