"""The Tune searcher of the Ray backend: Ray Tune's ``OptunaSearch`` on the study itself.

:class:`StudySearch` asks the study's own Optuna storage for trials (under the same slot lock as
local workers, so the target is never overshot), runs ``space.suggest`` on each asked trial in
the driver, hands Tune only the trial's number, and tells the result (COMPLETE, PRUNED or FAIL,
as a local worker would). docs/design.md describes the backend as a whole.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from storage import Store

from ..._errors import NasError
from ...search import Status, StudySpec
from .._liveness import wait_for_database
from .._worker import slots_left

__all__ = ["FINAL_KEY", "NUMBER_KEY", "POLL_SECONDS", "RAY_MAX_CONSECUTIVE_FAILURES", "RAY_MAX_FAILURES", "REASON_KEY",
           "STATUS_KEY", "Driver", "SpaceFn", "driving", "quiet_optuna_warnings", "running_driver", "search_class"]

NUMBER_KEY = "lightnas_trial_number"
FINAL_KEY = "lightnas_final"
STATUS_KEY = "lightnas_status"
REASON_KEY = "lightnas_fail_reason"
#: Tune retries of a trial whose worker raised or died (TrainingError is not retried).
RAY_MAX_FAILURES = 2
RAY_MAX_CONSECUTIVE_FAILURES = 20
POLL_SECONDS = 1.0

@dataclass
class Driver:
    """What the driver's searcher needs but must not pickle into Tune's experiment state."""

    store: Store
    ident: str  # the "worker" user attribute of this driver's trials
    deadline: float | None = None
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None
    searcher: Any = None  # the running experiment's StudySearch, once Tune has created or restored it


#: The running driver of this process, set for the length of one ``run_ray`` experiment (:func:`driving`).
#: A module-level handle on purpose, and the only one: Ray Tune pickles the searcher into the experiment's
#: state and ``Tuner.restore`` unpickles it (then ``Searcher.restore``) inside ``tuner.fit()``, with no
#: way to hand the new instance anything that cannot be pickled (the store's engine and locks, the
#: deadline, the progress callback) short of reaching into Tune's private objects. One experiment runs
#: per process at a time (one ``ray.init``), so the handle is never shared by two runs.
_DRIVER: Driver | None = None


@contextlib.contextmanager
def driving(driver: Driver) -> Iterator[Driver]:
    """Make ``driver`` the running driver of this process for the ``with`` block (see :data:`_DRIVER`)."""
    global _DRIVER
    _DRIVER = driver
    try:
        yield driver
    finally:
        _DRIVER = None


def running_driver() -> Driver | None:
    """The running driver of this process (:func:`driving`), None between experiments."""
    return _DRIVER


def _driver() -> Driver:
    if _DRIVER is None:  # pragma: no cover - only if Tune calls the searcher outside run_ray
        raise RuntimeError("StudySearch used outside nas.workers.ray.run_ray")
    return _DRIVER


@contextlib.contextmanager
def quiet_optuna_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # ask() outside optimize() warns about heartbeats: the driver records them itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        # A trial retried by Tune reports its epochs again.
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        yield


class SpaceFn:
    """The define-by-run space: ``space.suggest`` on the asked trial, returns its number."""

    def __init__(self, space: str, options: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        self.space_name, self.options, self.input_shape = space, options, tuple(input_shape)
        self._space: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_space": None}

    def __call__(self, trial: Any) -> dict[str, Any]:
        if self._space is None:
            from search_spaces import get_space

            self._space = get_space(self.space_name, input_shape=self.input_shape, **self.options)
        self._space.suggest(trial)  # the parameters land on the Optuna trial (and in Tune's config)
        return {NUMBER_KEY: trial.number}


def _study_search_class() -> type:
    """Build :class:`StudySearch` on first use (importing Ray Tune takes seconds; the CLI stays fast).

    It is published as ``nas.workers.ray._searcher.StudySearch`` (module ``__getattr__``), so
    Tune's pickles of the searcher load again in a new driver.
    """
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):  # type: ignore[misc, valid-type]
        """``OptunaSearch`` on the study, with the target slots, failure accounting and PRUNED stops.

        State that must survive Tune's pickling (asked trials, completed ones, failures) lives in
        the instance; the store, deadline and progress callback come from the running driver.
        """

        def __init__(self, study_spec: StudySpec, storage: optuna.storages.BaseStorage, space: SpaceFn,
                     sampler: optuna.samplers.BaseSampler,
                     max_consecutive_failures: int = RAY_MAX_CONSECUTIVE_FAILURES) -> None:
            single = len(study_spec.objectives) == 1
            modes = ["max" if o == "accuracy" else "min" for o in study_spec.objectives]
            with quiet_optuna_warnings():
                metric = study_spec.objectives[0] if single else list(study_spec.objectives)
                super().__init__(space=space, metric=metric,
                                 mode=modes[0] if single else modes, sampler=sampler, study_name=study_spec.name,
                                 storage=storage)
            self.study_name = study_spec.name
            self.objectives = list(study_spec.objectives)
            self.max_consecutive_failures = max_consecutive_failures
            self.failures: list[str] = []
            self.broken: str | None = None
            self._next_poll = 0.0

        # ------------------------------------------------------------------ bookkeeping
        def live_trial_ids(self) -> list[int]:
            """Optuna trial ids asked by this experiment and not yet told."""
            try:
                return [t._trial_id for k, t in list(self._ot_trials.items()) if k not in self._completed_trials]
            except RuntimeError:  # changed size while another thread read it: next beat
                return []

        def restore(self, checkpoint_path: str) -> None:
            super().restore(checkpoint_path)
            self._next_poll = 0.0
            drv = running_driver()
            if drv is not None:
                drv.searcher = self

        # ------------------------------------------------------------------ asking
        def suggest(self, trial_id: str) -> Any:
            if trial_id in self._ot_trials:  # Tune asks again for a known trial: same config
                return super().suggest(trial_id)  # type: ignore[no-any-return]
            drv = _driver()
            drv.searcher = self
            live = len(self.live_trial_ids())
            if self.broken or (drv.deadline is not None and time.time() >= drv.deadline):
                return Searcher.FINISHED if live == 0 else None
            now = time.monotonic()
            if now < self._next_poll:
                return None
            store = drv.store

            def claim() -> Any:
                # Idempotent, so a retry after the database came back never asks twice.
                with quiet_optuna_warnings(), store.lock(f"study:{self.study_name}"):
                    if trial_id not in self._ot_trials:
                        row = store.get_study(self.study_name)
                        if row is None:
                            raise NasError(f"study {self.study_name!r} was deleted")
                        if slots_left(store, self.study_name, row.target_trials) <= 0:
                            # Target met, or covered by trials in flight (ours or elsewhere).
                            return Searcher.FINISHED if live == 0 else None
                    config = OptunaSearch.suggest(self, trial_id)
                ot_trial = self._ot_trials[trial_id]
                store.optuna.record_heartbeat(ot_trial._trial_id)
                ot_trial.set_user_attr("worker", drv.ident)
                # From the ask on, not only once the trainable starts: a trial still pending in
                # Tune when the run is interrupted is then traceable to its Tune trial too.
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                return config

            config = wait_for_database(claim, "asking for a trial")
            if config is None:
                self._next_poll = now + POLL_SECONDS
            return config

        # ------------------------------------------------------------------ results
        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if FINAL_KEY in result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            if isinstance(self.metric, str) and self.metric in result and "epoch" in result:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError), quiet_optuna_warnings():
                    self._ot_trials[trial_id].report(float(result[self.metric]), int(result["epoch"]))

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            study: optuna.Study = self._ot_study  # type: ignore[assignment]
            storage = study._storage
            if storage.get_trial(ot_trial._trial_id).state.is_finished():
                # Failed as stale by another worker (and re-queued) while this experiment was away.
                self._completed_trials.add(trial_id)
                return
            result = result or {}
            values: list[float] | None = None
            reason = ""
            if error:
                state = TrialState.FAIL
                reason = ot_trial.user_attrs.get("fail_reason") or (
                    f"Ray Tune trial {trial_id} failed {RAY_MAX_FAILURES + 1} times (worker error or lost worker)")
            elif result.get(FINAL_KEY):
                if result.get(STATUS_KEY) in ("failed", "skipped"):
                    state, reason = TrialState.FAIL, str(result.get(REASON_KEY) or result.get(STATUS_KEY))
                elif result.get(STATUS_KEY) == "pruned":  # stopped by the Pareto-aware rule in the trainable
                    state = TrialState.PRUNED
                else:
                    state, values = TrialState.COMPLETE, [float(result[m]) for m in self.objectives]
            elif "epoch" in result and "accuracy" in result:
                # Stopped by the scheduler (ASHA) after an intermediate result: pruned, as locally.
                state = TrialState.PRUNED
                epoch = int(result["epoch"])
                if epoch not in storage.get_trial(ot_trial._trial_id).intermediate_values:
                    # Tune skips on_trial_result for the result its scheduler stops on.
                    ot_trial.report(float(result["accuracy"]), epoch)
                ot_trial.set_user_attr("status", Status.PRUNED)
                ot_trial.set_user_attr("epochs_run", epoch)
                ot_trial.set_user_attr("val_accuracy", float(result["accuracy"]))
            else:
                state, reason = TrialState.FAIL, "stopped by Ray Tune before it reported a result"
            if state == TrialState.FAIL:
                wait_for_database(lambda: ot_trial.set_user_attr("fail_reason", reason), "recording a failure")

            def tell() -> optuna.trial.FrozenTrial:
                with quiet_optuna_warnings():
                    try:
                        return study.tell(ot_trial, values, state=state)
                    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                        return storage.get_trial(ot_trial._trial_id)  # finished meanwhile by someone else

            frozen = wait_for_database(tell, "telling a result")
            assert isinstance(frozen, optuna.trial.FrozenTrial)
            self._completed_trials.add(trial_id)
            if frozen.state == TrialState.FAIL:
                self.failures.append(reason)
                if len(self.failures) >= self.max_consecutive_failures:
                    self.broken = (f"{len(self.failures)} trials of {self.study_name!r} failed in a row, last: "
                                   f"{self.failures[-1]}; fix the study (e.g. its learning rate or data) and rerun")
            else:
                self.failures.clear()
            drv = running_driver()
            if drv is not None and drv.on_trial is not None:
                drv.on_trial(frozen)

    StudySearch.__module__ = __name__
    StudySearch.__qualname__ = "StudySearch"
    return StudySearch


def search_class() -> type:
    cls = globals().get("StudySearch")
    if cls is None:
        cls = globals()["StudySearch"] = _study_search_class()
    return cls  # type: ignore[no-any-return]


def __getattr__(attr: str) -> Any:
    if attr == "StudySearch":
        return search_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
