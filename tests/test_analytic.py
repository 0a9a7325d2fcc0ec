"""The analytic cost model against the traced reference, row for row, over the space registry."""

from __future__ import annotations

import random

import pytest

from objectives import estimate_cost
from objectives.cost import analytic_layers, trace_layers
from search_spaces import ArchSpec, Block, Head, Stage, Stem, get_space, list_spaces

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 17, 23), (3, 96, 96)]
#: Option sets per space: the defaults, and scaled variants as budget fitting makes them.
VARIANTS = [{}, {"width_mult": 0.25, "stem_stride": 2}, {"width_mult": 0.5, "max_depth": 1, "stem_stride": 1}]
N_SPECS = 12


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", VARIANTS, ids=["given", "scaled", "shallow"])
def test_analytic_rows_equal_the_traced_model(name, shape, options):
    space = get_space(name, input_shape=shape, **options)
    rng = random.Random(f"{name}{shape}{options}")
    for _ in range(N_SPECS):
        arch = space.sample(rng)
        analytic, traced = analytic_layers(arch, shape, 10), trace_layers(arch, shape, 10)
        assert analytic == traced, arch.to_json()
        a = estimate_cost(arch, shape, 10, device="cortex-m7")
        t = estimate_cost(arch, shape, 10, device="cortex-m7", method="trace")
        assert a.totals == t.totals
        assert a.rows == t.rows


# Specs no registered space produces, each exercising one path of the block functions.
EDGE = {
    "bottleneck_strided_low_rank": ArchSpec(Stem(8), (Stage((Block("bottleneck", 32, 8, 12, 3, 2, 0.25),
                                                             Block("bottleneck", 32, 8, 8, 5, 1, 0.5))),)),
    "basic_projection_low_rank": ArchSpec(Stem(4, 5, 2), (Stage((Block("basic", 12, 6, None, 7, 1, 0.125),)),)),
    "inverted_mid_equals_in": ArchSpec(Stem(8), (Stage((Block("inverted", 8, 8, None, 3, 1, 0.5),
                                                        Block("inverted", 8, 8, None, 5, 2, 1.0))),), act="relu6"),
    "inverted_one_channel_depthwise": ArchSpec(Stem(1), (Stage((Block("inverted", 1, 1, None, 3, 1),
                                                                Block("inverted", 4, 1, None, 3, 1))),)),
    "conv_kernel_one": ArchSpec(Stem(3, 1), (Stage((Block("conv", 5, kernel=1, stride=2, rank_ratio=0.5),)),)),
    "head_hidden_low_rank": ArchSpec(Stem(8), (Stage((Block("conv", 16),)),), head=Head(64, 0.25, 0.5)),
    "head_hidden_dense": ArchSpec(Stem(8), (Stage((Block("conv", 16),)),), head=Head(32)),
    "strides_past_one_pixel": ArchSpec(Stem(4, 3, 2),
                                       tuple(Stage((Block("basic", 8, 8, stride=2),)) for _ in range(4))),
}


@pytest.mark.parametrize("arch", EDGE.values(), ids=EDGE.keys())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 9, 13)], ids=["1x8x8", "3x9x13"])
def test_edge_specs_equal_the_traced_model(arch, shape):
    assert analytic_layers(arch, shape, 7) == trace_layers(arch, shape, 7)


def test_a_bad_class_count_is_refused_as_the_traced_path_refused_it():
    from search_spaces import SpecError

    arch = EDGE["head_hidden_dense"]
    for bad in (1, True, 2.0):
        with pytest.raises(SpecError, match="num_classes"):
            estimate_cost(arch, (1, 8, 8), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accepted: analytic, trace"):
        estimate_cost(arch, (1, 8, 8), 10, method="guess")
