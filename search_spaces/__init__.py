"""Architectures as data: ``ArchSpec``, LightLayers, the model builder, the block and space
registries, and the operations on a spec with its weights (surgery, weight inheritance)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one error base is loaded at once (light: no torch), so every package can derive its errors from it
# without importing torch; the rest of the face is loaded on first use (see __getattr__).
from ._errors import InputError

if TYPE_CHECKING:
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

_LAZY = {
    **dict.fromkeys(["BlockKind", "Unit", "block_kind", "list_blocks", "register_block"], "._blocks"),
    **dict.fromkeys(["LightNet", "build_model", "check_input_shape"], "._build"),
    **dict.fromkeys(["LightConv2d", "LightLinear", "rank_from_ratio"], "._layers"),
    **dict.fromkeys(["inherit_weights", "overlap", "spec_state_shapes"], "._morph"),
    **dict.fromkeys([
        "ChoiceTrial", "SearchSpace", "SpaceError", "enumerate_choices", "get_space", "list_spaces", "register_space",
        "space_class"
    ], "._registry"),
    **dict.fromkeys(["ArchSpec", "Block", "Head", "SpecError", "Stage", "Stem"], "._spec"),
    **dict.fromkeys(["SuperNet"], "._supernet"),
    **dict.fromkeys([
        "FusionChoice", "LOW_RANK_LADDER", "Width", "apply_low_rank", "block_shapes", "channel_sparsity",
        "choose_fusion", "fusion_candidates", "keep_channels", "low_rank_plan", "prunable_widths", "prune_channels",
        "remove_block", "transplant"
    ], "._surgery"),
}

__all__ = [
    "LOW_RANK_LADDER",
    "InputError",
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


def __getattr__(name: str) -> Any:
    """A name of the face, loaded on first use (the built-in spaces registered first)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'search_spaces' has no attribute {name!r}")
    importlib.import_module("._spaces", __name__)  # registers the built-in spaces
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
