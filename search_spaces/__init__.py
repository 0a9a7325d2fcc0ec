"""Architectures as data: ``ArchSpec``, LightLayers, the model builder and the space registry."""

from __future__ import annotations

from . import _spaces  # noqa: F401  (registers the built-in spaces)
from ._build import LightNet, build_model, check_input_shape
from ._layers import LightConv2d, LightLinear, rank_from_ratio
from ._registry import SearchSpace, SpaceError, get_space, list_spaces, register_space, space_class
from ._spec import ArchSpec, Block, Head, SpecError, Stage, Stem

__all__ = [
    "ArchSpec",
    "Block",
    "Head",
    "LightConv2d",
    "LightLinear",
    "LightNet",
    "SearchSpace",
    "SpaceError",
    "SpecError",
    "Stage",
    "Stem",
    "build_model",
    "check_input_shape",
    "get_space",
    "list_spaces",
    "rank_from_ratio",
    "register_space",
    "sample_spec",
    "space_class",
]


def sample_spec(space: SearchSpace, seed: int) -> ArchSpec:
    """One spec drawn at random from ``space`` (reproducible for a seed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.suggest(study.ask())
