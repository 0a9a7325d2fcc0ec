"""The Ray backend's driver: ``nas study run NAME --backend ray`` runs a Ray Tune experiment whose
searcher is the study itself (:mod:`._searcher`) and whose trainable is the trial objective every
worker runs (:mod:`._trainable`). How it slots, fails, resumes and stops early: docs/design.md,
"Ray Tune backend".
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from storage import RetryTrial, Store

from ..._errors import NasError
from ...search import SINGLE_METRIC_PRUNERS, StudySpec, get_study_spec, make_sampler, study_data
from .._liveness import Heartbeat
from .._local import Progress, progress
from .._worker import fail_and_requeue, slots_left
from . import _searcher
from ._searcher import POLL_SECONDS, RAY_MAX_FAILURES, SpaceFn, quiet_optuna_warnings, search_class
from ._trainable import ray_trial

__all__ = ["BACKENDS", "RAY_SEED_OFFSET", "RayInterrupted", "RayOptions", "absolute_url", "check_backend_options",
           "experiment_dir", "run_ray"]

log = logging.getLogger("nas.ray")

BACKENDS = ("local", "ray")
#: The Ray driver's sampler is seeded ``study_spec.seed + RAY_SEED_OFFSET`` (local workers: ``+ worker``).
RAY_SEED_OFFSET = 1000
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
        raise NasError(f"got {backend!r}; accepted: {', '.join(BACKENDS)}", field="backend")
    ray_only = {"address": address, "max_concurrent": max_concurrent, "cpus_per_trial": cpus_per_trial,
                "gpus_per_trial": gpus_per_trial}
    if backend == "local":
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise NasError(f"only with --backend ray (accepted backends: {', '.join(BACKENDS)}); "
                           "the local backend takes --workers", field=given[0])
        return None
    if workers is not None:
        raise NasError("only with --backend local; with --backend ray use --max-concurrent K", field="workers")
    if address is not None and not address.strip():
        raise NasError(f"empty; {ADDRESS_HELP}", field="address")
    if max_concurrent is not None and max_concurrent < 1:
        raise NasError(f"must be an integer >= 1, got {max_concurrent}", field="max_concurrent")
    if cpus_per_trial is not None and not (cpus_per_trial > 0 and math.isfinite(cpus_per_trial)):
        raise NasError(f"must be a number > 0, got {cpus_per_trial}", field="cpus_per_trial")
    if gpus_per_trial is not None and not (gpus_per_trial >= 0 and math.isfinite(gpus_per_trial)):
        raise NasError(f"must be a number >= 0, got {gpus_per_trial}", field="gpus_per_trial")
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


# ----------------------------------------------------------------------------------- driver
def _driver_heartbeat(store: Store, initial: list[int]) -> Heartbeat:
    """Records the heartbeats of the experiment's trials (asked, pending or running) from the driver."""
    pending = list(initial)

    def beat() -> None:
        drv = _searcher.running_driver()
        ids = set(pending)
        if drv is not None and drv.searcher is not None:
            ids = set(drv.searcher.live_trial_ids())
            pending.clear()
        for tid in ids:
            # database away or trial finished: the next beat retries
            with contextlib.suppress(SQLAlchemyError, optuna.exceptions.StorageInternalError):
                store.optuna.record_heartbeat(tid)

    # Often: a worker started with a short --heartbeat judges staleness by its own grace period.
    return Heartbeat(beat, min(store.optuna.heartbeat_interval or 10, HEARTBEAT_SECONDS), "nas-ray-heartbeat")


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
        raise NasError(f"cannot start or reach {where}: {str(e).strip().splitlines()[0]}{auth}; "
                       f"{ADDRESS_HELP}", field="address") from None
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
        raise NasError(f"cannot parse {address!r}; {ADDRESS_HELP}", field="address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise NasError(f"nothing answers at {address} ({e.strerror or e}); {ADDRESS_HELP}", field="address") from None


def _own_running(store: Store, name: str, ident: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=store.optuna)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == ident]


def _wait_for_slots(store: Store, name: str, target: int, deadline: float | None) -> bool:
    """Trials running elsewhere hold every slot: wait (failing stale ones) until one frees or the target is met."""
    study = optuna.load_study(study_name=name, storage=store.optuna)
    while deadline is None or time.time() < deadline:
        with quiet_optuna_warnings():
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


