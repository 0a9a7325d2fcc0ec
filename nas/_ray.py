"""Ray Tune backend: ``nas study run NAME --backend ray``, an adapter around the same trial.

Bridging one trial. The driver runs a Tune ``Tuner`` whose searcher is :class:`StudySearch`, an
``ray.tune.search.optuna.OptunaSearch`` on the study's own Optuna ``RDBStorage`` and study
name, with the study's sampler (:func:`nas._worker.make_sampler`, seed offset
:data:`RAY_SEED_OFFSET` so it does not replay a local worker's random start). Its define-by-run
space runs ``space.suggest`` on the asked Optuna trial in the driver, so the architecture's
parameters are on that trial, and hands Tune only the trial's number
(``{"lightnas_trial_number": n}``, plus the captured parameters for Tune's logs). The trainable
:func:`ray_trial` (a Ray worker process) loads the study context once per process, wraps that
same trial in a real ``optuna.trial.Trial`` -- its ``suggest_*`` return the stored parameters,
its user attributes and constraints land on the same row -- and calls
:class:`nas._trial.TrialObjective`, the objective local workers run: budget rejection before
training (milliseconds), reuse of stored evaluations, weights and evaluations in the store. It
reports every objective (``spec.objectives``) in its final result and the driver tells the
study. So Ray trials are ordinary trials of the study: ``nas pareto`` sees them and local
workers can run beside the Ray run.

Slots and target. The searcher asks for a trial only while counted (networks within the budget:
COMPLETE + PRUNED, less the over-budget rejections) + RUNNING trials of the study are below its
target, under the same database lock as local
workers (:func:`nas._worker.slots_left`, ``Store.lock``): the Tune experiment has unlimited
samples and ends when the target is covered. A failed trial frees its slot and is replaced.
The driver records the heartbeats of its trials (pending or running), so when the driver dies
they go stale and any worker fails and re-queues them.

Failures. ``TrainingError`` (NaN loss) fails the Optuna trial with its reason and is not
retried (it is deterministic); any other exception, or a lost worker, is retried by Tune
(``FailureConfig(max_failures=RAY_MAX_FAILURES)``) on the same Optuna trial, then failed.
``RAY_MAX_CONSECUTIVE_FAILURES`` failures in a row end the run with a NasError.

Resume. The experiment lives in ``$NAS_HOME/ray/<study>-<hash of the storage URL>``. On SIGINT
Tune stops gracefully: it saves the experiment state (searcher included), stops the trial
actors and ``fit()`` *returns*; a second SIGINT raises ``KeyboardInterrupt`` inside ``fit()``.
Either way :func:`run_ray` raises :class:`RayInterrupted`, leaving the interrupted trials
RUNNING in Optuna. Rerunning restores the experiment (``Tuner.restore(..., resume_unfinished
=True)``): each unfinished Tune trial runs its *same* Optuna trial from scratch (a completed
evaluation is reused), so nothing is duplicated, and the experiment goes on until the target
(re-read from the database, so a raised ``--trials`` applies). When the target is met the
experiment directory is removed; a later run with a higher target starts a fresh experiment.
If the Optuna trial of a restored Tune trial was meanwhile failed as stale by a local worker
(which re-queued its parameters), the Tune trial is skipped and the re-queued copy is asked.
Trials of a driver killed with SIGKILL that Tune had not saved yet are failed and re-queued
after the restored experiment. A file lock (``<experiment>.lock``) keeps a second Ray driver
for the same study and database from sharing the experiment; local workers may join any time.
The experiment state pickles the Optuna storage, so ``$NAS_HOME/ray`` is made private (0700):
it holds the database URL, password included.

Cluster. Without ``--address`` a local Ray is started with every core (``address="local"``, so
a cluster someone else started on this host is never joined by accident), no dashboard, and
worker output not forwarded. With ``--address`` the driver joins that cluster; every node must
reach the database (PostgreSQL; a SQLite file only works on one host). ``--timeout`` stops
asking for new trials after that many seconds; running ones finish.

Early stopping. In a single-objective ``accuracy`` study with ``pruner != "none"`` the trainable
reports validation accuracy after every epoch but the last (``{"accuracy", "epoch"}``) and Tune's
``ASHAScheduler`` (time attribute ``epoch``, ``max_t`` = fidelity epochs, grace period 1) stops
poor trials: ``asha`` reduction factor 3, one bracket; ``hyperband`` the same with 3 brackets
(asynchronous HyperBand); ``median`` reduction factor 2, whose rung cutoff is the median.
(Tune's synchronous ``HyperBandScheduler`` and ``MedianStoppingRule`` pause trials, which needs
checkpoints the trainable does not write.) A trial stopped by the scheduler becomes **PRUNED**
in Optuna with user attributes ``status="pruned"``, ``epochs_run`` and ``val_accuracy`` at the
epoch where it stopped and its per-epoch intermediate values -- exactly like a trial pruned by
a local worker's Optuna pruner. Stock ``OptunaSearch`` would tell it COMPLETE with the partial
accuracy; :class:`StudySearch` does not, so partially trained networks never enter the Pareto
front or ``best_trial``. The stop happens inside the epoch callback, before the evaluation is
stored, so no evaluation row or weights exist for partial training. Over-budget, reused and
failed trials report no ``epoch`` and are invisible to the scheduler. Multi-objective studies
use no scheduler: ASHA (like Optuna's pruners) ranks trials on one metric, and an accuracy-only
cut would discard the cheap, less accurate networks the Pareto front is made of. There the
``pareto`` pruner (:mod:`nas._early`) stops a trial whose curve is dominated by one of no
higher cost; it runs inside ``TrialObjective`` in the trainable, exactly as in a local worker,
and the trainable reports the stop as a final result with status ``pruned``, told PRUNED.

Threads: torch threads in a trial = ``cpus_per_trial`` (rounded down, at least 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from storage import RetryTrial, Store

from ._errors import NasError
from ._study import SINGLE_METRIC_PRUNERS, StudySpec, get_study_spec

if TYPE_CHECKING:
    from ._runner import Progress

__all__ = ["BACKENDS", "RayInterrupted", "RayOptions", "check_backend_options", "experiment_dir", "ray_trial",
           "run_ray"]

log = logging.getLogger("nas.ray")

BACKENDS = ("local", "ray")
NUMBER_KEY = "lightnas_trial_number"
FINAL_KEY = "lightnas_final"
STATUS_KEY = "lightnas_status"
REASON_KEY = "lightnas_fail_reason"
#: Tune retries of a trial whose worker raised or died (TrainingError is not retried).
RAY_MAX_FAILURES = 2
RAY_MAX_CONSECUTIVE_FAILURES = 20
#: The Ray driver's sampler is seeded ``spec.seed + RAY_SEED_OFFSET`` (local workers: ``+ worker``).
RAY_SEED_OFFSET = 1000
POLL_SECONDS = 1.0
#: How often the driver records the heartbeats of its trials (at most the storage's interval).
HEARTBEAT_SECONDS = 2.0
PIP_HINT = 'Ray is not installed; install the extra with: pip install "lightnas[ray]"'
ADDRESS_HELP = "accepted: auto, HOST:PORT or ray://HOST:PORT of a running Ray cluster"


class RayInterrupted(Exception):
    """The Ray run was interrupted (SIGINT); its experiment is saved and a rerun resumes it."""

    def __init__(self, progress: Progress, path: Path | None, detail: str = "interrupted") -> None:
        self.progress, self.path = progress, path
        where = f"; the Ray Tune experiment is saved in {path}" if path is not None else ""
        super().__init__(f"{detail}: {progress.finished}/{progress.target} networks within budget{where}; "
                         "rerun the same command to resume")


@dataclass(frozen=True)
class RayOptions:
    """How the Ray backend runs: cluster address (None: a local Ray), concurrency, resources."""

    address: str | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_trial))


def check_backend_options(backend: str, *, address: str | None = None, max_concurrent: int | None = None,
                          cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
                          workers: int | None = None) -> RayOptions | None:
    """Validate ``nas study run`` backend options (no Ray import); RayOptions for ``ray``.

    Raises:
        NasError: one line naming the option and the accepted values.
    """
    if backend not in BACKENDS:
        raise NasError(f"--backend: got {backend!r}; accepted: {', '.join(BACKENDS)}")
    ray_only = {"--address": address, "--max-concurrent": max_concurrent, "--cpus-per-trial": cpus_per_trial,
                "--gpus-per-trial": gpus_per_trial}
    if backend == "local":
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise NasError(f"{given[0]}: only with --backend ray (accepted backends: {', '.join(BACKENDS)}); "
                           "the local backend takes --workers")
        return None
    if workers is not None:
        raise NasError("--workers: only with --backend local; with --backend ray use --max-concurrent K")
    if address is not None and not address.strip():
        raise NasError(f"--address: empty; {ADDRESS_HELP}")
    if max_concurrent is not None and max_concurrent < 1:
        raise NasError(f"--max-concurrent: must be an integer >= 1, got {max_concurrent}")
    if cpus_per_trial is not None and not (cpus_per_trial > 0 and math.isfinite(cpus_per_trial)):
        raise NasError(f"--cpus-per-trial: must be a number > 0, got {cpus_per_trial}")
    if gpus_per_trial is not None and not (gpus_per_trial >= 0 and math.isfinite(gpus_per_trial)):
        raise NasError(f"--gpus-per-trial: must be a number >= 0, got {gpus_per_trial}")
    return RayOptions(address=address.strip() if address else None, max_concurrent=max_concurrent,
                      cpus_per_trial=1.0 if cpus_per_trial is None else float(cpus_per_trial),
                      gpus_per_trial=0.0 if gpus_per_trial is None else float(gpus_per_trial))


def experiment_dir(name: str, url: str) -> Path:
    """``$NAS_HOME/ray/<study>-<8 hex of the storage URL>`` (one experiment per study and database)."""
    from objectives import nas_home

    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return nas_home() / "ray" / f"{name}-{digest}"


def absolute_url(url: str) -> str:
    """SQLite paths made absolute: Ray workers do not share the driver's working directory."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        u = u.set(database=str(Path(u.database).expanduser().resolve()))
    return u.render_as_string(hide_password=False)


