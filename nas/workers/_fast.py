"""The fast path of a study on a supernet: trials asked and told in memory, stored in batches.

A supernet study's trial takes milliseconds to evaluate (:meth:`nas.search.TrialObjective` reads the
subnet's supernet accuracy back, or evaluates it once), so the standard worker loop's database steps
per trial (a claim under the study lock, a commit per suggested parameter and per attribute, a tell)
cost more than the evaluation. Here the trials run against an in-memory Optuna study (the *mirror*)
that holds the stored study's finished trials: the sampler is the one the study spec builds and sees
the whole history; each finished trial is then written to the stored study in one transaction
(``create_new_trial`` with the trial as template: parameters, attributes, constraints, values and
state at once), a batch at a time (:data:`BATCH` trials or :data:`BATCH_SECONDS`). Before each batch the
trials other workers stored meanwhile are pulled into the mirror, so workers on one study cooperate,
and the slots left (target - counted - running - the slots other fast workers reserved for the batch
they run, read under the study's lock, where this worker reserves its own) bound the batch, so concurrent
workers do not overshoot the target (a worker that died mid-batch holds its reservation a minute).

What a stored trial looks like is what the standard loop stores (same user and system attributes,
state, values; its number is the stored study's). A crash loses at most the batch not yet stored
(seconds of work; the subnets it evaluated stay stored for reuse); a stored trial is never stored
twice (a write retried after the connection dropped looks for its trial first). Ctrl-C or SIGTERM
stores the batch's finished trials, then raises as the standard loop does. Trials queued to run
(WAITING: retries, warm starts) are run by the standard loop first.

The first fast worker of a study seeds it (:meth:`SupernetMirror.seed`): subnets that any study evaluated before on
the same supernet weights and that fit this study's space and budget fill up to half its slots, best first, queued in
that worker's mirror (not in the database: read back in milliseconds, they would cost the standard loop's per-trial
writes). ``nas worker`` runs supernet studies trial by trial, without the seed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces import ArchSpec, SpaceError, SpecError
from storage import Store, error_line

from .._errors import NasError, TrialInterrupted
from ..search import Status, minimized, objective_values, pareto_mask, status_of
from ._liveness import database_down, trial_fail_reason, wait_for_database
from ._worker import StudyWorker, evaluating, finished

__all__ = ["BATCH", "BATCH_SECONDS", "SupernetMirror", "is_supernet_study", "run_fast"]

log = logging.getLogger("nas.worker")

#: Trials counted towards the target per stored batch (fewer near the target).
BATCH = 25
#: A batch is stored once it has run this long, however many trials it has.
BATCH_SECONDS = 2.0
#: Trial ids read per page when pulling stored trials into the mirror.
PAGE = 1000
#: Study system attribute prefix of a fast worker's reserved slots (the batch it runs, not stored yet).
RESERVED = "lightnas:reserved:"
#: Share of a study's slots that subnets evaluated before on its supernet weights may fill (``SupernetMirror.seed``).
SEED_SHARE = 0.5
#: Study system attribute: the study was seeded (how many subnets), by the first fast worker that ran it.
SEEDED = "lightnas:seeded"
#: Stored evaluations read when seeding a study (the most accurate first): bounds a worker's start.
SEED_READ = 20_000
#: A reservation older than this is of a worker that died mid-batch: its slots are free again.
RESERVATION_TTL = 60.0
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class SupernetMirror:
    """Runs the trials of one supernet study through an in-memory mirror; see the module docstring.

    Args:
        sw: the study's :class:`StudyWorker` (its context, sampler, objective, streak counters).
        batch: trials counted towards the target per batch; ``batch_seconds``: a batch's longest run.
    """

    def __init__(self, sw: StudyWorker, *, batch: int = BATCH, batch_seconds: float = BATCH_SECONDS) -> None:
        self.sw, self.name, self.store = sw, sw.name, sw.store
        self.batch, self.batch_seconds = batch, batch_seconds
        self.study_id = sw.study._study_id
        self.mirror = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=sw.study.sampler,
                                          pruner=sw.study.pruner, directions=sw.study.directions,
                                          study_name=sw.name)
        self.key = f"{RESERVED}{uuid.uuid4().hex[:12]}"  # this worker's reserved slots: [count, when]
        self.seen: set[int] = set()  # ids of the stored trials in the mirror (pulled, or stored from it)
        self.dropped: set[int] = set()  # numbers of the mirror's trials dropped (never stored)
        self.watermark = -1  # every stored trial numbered up to this one is finished and seen
        self.pull()
        self.seed()

    # -- the stored study -> the mirror -----------------------------------------------------------

    def _stored_after(self, after: int) -> list[FrozenTrial]:
        out: list[FrozenTrial] = []
        while True:
            ids = self.store.trial_page(self.name, after=after, limit=PAGE)
            trials = self.store.trials_by_id(self.name, ids)
            out.extend(trials)
            if len(ids) < PAGE or not trials:
                return sorted(out, key=lambda t: t.number)
            after = max(t.number for t in trials)

    def pull(self) -> int:
        """Add the finished trials stored since the last pull (by other workers) to the mirror;
        returns how many."""
        new = []
        advancing = True
        for t in self._stored_after(self.watermark):
            finished_ = t.state in _FINISHED
            if advancing and finished_:
                self.watermark = t.number
            else:
                advancing = False
            if finished_ and t._trial_id not in self.seen:
                new.append(t)
                self.seen.add(t._trial_id)
        if new:
            self.mirror.add_trials(new)
        return len(new)

    def seed(self, share: float = SEED_SHARE) -> int:
        """Queue, in the mirror, subnets of the study's supernet weights that were evaluated before (by any
        study: another budget, another device) and lie in this study's space and budget, up to ``share`` of
        the slots left, the best first (Pareto layers under this study's objectives): they run first, read
        back instead of evaluated, and the sampler starts from them. A study is seeded once, by the first
        fast worker that runs it (a stored mark, set under the study's lock): other workers and reruns do not
        seed it again. Returns how many this worker queued."""
        sw = self.sw
        obj = sw.objective
        key = getattr(obj, "inherited_key", None)
        if key is None:
            return 0
        storage = self.store.optuna
        if SEEDED in storage.get_study_system_attrs(self.study_id):  # seeded before: no candidates to read
            return 0
        have = {t.user_attrs.get("spec_hash") for t in self.mirror.get_trials(deepcopy=False)}
        cands: list[tuple[dict, list[float]]] = []
        for spec_hash, accuracy, spec_json in self.store.evaluated_at(key, limit=SEED_READ):
            if spec_hash in have:
                continue
            spec = ArchSpec.from_json(spec_json)
            try:
                params = sw.ctx.space.params_of(spec)
            except (SpaceError, SpecError):  # outside this study's (fitted) space
                continue
            cost = obj.cost(spec)
            if obj.budget is not None and obj.budget.violations(cost):
                continue
            cands.append((params, minimized(sw.ctx.study_spec, objective_values(sw.ctx.study_spec, accuracy, cost))))
        with self.store.lock(f"study:{self.name}"):
            if SEEDED in storage.get_study_system_attrs(self.study_id):  # another worker seeded it meanwhile
                return 0
            counts = self.store.study_counts(self.name)
            room = min(len(cands), int(share * (sw.target - counts["COUNTED"] - counts.get("WAITING", 0))))
            storage.set_study_system_attr(self.study_id, SEEDED, max(0, room))
        order: list[int] = []
        left = np.arange(len(cands))
        while len(order) < room and len(left):  # Pareto layers, the front first
            mask = pareto_mask([cands[i][1] for i in left])
            order.extend(int(i) for i in left[mask])
            left = left[~mask]
        source = f"evaluated before on supernet {sw.ctx.study_spec.supernet}"
        for i in order[:room]:
            self.mirror.enqueue_trial(cands[i][0], user_attrs={"warm_start": source})
        if room > 0:
            log.info("%s: %d subnets evaluated before on these supernet weights queued first", self.name, room)
        return max(0, room)

    # -- the mirror -> the stored study -----------------------------------------------------------

    def persist(self, batch: list[FrozenTrial]) -> int:
        """Store ``batch``: in one transaction where the database takes it (SQLite), else one per trial; returns
        how many. A write retried after the connection dropped first looks whether it committed."""
        if not batch:
            return 0
        attempts = [0]
        first = batch[0]

        def committed(frozen: FrozenTrial) -> list[int]:
            return [t._trial_id for t in self._stored_after(self.watermark)
                    if t._trial_id not in self.seen and t.datetime_start == frozen.datetime_start
                    and t.params == frozen.params and t.user_attrs == frozen.user_attrs]

        def write_batch() -> list[int] | None:
            attempts[0] += 1
            if attempts[0] > 1 and committed(first):  # the batch is stored whole or not at all
                return [t._trial_id for t in self._stored_after(self.watermark) if t._trial_id not in self.seen]
            return self.store.insert_trials(self.study_id, batch)

        ids = wait_for_database(write_batch, "storing a batch of trials", outages=self.sw.outages)
        if ids is None:  # one transaction per trial
            ids = []
            for frozen in batch:
                attempts[0] = 0

                def write_one(frozen: FrozenTrial = frozen) -> int:
                    attempts[0] += 1
                    found = committed(frozen) if attempts[0] > 1 else []
                    return found[0] if found else self.store.optuna.create_new_trial(self.study_id,
                                                                                     template_trial=frozen)

                trial_id = wait_for_database(write_one, "storing a trial", outages=self.sw.outages)
                self.seen.add(trial_id)
                ids.append(trial_id)
        self.seen.update(ids)
        return len(batch)

    # -- running ----------------------------------------------------------------------------------

    def _slots(self) -> tuple[int, int, int]:
        """(slots left, trials WAITING, trials RUNNING), read under the study's lock, after failing abandoned
        trials of crashed standard workers. The slots other fast workers reserved for the batches they run
        now are not left; this worker reserves its next batch's (up to :data:`BATCH`) in the same step."""
        sw = self.sw
        storage = self.store.optuna
        with self.store.lock(f"study:{self.name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            target = sw.target
            sw._fail_abandoned()
            counts = self.store.study_counts(self.name)
            now = time.time()
            reserved = sum(int(v[0]) for k, v in storage.get_study_system_attrs(self.study_id).items()
                           if k.startswith(RESERVED) and k != self.key and isinstance(v, list)
                           and now - float(v[1]) < RESERVATION_TTL)
            running = counts.get("RUNNING", 0)
            slots = target - counts["COUNTED"] - running - reserved
            if slots > 0 and not counts.get("WAITING", 0):
                storage.set_study_system_attr(self.study_id, self.key, [min(self.batch, slots), now])
        return slots, counts.get("WAITING", 0), running

    def _release(self) -> None:
        """Give this worker's reserved slots back (its batch is stored)."""
        with contextlib.suppress(Exception):
            self.store.optuna.set_study_system_attr(self.study_id, self.key, [0, time.time()])

    def _one(self) -> tuple[FrozenTrial | None, bool]:
        """Ask the mirror for a trial, evaluate it, tell it: (the finished trial, or None when it is dropped
        (the worker stopping, the database away: nothing of it is stored), whether it counts)."""
        sw = self.sw
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.mirror.ask()
        trial.set_user_attr("worker", sw.ident)
        values: list[float] | None = None
        state, reason = TrialState.FAIL, ""
        try:
            with evaluating():
                values = sw.objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrialInterrupted:
            self._drop(trial)
            return None, False
        except Exception as e:  # noqa: BLE001 -- a failed trial never stops the worker
            if database_down(e, sw.outages):
                log.warning("%s: database unavailable (%s); the trial is dropped", self.name, error_line(e))
                self._drop(trial)
                return None, False
            reason = trial_fail_reason(e)
        except BaseException:
            self._drop(trial)
            raise
        if state == TrialState.FAIL:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr("fail_reason", reason)
        frozen = self.mirror.tell(trial, values, state=state)
        sw.count(frozen, reason)
        return frozen, state != TrialState.FAIL and status_of(frozen) != Status.OVER_BUDGET

    def _drop(self, trial: optuna.Trial) -> None:
        """Fail ``trial`` in the mirror only (never stored): the sampler does not wait for it."""
        self.dropped.add(trial.number)
        with contextlib.suppress(Exception):
            self.mirror.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def trials(self) -> list[FrozenTrial]:
        """The study's trials as this worker sees them (stored by it or pulled from the database at its last read,
        and its queued seeds, not started yet): what a progress display counts without reading every trial."""
        return [t for t in self.mirror.get_trials(deepcopy=False) if t.number not in self.dropped]

    def _streak_error(self, max_failures: int, rejection_streak: int) -> str | None:
        sw = self.sw
        if len(sw.failures) >= max_failures:
            return (f"{len(sw.failures)} trials of {self.name!r} failed in a row, last: {sw.failures[-1]}; "
                    "fix the study (e.g. its learning rate or data) and rerun")
        if sw.rejections >= rejection_streak:
            return sw.rejection_message()
        return None

    def run(self, *, stop: threading.Event, deadline: float | None = None, max_failures: int = 20,
            rejection_streak: int = 200, on_batch: Callable[[list[FrozenTrial]], None] | None = None,
            poll: float = 1.0) -> int:
        """Run batches until the study has its target (other workers' running trials finished), ``stop``
        is set or ``deadline`` passed; returns the trials this worker stored. ``on_batch(trials)`` is called after
        each stored batch (and trial of the standard loop) with :meth:`trials`.

        Raises:
            NasError: failures or over-budget rejections in a row (as the standard loop).
            KeyboardInterrupt: Ctrl-C or SIGTERM (``nas.Terminated``), once the batch's finished trials are stored.
        """
        sw, ran = self.sw, 0

        def live() -> bool:
            return not stop.is_set() and (deadline is None or time.time() < deadline)

        while live():
            slots, waiting, running = wait_for_database(self._slots, "counting the study's trials", stop,
                                                        outages=sw.outages)
            if waiting and slots > 0:  # queued retries and warm starts: the standard loop runs them
                trial = sw.claim()
                if trial is not None:
                    frozen = sw.run(trial)
                    ran += 1
                    log.info("%s trial %d %s", self.name, frozen.number, frozen.state.name.lower())
                    wait_for_database(self.pull, "reading the study's trials", stop, outages=sw.outages)
                    if on_batch:
                        on_batch(self.trials())
                    msg = self._streak_error(max_failures, rejection_streak)
                    if msg:
                        raise NasError(msg)
                    continue
            if slots <= 0:
                if not running and finished(self.store, self.name) >= sw.target:
                    break
                stop.wait(poll)  # other workers' trials are running: one may fail and free a slot
                continue
            wait_for_database(self.pull, "reading the study's trials", stop, outages=sw.outages)
            batch: list[FrozenTrial] = []
            size = min(self.batch, slots)  # reserved by _slots
            counted, t0, dropped = 0, time.monotonic(), False
            try:
                while counted < size and time.monotonic() - t0 < self.batch_seconds and live():
                    done, counts = self._one()
                    if done is None:
                        dropped = True
                        break
                    batch.append(done)
                    counted += counts
                    if self._streak_error(max_failures, rejection_streak):
                        break
            finally:
                stored = self.persist(batch)  # also on Ctrl-C: what finished is kept
                ran += stored
                self._release()
            log.info("%s: stored a batch of %d trials (%d counted)", self.name, stored, counted)
            if stored and on_batch:
                on_batch(self.trials())
            msg = self._streak_error(max_failures, rejection_streak)
            if msg:
                raise NasError(msg)
            if dropped:
                stop.wait(poll)
        return ran


def is_supernet_study(name: str, store: Store) -> bool:
    """Whether study ``name`` evaluates its trials on a supernet (and so runs on the fast path)."""
    from ..search import get_study_spec

    return get_study_spec(name, store).supernet is not None


def run_fast(name: str, url: str, *, deadline: float | None = None, worker: int = 0, threads: int | None = None,
             stop: threading.Event | None = None, heartbeat: int = 10, max_consecutive_failures: int = 20,
             rejection_streak: int = 200, device: str | None = None,
             on_batch: Callable[[list[FrozenTrial]], None] | None = None,
             batch: int = BATCH, batch_seconds: float = BATCH_SECONDS) -> int:
    """Run supernet study ``name`` on the fast path until it has its target (see the module docstring);
    returns the trials this worker stored. Arguments as :func:`nas.workers.run_worker`'s."""
    from ._liveness import Outages

    stop = stop or threading.Event()
    outages = Outages()
    store = wait_for_database(lambda: Store(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                            mode="serve"), "connecting", stop, outages=outages)
    assert isinstance(store, Store)
    try:
        row = store.get_study(name)
        if row is None or finished(store, name) >= row.target_trials:
            return 0
        sw = StudyWorker(name, store, worker=worker, threads=threads, stop=stop, device=device, outages=outages)
        try:
            mirror = SupernetMirror(sw, batch=batch, batch_seconds=batch_seconds)
            return mirror.run(stop=stop, deadline=deadline, max_failures=max_consecutive_failures,
                              rejection_streak=rejection_streak, on_batch=on_batch)
        except Exception:
            if not sw.replaced():
                raise
            log.warning("%s was deleted while this worker ran it; its unstored trials are dropped", name)
            return 0
    finally:
        store.close()
