"""The study's sampler and pruner, as every worker (local, ``nas worker``, the Ray driver) makes them."""

from __future__ import annotations

import warnings

import optuna

from ._spec import StudySpec

__all__ = ["make_pruner", "make_sampler"]


def make_sampler(study_spec: StudySpec, worker: int = 0, n_target: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker (``seed + worker``, modulo 2**32: NumPy's range)."""
    seed = (study_spec.seed + worker) % 2**32
    target = n_target or study_spec.trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study_spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if study_spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, target // 4)))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=max(4, min(10, target // 4)))


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
