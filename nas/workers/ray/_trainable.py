"""The Tune trainable of the Ray backend: the same :class:`nas.search.TrialObjective` local workers
run, on the Optuna trial the driver asked (its parameters were suggested there)."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from storage import Store

from ..._lru import LRUCache
from ...search import Status, StudySpec, TrialObjective, load_context
from .._liveness import DB_WAIT, wait_for_database
from ._searcher import FINAL_KEY, NUMBER_KEY, REASON_KEY, STATUS_KEY

__all__ = ["ray_trial"]


#: This Ray worker process's study contexts (data loaded once) and studies, by (URL, study identity: name
#: and creation time, threads): a study deleted and created again under its name is loaded anew. The
#: least recently used dropped past 8; the stores by URL, past 4.
_CONTEXTS: LRUCache[tuple[str, str, Any, int], tuple[Any, optuna.Study]] = LRUCache(limit=8)
_STORES: LRUCache[str, Store] = LRUCache(limit=4)


def _worker_context(name: str, url: str, threads: int) -> tuple[Any, optuna.Study]:
    """The study context (data loaded once) and study, cached per Ray worker process."""
    store = _STORES.get_or_put(url, lambda: Store(url, mode="existing"))
    row = store.get_study(name)
    key = (url, name, row.created_at if row is not None else None, threads)
    hit = _CONTEXTS.get(key)
    if hit is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ctx = load_context(name, store, threads=threads)
        # The sampler never samples here: every parameter was suggested by the driver.
        study = optuna.load_study(study_name=name, storage=store.optuna, sampler=optuna.samplers.RandomSampler())
        hit = _CONTEXTS.put(key, (ctx, study))
    return hit  # type: ignore[no-any-return]


def _final(study_spec: StudySpec, values: list[float] | None, status: str, reason: str | None = None) -> dict[str, Any]:
    if values is None:
        metrics = {o: math.nan for o in study_spec.objectives}
    else:
        metrics = dict(zip(study_spec.objectives, values, strict=True))
    out: dict[str, Any] = {**metrics, FINAL_KEY: 1, STATUS_KEY: status}
    if reason:
        out[REASON_KEY] = reason
    return out


def ray_trial(config: dict[str, Any], study: str = "", url: str = "", threads: int = 1,
              intermediate: bool = False) -> None:
    """The Tune trainable: evaluate Optuna trial ``config[NUMBER_KEY]`` with ``TrialObjective``."""
    from ray import tune

    from objectives import TrainingError

    ctx, ostudy = _worker_context(study, url, threads)
    study_spec: StudySpec = ctx.study_spec
    storage = ostudy._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study),
                                                               int(config[NUMBER_KEY]))
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        # Failed as stale and re-queued by another worker while a restored experiment was away.
        tune.report(_final(study_spec, None, "skipped"))
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

    # A trained network's result waits out a short database outage (DB_WAIT) instead of being trained again.
    objective = TrialObjective(ctx, on_epoch=on_epoch if intermediate else None,
                               wait=lambda step, what: wait_for_database(step, what, max_wait=DB_WAIT))
    before = trial.user_attrs  # a restarted trial: what its interrupted attempt recorded
    try:
        values = objective(trial)
    except TrainingError as e:  # deterministic: fail the trial, do not let Tune retry it
        tune.report(_final(study_spec, None, "failed", e.reason))
        return
    except optuna.TrialPruned as e:  # the Pareto-aware rule stopped it: PRUNED, as locally
        tune.report(_final(study_spec, None, "pruned", str(e)))
        return
    except Exception as e:
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
        raise
    status = str(trial.user_attrs.get("status", ""))
    if status == Status.REUSED and before.get("status") == Status.TRAINED and before.get("spec_hash") == \
            trial.user_attrs.get("spec_hash"):
        # Its first attempt trained and stored the evaluation, then was interrupted before the
        # result was told: it is still this trial's training, not a reuse of another's.
        status = Status.TRAINED
        trial.set_user_attr("status", status)
    result = _final(study_spec, values, status)
    if status == Status.TRAINED:
        result["epoch"] = int(trial.user_attrs.get("epochs_run", epochs))
    tune.report(result)
