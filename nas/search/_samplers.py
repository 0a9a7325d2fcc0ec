"""The study's sampler and pruner, as every worker (local, ``nas worker``, the Ray driver) makes them."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import optuna

from .._fields import AUTO_SAMPLER
from ._spec import StudySpec

if TYPE_CHECKING:
    from objectives import Dataset
    from storage import Store

__all__ = ["make_pruner", "make_sampler", "resolve_sampler"]


def resolve_sampler(study_spec: StudySpec) -> str:
    """The sampler a study runs: its own, or for ``auto`` ``AUTO_SAMPLER`` (tpe: see ``nas._fields``
    for the measurement behind it)."""
    if study_spec.sampler != "auto":
        return study_spec.sampler
    return AUTO_SAMPLER


def make_sampler(study_spec: StudySpec, worker: int = 0, n_target: int | None = None, *, store: Store | None = None,
                 data: Dataset | None = None, threads: int | None = 1) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker (``seed + worker``, modulo 2**32: NumPy's range).

    With a proxy (``study_spec.proxy``) it is wrapped in :class:`nas.search._proxy.ProxySampler`, which
    caches scores in ``store`` and scores on ``data`` (loaded when not given).
    """
    seed = (study_spec.seed + worker) % 2**32
    target = n_target or study_spec.trials
    name = resolve_sampler(study_spec)
    startup = max(4, min(10, target // 4))
    base: optuna.samplers.BaseSampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            base = optuna.samplers.RandomSampler(seed=seed)
        elif name == "nsga2":
            base = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, target // 4)))
        elif name == "gp":
            # Constrained (log-)EHVI / LogEI: the constraints are the ones each trial sets with
            # Trial.set_constraint (one per budgeted resource); warnings about parameters outside the
            # intersection search space (sampled independently) are expected in conditional spaces.
            base = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        else:
            base = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=startup)
    if study_spec.proxy is None:
        return base
    from ._proxy import ProxySampler

    return ProxySampler(base, study_spec, store, data=data, threads=threads)


def make_pruner(study_spec: StudySpec) -> optuna.pruners.BasePruner:
    """The local Optuna pruner of a single-objective study (``NopPruner`` when none, and for
    ``pareto``, which :class:`nas.search.TrialObjective` applies itself)."""
    epochs = study_spec.fidelity.epochs
    if study_spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if study_spec.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if study_spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()
