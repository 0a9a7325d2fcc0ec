"""Budget first: exact space minima, shares within a budget, spaces fitted to it, refusals."""

from __future__ import annotations

import random

import pytest

from objectives import (
    RESOURCES,
    RUNTIME_RESOURCES,
    USABLE_SHARE,
    estimate_cost,
    fit_space,
    get_device,
    parse_budget,
    space_minimum,
)
from objectives.cost import space_share
from search_spaces import enumerate_choices, get_space, list_spaces

#: Small enough to enumerate every architecture (hundreds to a few thousand), large enough that
#: every kind of choice (depth, width, rank, kernel, expansion, block type, head) is in play.
SMALL = {
    "resnet": {"max_depth": 2, "widths": (8, 16), "stem_widths": (8, 16), "rank_ratios": (1.0, 0.25)},
    "plain": {"stages": 2, "max_depth": 2, "widths": (8, 16), "hidden": (0, 16), "rank_ratios": (1.0, 0.125)},
    "mobilenetv2": {"stages": 2, "max_depth": 2, "expansions": (1, 6), "kernels": (3,), "width_mults": (0.5, 1.0),
                    "stem_widths": (8, 16), "rank_ratios": (1.0, 0.25)},
}


def test_every_registered_space_has_a_small_variant_here():
    assert set(SMALL) == set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", ["rpi4", "cortex-m7"])
def test_exact_minimum_equals_exhaustive_enumeration(name, shape, device):
    space = get_space(name, input_shape=shape, **SMALL[name])
    every = [estimate_cost(arch, shape, 10, device=device).totals for _, arch in enumerate_choices(space.suggest)]
    assert len(every) >= 200
    minima = space_minimum(space, 10, device)
    runtime = get_device(device).memory_runtime is not None
    assert set(minima) == set(RESOURCES) - (set() if runtime else set(RUNTIME_RESOURCES))
    for resource, (value, arch) in minima.items():
        best = min(t[resource] for t in every)
        if resource in RUNTIME_RESOURCES:
            # ram: not a sum or max over segments (the whole graph is planned), the smallest ram among the
            # networks that minimise each segment field; flash: a sum but for PADs sharing one constant.
            assert best <= value <= best * (1.05 if resource == "ram_bytes" else 1.005), (resource, value, best)
        else:
            assert value == pytest.approx(best, rel=1e-12), resource
        assert estimate_cost(arch, shape, 10, device=device)[resource] == value  # attained by a real network
        assert space.params_of(arch)  # and it is an architecture of this space


def test_enumeration_follows_conditional_choices():
    space = get_space("plain", input_shape=(1, 8, 8), stages=1, max_depth=1, widths=(8,), kernels=(3,),
                      hidden=(0, 16), rank_ratios=(1.0, 0.5))
    params = [p for p, _ in enumerate_choices(space.suggest)]
    # head_rank is asked only when there is a hidden layer: 2 stage ranks x (1 + 2) heads.
    assert len(params) == 6 and sum("head_rank" in p for p in params) == 4
    assert len({space.suggest(__import__("optuna").trial.FixedTrial(p)).hash for p in params}) == 6


def test_share_is_the_fraction_of_uniform_samples_within_the_whole_budget():
    space = get_space("resnet", input_shape=(1, 28, 28))
    budget = parse_budget("flops<=20M params<=60k")
    share = space_share(space, budget, 10, samples=2000, seed=3)
    rng = random.Random(3)
    inside = [estimate_cost(a, (1, 28, 28), 10) for a in (space.sample(rng) for _ in range(2000))]
    within = [r for r in inside if not budget.violations(r.totals)]
    assert share.samples == 2000
    assert share.share == len(within) / 2000
    assert share.mean_flops == pytest.approx(sum(r["flops"] for r in within) / len(within))


def test_fitting_scales_a_space_that_barely_fits_and_keeps_what_the_user_gave():
    budget = parse_budget("flops<=4M")
    before = space_share(get_space("resnet", input_shape=(1, 28, 28)), budget, 10)
    assert before.share < 0.05  # the observation: resnet at 28x28 hardly reaches 4 MFLOPs
    fit = fit_space("resnet", (1, 28, 28), {}, budget, 10)
    assert fit.scaled and fit.share_after >= USABLE_SHARE
    after = space_share(get_space("resnet", input_shape=(1, 28, 28), **fit.options), budget, 10)
    assert after.share >= USABLE_SHARE - 0.05 and after.mean_flops <= 4e6
    # The user's own width choice is kept: the width multiplier is not varied, other knobs are.
    mine = fit_space("resnet", (1, 28, 28), {"widths": [8, 12]}, budget, 10)
    assert mine.options["widths"] == [8, 12] and "width_mult" not in mine.scaled
    assert mine.kept == {"widths": [8, 12]}


def test_fitting_prefers_the_variant_with_the_most_compute_within_the_budget():
    # TinyNAS: of the variants with a usable share, the one whose fitting networks are largest.
    budget = parse_budget("flops<=4M")
    fit = fit_space("plain", (1, 28, 28), {}, budget, 10)
    chosen = space_share(get_space("plain", input_shape=(1, 28, 28), **fit.options), budget, 10, samples=300)
    smallest = space_share(get_space("plain", input_shape=(1, 28, 28), width_mult=0.25, stem_stride=2, max_depth=1),
                           budget, 10, samples=300)
    assert smallest.share > chosen.share  # the smallest variant fits more often ...
    assert chosen.mean_flops > smallest.mean_flops  # ... but carries less compute, so it is not chosen
