"""Workers: run trials of one or many studies until their targets are met, surviving failures.

One loop serves ``nas study run`` (one study, stop when its target is met) and ``nas worker``
(any study with work left, long-running, waits with backoff when there is none).

Claiming a trial. A study's target counts the networks evaluated within its budget (trained,
reused or stopped early: COMPLETE + PRUNED trials, less the COMPLETE ones rejected over budget,
``Store.study_counts``). A worker claims a slot under a database-wide lock (PostgreSQL advisory
lock / SQLite ``flock``): it counts those + RUNNING trials and asks Optuna for a trial only
while that is below the target, so concurrent workers never overshoot it (a running trial may
still turn out over budget: it frees its slot in milliseconds). Asking pops WAITING trials
first: those are retries of killed or interrupted trials.

Rejections. Over-budget samples stay Optuna trials (their cost and constraint values teach the
sampler the feasible region) but do not count. A worker that meets ``REJECTION_STREAK`` of them
in a row stops the study with one line naming the budget and the space's share within it.

Failures.
* ``kill -9`` of a worker: its trial's heartbeat goes stale; any worker then fails it
  (``fail_stale_trials``) and ``RetryHeartbeatStaleTrialCallback`` queues its parameters again.
* SIGTERM/SIGINT (``stop`` set): the running trial stops at the next epoch boundary, is failed
  with the reason ``worker stopping`` and queued again, and the worker returns. (Ctrl-C, and SIGTERM
  under ``nas study run``, raise ``KeyboardInterrupt``/``Terminated`` instead: the trial is failed and
  queued again at once.) Over-budget and
  reused trials take milliseconds and simply finish.
* The database goes away (restart, network): every database step is retried with backoff until
  it is back; training goes on, heartbeats fail quietly and resume, a trained network's result is
  stored and told once it is back (within ``db_wait``, 60 s by default), so nothing is lost or
  trained twice. A longer outage, or one met before training, fails that trial (its evaluation,
  if stored, is reused by the retry).
* Training errors (NaN loss) fail that trial with its reason; ``max_consecutive_failures`` in a
  row of one study mean the study itself is broken (its learning rate, its data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from storage import RetryTrial, Store, error_line

from .._errors import NasError, Terminated, TrialInterrupted
from ..search import (
    SINGLE_METRIC_PRUNERS,
    Status,
    TrialObjective,
    get_study_spec,
    load_context,
    make_pruner,
    make_sampler,
    record_of,
    status_of,
)
from ._liveness import DB_WAIT, Heartbeat, Outages, database_down, trial_fail_reason, wait_for_database

__all__ = ["REJECTION_STREAK", "StudyWorker", "WorkerStats", "evaluating", "fail_and_requeue", "finished",
           "in_evaluation", "run_worker", "slots_left"]

log = logging.getLogger("nas.worker")

#: Over-budget samples in a row after which a worker gives up on a study. At the 20 % share
#: a fitted space keeps within its budget, 200 rejections in a row have probability 0.8**200
#: (about 4e-20); at a 1 % share (the warning threshold) about 0.13.
REJECTION_STREAK = 200


#: How deep this process's main thread is in trial evaluations (see :func:`evaluating`).
_evaluating = 0


@contextlib.contextmanager
def evaluating() -> Iterator[None]:
    """Mark the block as a trial's evaluation (training, mostly): a SIGTERM handled as Ctrl-C may interrupt
    it at once (:class:`nas.Terminated`, the trial then failed and queued again). Elsewhere in the worker
    loop (claiming a trial, telling its result) the SIGTERM only sets the worker's ``stop``, so that no
    trial is left RUNNING half claimed or half told. Main thread only, where signal handlers run."""
    global _evaluating
    _evaluating += 1
    try:
        yield
    finally:
        _evaluating -= 1


def in_evaluation() -> bool:
    """Whether this process's main thread is evaluating a trial now (:func:`evaluating`)."""
    return _evaluating > 0


def study_identity(store: Store, name: str) -> tuple[str, Any] | None:
    """What tells study ``name`` from a study deleted and created again under that name: its name and
    creation time (``lightnas_studies``); None when there is no such study."""
    row = store.get_study(name)
    return None if row is None else (name, row.created_at)


def _deleted_meanwhile(store: Store, name: str, identity: tuple[str, Any] | None,
                       study_id: int | None = None) -> bool:
    """Whether study ``name`` of ``identity`` is gone (deleted, or replaced by a new study of its name),
    its Optuna study included (and, given ``study_id``, that Optuna study is another one now)."""
    if study_identity(store, name) != identity:
        return True
    try:
        found = store.optuna.get_study_id_from_name(name)
    except KeyError:
        return True
    return study_id is not None and found != study_id


