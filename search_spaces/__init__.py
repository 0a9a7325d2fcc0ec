"""Architectures as data: ``ArchSpec``, LightLayers, the model builder, the block and space
registries, and the operations on a spec with its weights (surgery, weight inheritance)."""

from __future__ import annotations

from . import _spaces  # noqa: F401  (registers the built-in spaces)
from ._blocks import BlockKind, Unit, block_kind, list_blocks, register_block
from ._build import LightNet, build_model, check_input_shape
from ._layers import LightConv2d, LightLinear, rank_from_ratio
from ._morph import inherit_weights, overlap, spec_state_shapes
from ._registry import (
    ChoiceTrial,
    SearchSpace,
    SpaceError,
    enumerate_choices,
    get_space,
    list_spaces,
    register_space,
    space_class,
)
from ._spec import ArchSpec, Block, Head, SpecError, Stage, Stem
from ._supernet import SuperNet
from ._surgery import (
    LOW_RANK_LADDER,
    FusionChoice,
    Width,
    apply_low_rank,
    block_shapes,
    channel_sparsity,
    choose_fusion,
    fusion_candidates,
    keep_channels,
    low_rank_plan,
    prunable_widths,
    prune_channels,
    remove_block,
    transplant,
)

__all__ = [
    "LOW_RANK_LADDER",
    "ArchSpec",
    "Block",
    "BlockKind",
    "ChoiceTrial",
    "FusionChoice",
    "Head",
    "LightConv2d",
    "LightLinear",
    "LightNet",
    "SearchSpace",
    "SpaceError",
    "SpecError",
    "Stage",
    "Stem",
    "SuperNet",
    "Unit",
    "Width",
    "apply_low_rank",
    "block_kind",
    "block_shapes",
    "build_model",
    "channel_sparsity",
    "check_input_shape",
    "choose_fusion",
    "enumerate_choices",
    "fusion_candidates",
    "get_space",
    "inherit_weights",
    "keep_channels",
    "list_blocks",
    "list_spaces",
    "low_rank_plan",
    "overlap",
    "prunable_widths",
    "prune_channels",
    "rank_from_ratio",
    "register_block",
    "register_space",
    "remove_block",
    "sample_spec",
    "space_class",
    "spec_state_shapes",
    "transplant",
]


def sample_spec(space: SearchSpace, seed: int) -> ArchSpec:
    """One spec drawn at random from ``space`` (reproducible for a seed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.suggest(study.ask())