def _settings(name: str, store: Store, options: RayOptions, study_spec: StudySpec) -> dict[str, Any]:
    return {"study": name, "storage": make_url(store.url).render_as_string(hide_password=True),
            "study_key": _study_key(name, store), "max_concurrent": options.max_concurrent,
            "cpus_per_trial": options.cpus_per_trial, "gpus_per_trial": options.gpus_per_trial}


def _scheduler(study_spec: StudySpec) -> Any:
    if study_spec.pruner not in SINGLE_METRIC_PRUNERS or study_spec.objectives != ["accuracy"]:
        return None
    from ray.tune.schedulers import ASHAScheduler

    rf, brackets = {"asha": (3, 1), "hyperband": (3, 3), "median": (2, 1)}[study_spec.pruner]
    return ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=max(1, study_spec.fidelity.epochs),
                         grace_period=1, reduction_factor=rf, brackets=brackets)


def _ignore(_value: object) -> None:
    return None


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_ray(name: str, store: Store, *, trials: int | None = None, options: RayOptions | None = None,
            timeout: float | None = None, on_progress: Callable[[Progress], None] | None = None,
            say: Callable[[str], None] | None = None) -> Progress:
    """Run study ``name`` to its target of networks within budget on Ray Tune (docs/design.md).

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
    options = options or RayOptions()
    check_backend_options("ray", address=options.address, max_concurrent=options.max_concurrent,
                          cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.tune") is None:
        raise NasError(PIP_HINT)
    study_spec = get_study_spec(name, store)
    row = store.get_study(name)
    assert row is not None
    if trials is not None and trials < 1:
        raise NasError(f"must be >= 1, got {trials}", field="trials")
    if timeout is not None and timeout <= 0:
        raise NasError(f"must be positive seconds, got {timeout}", field="timeout")
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
            raise NasError(f"{options.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs", field="cpus_per_trial")
        if options.gpus_per_trial > gpus:
            raise NasError(f"{options.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs", field="gpus_per_trial")
        max_concurrent = options.max_concurrent or max(1, int(cpus // options.cpus_per_trial))
        if trials is not None and trials != row.target_trials:  # only once the cluster is usable
            store.set_target(name, trials)
        if options.address and store.url.startswith("sqlite"):
            notify(f"note: SQLite database {url}: Ray workers on other hosts cannot open it; use PostgreSQL "
                   "for a multi-host cluster")
        settings = _settings(name, store, options, study_spec)
        trainable = tune.with_resources(
            tune.with_parameters(ray_trial, study=name, url=url, threads=options.threads,
                                 intermediate=_scheduler(study_spec) is not None),
            {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        shape: tuple[int, int, int] | None = None
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
                if shape is None:
                    shape = study_data(study_spec, store).input_shape
                space = SpaceFn(study_spec.space, study_spec.space_options, shape)
                sampler = make_sampler(study_spec, RAY_SEED_OFFSET, target, store=store, threads=1)
                searcher = search_class()(study_spec, store.optuna, space, sampler)
                initial = []
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(study_spec), num_samples=-1,
                                                max_concurrent_trials=max_concurrent, reuse_actors=True,
                                                trial_dirname_creator=_trial_dirname),
                    run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                              failure_config=tune.FailureConfig(max_failures=RAY_MAX_FAILURES)))
                _write_settings(path, settings)
            drv = _searcher.Driver(store=store, ident=ident, deadline=deadline, on_trial=lambda _t: _ignore(report()))
            if not restorable:
                drv.searcher = searcher
            tune_log = logging.getLogger("ray.tune.tune")
            level = tune_log.level
            tune_log.setLevel(logging.ERROR)  # its SIGINT notes point at Tuner.restore; we say how to resume
            try:
                with _searcher.driving(drv), _sigint_watch() as interrupted, _driver_heartbeat(store, initial):
                    try:
                        tuner.fit()
                    except KeyboardInterrupt:
                        raise RayInterrupted(current(), path) from None
                    if interrupted():
                        raise RayInterrupted(current(), path)
                broken = drv.searcher.broken if drv.searcher is not None else None
            finally:
                tune_log.setLevel(level)
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
    study = optuna.load_study(study_name=name, storage=store.optuna)
    n = 0
    with quiet_optuna_warnings(), store.lock(f"study:{name}"):  # queued before anyone takes the freed slots
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