def slots_left(store: Store, name: str, target: int) -> int:
    """How many more trials may be started now: target - counted - running."""
    counts = store.study_counts(name)
    return target - counts["COUNTED"] - counts.get("RUNNING", 0)


def finished(store: Store, name: str) -> int:
    """Trials that count towards the target: networks evaluated within the budget."""
    return store.study_counts(name)["COUNTED"]


def fail_and_requeue(storage: optuna.storages.RDBStorage, study: optuna.Study, trial_id: int, reason: str,
                     retry: RetryTrial) -> bool:
    """Fail a RUNNING trial whose runner is gone, with ``reason``, and queue its parameters
    again. False if it had finished meanwhile (someone else failed or completed it).
    Call under the study's lock, so no new trial takes the freed slot first."""
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    retry(study, storage.get_trial(trial_id))
    return True


@dataclass
class WorkerStats:
    """What one worker did: trials by final state, and queued jobs (refinements) by final state."""

    trials: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)

    def add(self, state: str) -> None:
        self.trials += 1
        self.by_state[state] = self.by_state.get(state, 0) + 1


class StudyWorker:
    """Runs trials of one study in this process (data loaded once)."""

    def __init__(self, name: str, store: Store, *, worker: int = 0, threads: int | None = None,
                 stop: threading.Event | None = None, max_retry: int = 3, device: str | None = None,
                 db_wait: float = DB_WAIT, outages: Outages | None = None) -> None:
        self.name, self.store = name, store
        self.stop = stop or threading.Event()
        self.db_wait = db_wait
        self.outages = outages or Outages()  # the worker's (run_worker's), shared by its studies
        self.identity = study_identity(store, name)  # read first: a study re-created meanwhile is seen as new
        self.ctx = load_context(name, store, threads=threads, device=device)
        study_spec = self.ctx.study_spec
        self.study = optuna.load_study(study_name=name, storage=store.optuna,
                                       sampler=make_sampler(study_spec, worker, self.target, store=store,
                                                            data=self.ctx.data),
                                       pruner=make_pruner(study_spec))
        # A trained network's result waits up to db_wait seconds for an unreachable database.
        self.objective = TrialObjective(self.ctx, prune=study_spec.pruner in SINGLE_METRIC_PRUNERS,
                                        should_stop=self.stop.is_set,
                                        wait=lambda step, what: wait_for_database(step, what, self.stop,
                                                                                  max_wait=self.db_wait,
                                                                                  outages=self.outages))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Same re-queueing as for stale trials (system attrs failed_trial / retry_history).
            self.retry = RetryTrial(max_retry=max_retry)
        self.failures: list[str] = []
        self.rejections = 0  # over-budget samples in a row
        self.ident = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def target(self) -> int:
        row = self.store.get_study(self.name)
        if row is None:
            raise NasError(f"study {self.name!r} was deleted")
        return row.target_trials

    def done(self) -> bool:
        return finished(self.store, self.name) >= self.target

    def replaced(self) -> bool:
        """Whether the study this worker was loaded for is gone: its record or its Optuna study deleted
        (``delete_study`` removes the Optuna study first), or a new study created under its name."""
        return _deleted_meanwhile(self.store, self.name, self.identity, self.study._study_id)

    def claim(self) -> optuna.Trial | None:
        """A new (or retried) trial if the target leaves a slot, else None (also when stopping)."""
        if self.stop.is_set():
            return None
        with warnings.catch_warnings():
            # Experimental API; and ask() warns that heartbeats belong to optimize(): this worker
            # records them itself (Heartbeat), from the moment the trial is claimed.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            with self.store.lock(f"study:{self.name}"):
                # Under the lock, so that a failed trial's retry is queued before anyone can take
                # its slot with a new trial, and a target lowered (paused) meanwhile is seen.
                target = self.target
                self._fail_abandoned()
                if slots_left(self.store, self.name, target) <= 0:
                    return None
                trial = self.study.ask()
                try:
                    self.store.optuna.record_heartbeat(trial._trial_id)
                except BaseException:
                    # Without a heartbeat row no one would ever see it stale: give it back now.
                    with contextlib.suppress(Exception):
                        self._fail_and_requeue(trial._trial_id, "claim interrupted")
                    raise
        trial.set_user_attr("worker", self.ident)
        return trial

    def _fail_abandoned(self) -> None:
        """Fail and re-queue trials whose worker died: heartbeat stale, or (killed between ask
        and its first heartbeat) no heartbeat at all long after it started. Call under the lock."""
        storage = self.store.optuna
        interval = storage.heartbeat_interval or 10
        grace = storage.grace_period or 2 * interval
        if self.outages.within(grace + interval):  # their workers need a beat to catch up
            return
        optuna.storages.fail_stale_trials(self.study)
        for trial_id in self.store.running_without_heartbeat(self.name, older_than=max(60.0, 3 * grace)):
            self._fail_and_requeue(trial_id, "abandoned before its first heartbeat")

    def _fail_and_requeue(self, trial_id: int, reason: str) -> None:
        fail_and_requeue(self.store.optuna, self.study, trial_id, reason, self.retry)

    def run(self, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """Evaluate ``trial`` and tell the study; returns the finished trial."""
        values: list[float] | None = None
        state, reason, retry = TrialState.FAIL, "", False
        storage, trial_id = self.store.optuna, trial._trial_id

        def beat() -> None:
            try:
                storage.record_heartbeat(trial_id)
            except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
                database_down(e, self.outages)  # database away: the next beat retries

        interval = storage.heartbeat_interval or 10
        with Heartbeat(beat, interval, f"heartbeat-{trial_id}", join_timeout=interval + 5, outages=self.outages):
            try:
                with evaluating():
                    if self.stop.is_set():  # asked to stop while this trial was claimed: give it back untrained
                        raise TrialInterrupted("worker stopping: before the trial started")
                    values = self.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialInterrupted as e:
                reason, retry = str(e), True
            except KeyboardInterrupt as e:
                reason = "worker terminated (SIGTERM)" if isinstance(e, Terminated) else "worker interrupted (SIGINT)"
                retry = True
                self._finish(trial, state, values, reason, retry)
                raise
            except Exception as e:  # noqa: BLE001 -- a failed trial never stops the worker
                if database_down(e, self.outages):
                    reason, retry = f"database unavailable: {error_line(e)}", True
                else:
                    reason = trial_fail_reason(e)
            return self._finish(trial, state, values, reason, retry)

    def _finish(self, trial: optuna.Trial, state: TrialState, values: list[float] | None, reason: str,
                retry: bool) -> optuna.trial.FrozenTrial:
        """Tell the result, riding out database outages. A failure to retry is told and queued
        again under the study lock, so no new trial can take its slot in between."""
        def fail() -> optuna.trial.FrozenTrial:
            with self.store.lock(f"study:{self.name}"):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr("fail_reason", reason)
                frozen = self._tell(trial, TrialState.FAIL, None)
                if retry and frozen.state == TrialState.FAIL and frozen.user_attrs.get("fail_reason") == reason \
                        and not self._retry_queued(frozen.number):
                    self.retry(self.study, frozen)
                return frozen

        if state == TrialState.FAIL:
            frozen = wait_for_database(fail, "telling a failure", outages=self.outages)
        else:
            frozen = wait_for_database(lambda: self._tell(trial, state, values), "telling a result",
                                       outages=self.outages)
        assert isinstance(frozen, optuna.trial.FrozenTrial)
        if frozen.state != state or (state == TrialState.FAIL and frozen.user_attrs.get("fail_reason") != reason):
            # Failed as stale by another worker meanwhile (which queued the retry); a completed
            # evaluation is in the store, so the retry reuses it.
            log.warning("%s trial %d was failed as stale meanwhile; its retry is queued", self.name, trial.number)
            return frozen
        self.count(frozen, reason)
        return frozen

    def count(self, frozen: optuna.trial.FrozenTrial, reason: str) -> None:
        """Keep the failure and rejection streaks: they end only when a network is evaluated within the
        budget (failures and rejections that alternate are still no progress)."""
        if frozen.state == TrialState.FAIL:
            self.failures.append(reason)
        elif status_of(frozen) == Status.OVER_BUDGET:
            self.rejections += 1
        else:
            self.failures.clear()
            self.rejections = 0

    def rejection_message(self) -> str:
        from ..search import study_info

        feas = study_info(self.name, self.store).get("feasibility") or {}
        share = feas.get("share_within_budget")
        where = (f"{share:.2%} of space {self.ctx.study_spec.space!r} lies within it" if share is not None
                 else f"space {self.ctx.study_spec.space!r}")
        return (f"{self.rejections} samples of {self.name!r} in a row were over the budget "
                f"{self.ctx.study_spec.budget} ({where}); loosen the budget or narrow the space (--option), then rerun")

    def _retry_queued(self, number: int) -> bool:
        trials = self.study._storage.get_all_trials(self.study._study_id, deepcopy=False,
                                                    states=(TrialState.WAITING, TrialState.RUNNING,
                                                            TrialState.COMPLETE))
        return any(number in t.system_attrs.get("retry_history", []) for t in trials)

    def _tell(self, trial: optuna.Trial, state: TrialState, values: list[float] | None) -> optuna.trial.FrozenTrial:
        # skip_if_finished: a retried tell whose first attempt committed before the connection
        # dropped, or a trial another worker failed as stale meanwhile; the stored state wins.
        self.study.tell(trial, values, state=state, skip_if_finished=True)
        return self.study._storage.get_trial(trial._trial_id)


def run_worker(names: Sequence[str] | None, url: str | None, *, until_done: bool = False,
               deadline: float | None = None, worker: int = 0, threads: int | None = None,
               stop: threading.Event | None = None, heartbeat: int = 10, poll_min: float = 1.0,
               poll_max: float = 30.0, max_consecutive_failures: int = 20,
               on_trial: Callable[[str, optuna.trial.FrozenTrial], None] | None = None,
               jobs: bool = False, rejection_streak: int = REJECTION_STREAK,
               device: str | None = None, db_wait: float = DB_WAIT,
               supernets: Sequence[str] | None = None) -> WorkerStats:
    """Run trials until stopped (``stop``), past ``deadline``, or -- with ``until_done`` --
    until every study in scope has met its target.

    With ``jobs``, queued jobs of the studies in scope (refinement requests, see
    :mod:`nas.workers._jobs`) are taken first, one per pass; ``until_done`` then also waits for the
    queue to be empty. Queued supernet trainings (:mod:`nas.workers._supernet`) are in scope of a
    worker without ``names`` and ``supernets``, or of one naming them in ``supernets``.

    Args:
        names: studies to work on; None or empty: every study in the database, oldest first
            (a study created later waits until the older ones have no free slot), unless
            ``supernets`` are named (then only those).
        supernets: supernets whose queued training (jobs) this worker takes, besides ``names``.
        until_done: return once the studies in scope have met their targets (``nas study run``);
            otherwise wait for work with backoff from ``poll_min`` to ``poll_max`` seconds.
        heartbeat: seconds between heartbeats; a trial silent for 3x that is failed and retried.
        device: train on this device instead of each study's own (``cuda:1``: a worker placed
            on one GPU of several).
        db_wait: seconds a trained network's result waits for an unreachable database to be
            stored (heartbeats keep failing quietly meanwhile); past it the trial is failed and
            queued again. Telling a trial's final state waits as long as it takes.

    Raises:
        NasError: a named study does not exist, or one of the named studies failed
            ``max_consecutive_failures`` trials in a row, or met ``rejection_streak`` samples over
            its budget in a row.
    """
    stop = stop or threading.Event()
    outages = Outages()  # this worker's: its sweeps wait after an outage it met
    store = wait_for_database(lambda: Store(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                            mode="serve"), "connecting", stop, outages=outages)
    assert isinstance(store, Store)
    stats = WorkerStats()
    # By name, each with the identity (name, creation time) of the study it was loaded for: a study
    # deleted and created again under its name gets a new StudyWorker, and is not broken for being
    # the old one's namesake.
    workers: dict[str, StudyWorker] = {}
    broken: set[tuple[str, Any]] = set()
    ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    try:
        for n in names or ():
            get_study_spec(n, store)  # unknown name: NasError listing the studies
        idle, unexplained = poll_min, 0
        while not stop.is_set() and (deadline is None or time.time() < deadline):
            try:
                if jobs and _run_one_job(store, names, supernets, ident, stop, threads, heartbeat, stats, outages):
                    unexplained, idle = 0, poll_min
                    continue
                scope = list(names) if names else [] if supernets else [r.name for r in store.list_studies()]
                ran, pending = False, False
                for name in scope:
                    if stop.is_set():
                        continue
                    row = store.get_study(name)
                    if row is None:  # deleted meanwhile
                        workers.pop(name, None)
                        continue
                    identity = (name, row.created_at)
                    if identity in broken:
                        continue
                    sw = workers.get(name)
                    if sw is not None and sw.identity != identity:  # deleted and created again: a new study
                        log.info("%s was deleted and created again; loading the new study", name)
                        workers.pop(name)
                        sw = None
                    if sw is None:
                        if finished(store, name) >= row.target_trials:
                            continue
                        try:
                            sw = StudyWorker(name, store, worker=worker, threads=threads, stop=stop, device=device,
                                             db_wait=db_wait, outages=outages)
                        except Exception as e:
                            if database_down(e, outages):
                                raise
                            if _deleted_meanwhile(store, name, identity):  # half deleted: gone next pass
                                continue
                            if names:
                                raise
                            # One broken study (its data unreadable, say) must not stop a worker
                            # that serves the whole database.
                            log.error("%s: cannot load the study (%s); this worker skips it", name, e)
                            broken.add(identity)
                            continue
                        workers[name] = sw
                    trial = None
                    try:
                        trial = sw.claim()
                        if trial is None:
                            if sw.done():
                                workers.pop(name, None)  # release its data; reloaded if the target rises
                            else:
                                pending = True
                            continue
                        frozen = sw.run(trial)
                    except Exception:
                        if not sw.replaced():
                            raise
                        # Deleted (and maybe created again) under the worker: its trial rows are gone,
                        # so a result has nowhere to go; an evaluation, if stored, stays for reuse.
                        log.warning("%s was deleted while this worker %s", name,
                                    f"ran its trial {trial.number}; the trial is dropped" if trial is not None
                                    else "claimed a trial")
                        workers.pop(name, None)
                        ran = True
                        break
                    stats.add(frozen.state.name)
                    log.info("%s trial %d %s%s", name, frozen.number, frozen.state.name.lower(),
                             _describe(frozen))
                    if on_trial:
                        on_trial(name, frozen)
                    msg = None
                    if len(sw.failures) >= max_consecutive_failures:
                        msg = (f"{len(sw.failures)} trials of {name!r} failed in a row, last: {sw.failures[-1]}; "
                               "fix the study (e.g. its learning rate or data) and rerun")
                    elif sw.rejections >= rejection_streak:
                        msg = sw.rejection_message()
                    if msg is not None:
                        if names:
                            raise NasError(msg)
                        log.error("%s; this worker skips it from now on", msg)
                        broken.add(sw.identity or identity)
                    ran = True
                    break  # back to the oldest study first
                unexplained = 0
                if ran:
                    idle = poll_min
                    continue
                if until_done and not pending:
                    break
            except Exception as e:
                if database_down(e, outages):
                    log.warning("database unavailable (%s); retrying in %.0f s", error_line(e), idle)
                elif isinstance(e, (SQLAlchemyError, optuna.exceptions.StorageInternalError)) and unexplained < 3:
                    # A database error of a kind not known to be transient, around a reconnect:
                    # give it a few tries before believing it.
                    unexplained += 1
                    log.warning("database error (%s: %s); retry %d of 3", type(e).__name__, error_line(e),
                                unexplained)
                else:
                    cause = e.__cause__
                    log.error("worker stopping on %s%s", type(e).__name__,
                              f" caused by {type(cause).__name__}: {error_line(cause)}" if cause else "")
                    raise
            stop.wait(idle)
            idle = min(idle * 2, poll_max)
        return stats
    finally:
        store.close()


def _run_one_job(store: Store, names: Sequence[str] | None, supernets: Sequence[str] | None, ident: str,
                 stop: threading.Event, threads: int | None, heartbeat: int, stats: WorkerStats,
                 outages: Outages) -> bool:
    """Claim and run the oldest queued job of the studies and supernets in scope; False if there is none."""
    from ._jobs import run_job
    from ._supernet import SUPERNET_JOB, run_supernet_job, supernet_scope

    scope = None if not names and not supernets else [*(names or ()), *map(supernet_scope, supernets or ())]
    job = store.claim_job(ident, scope, heartbeat=heartbeat,
                          sweep=not outages.within(3 * heartbeat + heartbeat))  # grace 3 beats, and 1 more
    if job is None:
        return False

    def wait(fn: Callable[[], object], what: str) -> object:
        return wait_for_database(fn, what, stop, outages=outages)

    if job.kind == SUPERNET_JOB:
        log.info("%s job %d: training the supernet (attempt %d)", job.study, job.id, job.attempts)
        state = run_supernet_job(job, store, worker=ident, stop=stop, threads=threads, heartbeat=heartbeat, wait=wait,
                                 outages=outages)
    else:
        log.info("%s job %d: refining trial %d (attempt %d)", job.study, job.id, job.trial, job.attempts)
        state = run_job(job, store, worker=ident, stop=stop, threads=threads, heartbeat=heartbeat, wait=wait,
                        outages=outages)
    stats.jobs[state] = stats.jobs.get(state, 0) + 1
    return True


def _describe(t: optuna.trial.FrozenTrial) -> str:
    r = record_of(t)
    if t.state == TrialState.FAIL:
        return f": {r.fail_reason or ''}"
    acc = r.val_accuracy
    return f" ({r.status or ''}" + (f", val acc {acc:.4f}" if isinstance(acc, float) else "") + ")"