# ----------------------------------------------------------------------------------- driver state
@dataclass
class _Driver:
    """What the driver's searcher needs but must not pickle into Tune's experiment state."""

    store: Store
    ident: str  # the "worker" user attribute of this driver's trials
    deadline: float | None = None
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None
    searcher: Any = None  # the running experiment's StudySearch, once Tune has created or restored it


_DRIVER: _Driver | None = None


def _driver() -> _Driver:
    if _DRIVER is None:  # pragma: no cover - only if Tune calls the searcher outside run_ray
        raise RuntimeError("StudySearch used outside nas._ray.run_ray")
    return _DRIVER


@contextlib.contextmanager
def _quiet_optuna_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # ask() outside optimize() warns about heartbeats: the driver records them itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        # A trial retried by Tune reports its epochs again.
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        yield


# ----------------------------------------------------------------------------------- searcher
class _SpaceFn:
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

    It is published as ``nas._ray.StudySearch`` (module ``__getattr__``), so Tune's pickles of
    the searcher load again in a new driver.
    """
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from ._worker import slots_left, wait_for_database

    class StudySearch(OptunaSearch):  # type: ignore[misc, valid-type]
        """``OptunaSearch`` on the study, with the target slots, failure accounting and PRUNED stops.

        State that must survive Tune's pickling (asked trials, completed ones, failures) lives in
        the instance; the store, deadline and progress callback come from the running driver.
        """

        def __init__(self, spec: StudySpec, storage: optuna.storages.BaseStorage, space: _SpaceFn,
                     sampler: optuna.samplers.BaseSampler,
                     max_consecutive_failures: int = RAY_MAX_CONSECUTIVE_FAILURES) -> None:
            single = len(spec.objectives) == 1
            modes = ["max" if o == "accuracy" else "min" for o in spec.objectives]
            with _quiet_optuna_warnings():
                super().__init__(space=space, metric=spec.objectives[0] if single else list(spec.objectives),
                                 mode=modes[0] if single else modes, sampler=sampler, study_name=spec.name,
                                 storage=storage)
            self.study_name = spec.name
            self.objectives = list(spec.objectives)
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
            if _DRIVER is not None:
                _DRIVER.searcher = self

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
                with _quiet_optuna_warnings(), store.lock(f"study:{self.study_name}"):
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
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError), _quiet_optuna_warnings():
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
                ot_trial.set_user_attr("status", "pruned")
                ot_trial.set_user_attr("epochs_run", epoch)
                ot_trial.set_user_attr("val_accuracy", float(result["accuracy"]))
            else:
                state, reason = TrialState.FAIL, "stopped by Ray Tune before it reported a result"
            if state == TrialState.FAIL:
                wait_for_database(lambda: ot_trial.set_user_attr("fail_reason", reason), "recording a failure")

            def tell() -> optuna.trial.FrozenTrial:
                with _quiet_optuna_warnings():
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
            drv = _DRIVER
            if drv is not None and drv.on_trial is not None:
                drv.on_trial(frozen)

    StudySearch.__module__ = __name__
    StudySearch.__qualname__ = "StudySearch"
    return StudySearch


def _search_class() -> type:
    cls = globals().get("StudySearch")
    if cls is None:
        cls = globals()["StudySearch"] = _study_search_class()
    return cls  # type: ignore[no-any-return]


def __getattr__(attr: str) -> Any:
    if attr == "StudySearch":
        return _search_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# ----------------------------------------------------------------------------------- trainable
_CONTEXTS: dict[tuple[str, str, int], tuple[Any, optuna.Study]] = {}


def _worker_context(name: str, url: str, threads: int) -> tuple[Any, optuna.Study]:
    """The study context (data loaded once) and study, cached per Ray worker process."""
    key = (name, url, threads)
    if key not in _CONTEXTS:
        from ._trial import load_context

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = Store(url, mode="existing")
        ctx = load_context(name, store, threads=threads)
        # The sampler never samples here: every parameter was suggested by the driver.
        study = optuna.load_study(study_name=name, storage=store.optuna, sampler=optuna.samplers.RandomSampler())
        _CONTEXTS[key] = (ctx, study)
    return _CONTEXTS[key]


def _final(spec: StudySpec, values: list[float] | None, status: str, reason: str | None = None) -> dict[str, Any]:
    if values is None:
        metrics = {o: math.nan for o in spec.objectives}
    else:
        metrics = dict(zip(spec.objectives, values, strict=True))
    out: dict[str, Any] = {**metrics, FINAL_KEY: 1, STATUS_KEY: status}
    if reason:
        out[REASON_KEY] = reason
    return out


def ray_trial(config: dict[str, Any], study: str = "", url: str = "", threads: int = 1,
              intermediate: bool = False) -> None:
    """The Tune trainable: evaluate Optuna trial ``config[NUMBER_KEY]`` with ``TrialObjective``."""
    from ray import tune

    from objectives import TrainingError

    from ._trial import TrialObjective

    ctx, ostudy = _worker_context(study, url, threads)
    spec: StudySpec = ctx.spec
    storage = ostudy._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study),
                                                               int(config[NUMBER_KEY]))
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        # Failed as stale and re-queued by another worker while a restored experiment was away.
        tune.report(_final(spec, None, "skipped"))
        return
    trial = optuna.trial.Trial(ostudy, trial_id)
    # Again from the trainable's side: after a restore this is the Tune trial that really ran it.
    trial.set_user_attr("ray_trial_id", tune.get_context().get_trial_id())
    epochs = ctx.train_config.epochs

    def on_epoch(_trial: optuna.trial.BaseTrial, epoch: int, accuracy: float) -> None:
        # Not after the last epoch: the scheduler would stop the trial at max_t before its
        # evaluation is stored. When it stops the trial, report() raises SystemExit here.
        if epoch < epochs:
            tune.report({"accuracy": accuracy, "epoch": epoch})

    objective = TrialObjective(ctx, on_epoch=on_epoch if intermediate else None)
    before = trial.user_attrs  # a restarted trial: what its interrupted attempt recorded
    try:
        values = objective(trial)
    except TrainingError as e:  # deterministic: fail the trial, do not let Tune retry it
        tune.report(_final(spec, None, "failed", e.reason))
        return
    except optuna.TrialPruned as e:  # the Pareto-aware rule (nas._early) stopped it: PRUNED, as locally
        tune.report(_final(spec, None, "pruned", str(e)))
        return
    except Exception as e:
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
        raise
    status = str(trial.user_attrs.get("status", ""))
    if status == "reused" and before.get("status") == "trained" and before.get("spec_hash") == \
            trial.user_attrs.get("spec_hash"):
        # Its first attempt trained and stored the evaluation, then was interrupted before the
        # result was told: it is still this trial's training, not a reuse of another's.
        status = "trained"
        trial.set_user_attr("status", status)
    result = _final(spec, values, status)
    if status == "trained":
        result["epoch"] = int(trial.user_attrs.get("epochs_run", epochs))
    tune.report(result)


# ----------------------------------------------------------------------------------- driver
class _Heartbeats:
    """Records the heartbeats of the experiment's trials (asked, pending or running) from the driver."""

    def __init__(self, store: Store, initial: list[int]) -> None:
        self.store, self.initial = store, initial
        # Often: a worker started with a short --heartbeat judges staleness by its own grace period.
        self.interval = min(store.optuna.heartbeat_interval or 10, HEARTBEAT_SECONDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nas-ray-heartbeat", daemon=True)

    def _beat(self) -> None:
        drv = _DRIVER
        ids = set(self.initial)
        if drv is not None and drv.searcher is not None:
            ids = set(drv.searcher.live_trial_ids())
            self.initial = []
        for tid in ids:
            # database away or trial finished: the next beat retries
            with contextlib.suppress(SQLAlchemyError, optuna.exceptions.StorageInternalError):
                self.store.optuna.record_heartbeat(tid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def __enter__(self) -> _Heartbeats:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _OnlyEnabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def _init_ray(options: RayOptions) -> bool:
    """Start a local Ray (all cores) or connect to ``options.address``; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    filt = _OnlyEnabledNotice()
    notice.addFilter(filt)
    if options.address:
        _check_reachable(options.address)
    try:
        if options.address:
            ray.init(address=options.address, **quiet)  # type: ignore[arg-type]
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     **quiet)  # type: ignore[arg-type]
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = options.address or "a local Ray"
        auth = (" (a cluster with token authentication needs RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
                if options.address else "")
        raise NasError(f"--address: cannot start or reach {where}: {str(e).strip().splitlines()[0]}{auth}; "
                       f"{ADDRESS_HELP}") from None
    finally:
        notice.removeFilter(filt)
    return True


def _check_reachable(address: str) -> None:
    """Fail fast on an address nobody listens on (``ray.init`` would retry for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise NasError(f"--address: cannot parse {address!r}; {ADDRESS_HELP}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise NasError(f"--address: nothing answers at {address} ({e.strerror or e}); {ADDRESS_HELP}") from None


def _own_running(store: Store, name: str, ident: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=store.optuna)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == ident]


def _wait_for_slots(store: Store, name: str, target: int, deadline: float | None) -> bool:
    """Trials running elsewhere hold every slot: wait (failing stale ones) until one frees or the target is met."""
    from ._runner import progress
    from ._worker import slots_left

    study = optuna.load_study(study_name=name, storage=store.optuna)
    while deadline is None or time.time() < deadline:
        with _quiet_optuna_warnings():
            optuna.storages.fail_stale_trials(study)
        if progress(name, store, target).finished >= target:
            return False
        if slots_left(store, name, target) > 0:
            return True
        time.sleep(POLL_SECONDS)
    return False


@contextlib.contextmanager
def _sigint_watch() -> Iterator[Callable[[], bool]]:
    """Tell whether Tune's SIGINT handler fired during ``fit()`` (Tune then returns normally).

    Tune installs its handler for the run and, on the first SIGINT, puts back the handler it
    found; so if ours is installed again afterwards, the run was interrupted. Ours raises
    ``KeyboardInterrupt`` (a second Ctrl-C).
    """
    def marker(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, marker)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def _study_key(name: str, store: Store) -> str:
    """Identifies this incarnation of the study (a deleted and re-created one differs)."""
    row = store.get_study(name)
    created = row.created_at.isoformat() if row is not None and row.created_at else ""
    return f"{store.optuna.get_study_id_from_name(name)}@{created}"


def _settings(name: str, store: Store, options: RayOptions, spec: StudySpec) -> dict[str, Any]:
    return {"study": name, "storage": make_url(store.url).render_as_string(hide_password=True),
            "study_key": _study_key(name, store), "max_concurrent": options.max_concurrent,
            "cpus_per_trial": options.cpus_per_trial, "gpus_per_trial": options.gpus_per_trial}


def _scheduler(spec: StudySpec) -> Any:
    if spec.pruner not in SINGLE_METRIC_PRUNERS or spec.objectives != ["accuracy"]:
        return None
    from ray.tune.schedulers import ASHAScheduler

    rf, brackets = {"asha": (3, 1), "hyperband": (3, 3), "median": (2, 1)}[spec.pruner]
    return ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=max(1, spec.fidelity.epochs),
                         grace_period=1, reduction_factor=rf, brackets=brackets)


def _ignore(_value: object) -> None:
    return None


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_ray(name: str, store: Store, *, trials: int | None = None, options: RayOptions | None = None,
            timeout: float | None = None, on_progress: Callable[[Progress], None] | None = None,
            say: Callable[[str], None] | None = None) -> Progress:
    """Run study ``name`` to its target of finished trials on Ray Tune; see the module docstring.

    Args:
        trials: raise (or set) the study's target first.
        options: cluster address, ``max_concurrent`` (default: cluster CPUs // cpus per trial),
            CPUs and GPUs per trial.
        timeout: stop starting new trials after this many seconds (running ones finish).
        on_progress: called with a :class:`Progress` after every finished trial.
        say: one-line notices (resuming an experiment, Ray start-up).

    Raises:
        NasError: bad arguments, Ray missing or unreachable, or the study keeps failing.
        RayInterrupted: SIGINT; the experiment is saved and rerunning resumes it.
    """
    global _DRIVER
    from ._runner import progress
    from ._worker import make_sampler, slots_left

    options = options or RayOptions()
    check_backend_options("ray", address=options.address, max_concurrent=options.max_concurrent,
                          cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.tune") is None:
        raise NasError(PIP_HINT)
    spec = get_study_spec(name, store)
    row = store.get_study(name)
    assert row is not None
    if trials is not None and trials < 1:
        raise NasError(f"--trials: must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise NasError(f"--timeout: must be positive seconds, got {timeout}")
    deadline = time.time() + timeout if timeout else None
    url = absolute_url(store.url)
    notify = say or (lambda _msg: None)
    path = experiment_dir(name, url)
    # Marks this driver's trials; host and path, so Ray drivers on other hosts are not "ours".
    ident = f"ray:{socket.gethostname()}:{path}"

    def current() -> Progress:  # the target is re-read: another command may raise it meanwhile
        return progress(name, store)

    def report() -> Progress:
        p = current()
        if on_progress:
            on_progress(p)
        return p

    now = progress(name, store, trials or row.target_trials)
    if now.finished >= now.target and not path.exists():
        if trials is not None and trials != row.target_trials:
            store.set_target(name, trials)
        return report()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Tune's new console output prints tables even at verbose=0; the classic reporter is silent.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials run in the driver's working directory (relative data paths), not in Tune's trial dirs.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    try:
        import ray
        from ray import tune
    except ImportError:
        raise NasError(PIP_HINT) from None

    started = False
    lock = _experiment_lock(path, name)
    try:
        t0 = time.perf_counter()
        started = _init_ray(options)
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if started:
            what = f"connected to the Ray cluster at {options.address}" if options.address else "started a local Ray"
            notify(f"{what} ({cpus:g} CPUs, {gpus:g} GPUs) in {time.perf_counter() - t0:.1f} s")
        if options.cpus_per_trial > cpus:
            raise NasError(f"--cpus-per-trial: {options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")
        if options.gpus_per_trial > gpus:
            raise NasError(f"--gpus-per-trial: {options.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs")
        max_concurrent = options.max_concurrent or max(1, int(cpus // options.cpus_per_trial))
        if trials is not None and trials != row.target_trials:  # only once the cluster is usable
            store.set_target(name, trials)
        if options.address and store.url.startswith("sqlite"):
            notify(f"note: SQLite database {url}: Ray workers on other hosts cannot open it; use PostgreSQL "
                   "for a multi-host cluster")
        settings = _settings(name, store, options, spec)
        trainable = tune.with_resources(
            tune.with_parameters(ray_trial, study=name, url=url, threads=options.threads,
                                 intermediate=_scheduler(spec) is not None),
            {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        data = None
        while True:
            restorable = tune.Tuner.can_restore(str(path))
            if restorable and _read_settings(path).get("study_key") != settings["study_key"]:
                notify(f"discarding the saved Ray Tune experiment {path}: it belongs to an earlier study "
                       f"named {name!r} (deleted since)")
                shutil.rmtree(path, ignore_errors=True)
                restorable = False
            now = current()
            target = now.target
            if now.finished >= target:
                if restorable or path.exists():
                    _abandon(store, name, ident, path)
                break
            if deadline is not None and time.time() >= deadline:
                break
            if restorable:
                resumed = _own_running(store, name, ident)
                old = _read_settings(path)
                changed = {k: (old.get(k), v) for k, v in settings.items()
                           if k in old and old[k] != v and k != "storage"}
                note = ("; it keeps its original " + ", ".join(f"{k}={a}" for k, (a, _b) in changed.items())
                        if changed else "")
                notify(f"resuming the interrupted Ray Tune experiment {path} "
                       f"({len(resumed)} unfinished trials){note}")
                initial = [t._trial_id for t in resumed]
                analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
                analysis_level = analysis_log.level
                analysis_log.setLevel(logging.ERROR)  # "failed to fetch metrics" of trials never reported
                try:
                    tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                               resume_errored=False, restart_errored=False)
                finally:
                    analysis_log.setLevel(analysis_level)
            else:
                if path.exists():
                    shutil.rmtree(path)  # a directory Tune cannot restore (created, never started)
                if slots_left(store, name, target) <= 0 and not _wait_for_slots(store, name, target, deadline):
                    continue
                if data is None:
                    data = spec.load_data()
                space = _SpaceFn(spec.space, spec.space_options, data.input_shape)
                searcher = _search_class()(spec, store.optuna, space,
                                       make_sampler(spec, RAY_SEED_OFFSET, target))
                initial = []
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(spec), num_samples=-1,
                                                max_concurrent_trials=max_concurrent, reuse_actors=True,
                                                trial_dirname_creator=_trial_dirname),
                    run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                              failure_config=tune.FailureConfig(max_failures=RAY_MAX_FAILURES)))
                _write_settings(path, settings)
            _DRIVER = _Driver(store=store, ident=ident, deadline=deadline, on_trial=lambda _t: _ignore(report()))
            if not restorable:
                _DRIVER.searcher = searcher
            tune_log = logging.getLogger("ray.tune.tune")
            level = tune_log.level
            tune_log.setLevel(logging.ERROR)  # its SIGINT notes point at Tuner.restore; we say how to resume
            try:
                with _sigint_watch() as interrupted, _Heartbeats(store, initial):
                    try:
                        tuner.fit()
                    except KeyboardInterrupt:
                        raise RayInterrupted(current(), path) from None
                    if interrupted():
                        raise RayInterrupted(current(), path)
                broken = _DRIVER.searcher.broken if _DRIVER.searcher is not None else None
            finally:
                tune_log.setLevel(level)
                _DRIVER = None
            # The experiment told every trial it knows; RUNNING ones of ours left over were asked by
            # a driver killed before Tune saved them: fail them and queue their parameters again.
            orphans = _requeue_orphans(store, name, ident)
            if orphans:
                notify(f"queued again {orphans} trials a killed Ray driver left running")
            shutil.rmtree(path, ignore_errors=True)
            if broken:
                raise NasError(broken)
    except KeyboardInterrupt:
        raise RayInterrupted(current(), path if tune.Tuner.can_restore(str(path)) else None) from None
    finally:
        try:
            if started:
                ray.shutdown()
        finally:
            lock.close()
    return report()


def _experiment_lock(path: Path, name: str) -> Any:
    """Hold ``<experiment>.lock`` for the run: one Ray driver per study, database and ``$NAS_HOME``."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)  # Tune's state pickles the storage URL (with its password, if any)
    fh = open(f"{path}.lock", "a")  # noqa: SIM115 -- held until run_ray returns
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise NasError(f"study {name!r}: another 'nas study run --backend ray' is running it with this database "
                       f"(lock {path}.lock); wait for it, or run local workers beside it") from None
    return fh


def _requeue_orphans(store: Store, name: str, ident: str) -> int:
    from ._worker import fail_and_requeue

    study = optuna.load_study(study_name=name, storage=store.optuna)
    n = 0
    with _quiet_optuna_warnings(), store.lock(f"study:{name}"):  # queued before anyone takes the freed slots
        retry = RetryTrial(max_retry=3)  # a clean retry: no user attributes of the orphan
        for t in _own_running(store, name, ident):
            n += fail_and_requeue(store.optuna, study, t._trial_id, "orphaned by a killed Ray driver", retry)
    return n


def _abandon(store: Store, name: str, ident: str, path: Path) -> None:
    """The target is met without the saved experiment: fail its orphaned trials, drop it."""
    for t in _own_running(store, name, ident):
        with contextlib.suppress(Exception):
            store.optuna.set_trial_user_attr(t._trial_id, "fail_reason", "Ray experiment dropped: target met")
            store.optuna.set_trial_state_values(t._trial_id, TrialState.FAIL)
    shutil.rmtree(path, ignore_errors=True)


SETTINGS_FILE = "lightnas.json"


def _write_settings(path: Path, settings: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / SETTINGS_FILE).write_text(json.dumps({**settings, "host": socket.gethostname()}, indent=2))


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((path / SETTINGS_FILE).read_text()))
    except (OSError, ValueError):
        return {}
