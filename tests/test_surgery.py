"""Model surgery: exact channel pruning, skip-coupled widths, block removal, frozen fine-tuning, KD, low rank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from objectives import Distillation, TrainConfig, estimate_cost, load_dataset, parse_budget, train_model
from objectives.train import frozen_except, kd_loss
from search_spaces import (
    ArchSpec,
    Block,
    Head,
    LightConv2d,
    Stage,
    Stem,
    apply_low_rank,
    build_model,
    channel_sparsity,
    choose_fusion,
    fusion_candidates,
    get_space,
    keep_channels,
    list_spaces,
    low_rank_plan,
    prunable_widths,
    prune_channels,
    rank_from_ratio,
    remove_block,
    sample_spec,
    transplant,
)

SHAPE = (1, 8, 8)

SPECS = {
    # resnet-like: basic blocks, one strided with a projection shortcut
    "basic": ArchSpec(Stem(8), (Stage((Block("basic", 8, 8), Block("basic", 8, 6))),
                                Stage((Block("basic", 16, 12, stride=2),)))),
    "bottleneck": ArchSpec(Stem(8), (Stage((Block("bottleneck", 16, 6, 6), Block("bottleneck", 16, 4, 8))),)),
    # mobilenetv2-like, LightLayers at rank ratio 0.5 on the 1x1 convolutions (their ranks do not change)
    "inverted": ArchSpec(Stem(8), (Stage((Block("inverted", 8, 24, rank_ratio=0.5),
                                          Block("inverted", 12, 36, stride=2, rank_ratio=0.5),
                                          Block("inverted", 12, 12))),), act="relu6"),
    # plain: stem -> conv -> conv -> hidden FC -> classifier, nothing skip-coupled
    "plain": ArchSpec(Stem(8), (Stage((Block("conv", 8), Block("conv", 12, stride=2))),), head=Head(hidden=16)),
}


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.1)


def _kill(model, width, channels) -> None:
    """Make ``channels`` of ``width`` zero after its activation, for every input."""
    if width.name == "head.hidden":
        last = model.head.hidden.reduce if model.head.hidden.rank is None else model.head.hidden.expand
        last.weight.data[channels] = 0.0
        last.bias.data[channels] = -1.0
    else:
        unit = model.get_submodule(width.act)
        unit.bn.weight.data[channels] = 0.0
        unit.bn.bias.data[channels] = -1.0


@pytest.mark.parametrize("kind", list(SPECS))
def test_always_zero_channels_are_pruned_and_outputs_do_not_change(kind):
    torch.manual_seed(0)
    spec = SPECS[kind]
    model = build_model(spec, SHAPE, 10)
    _randomise_bn(model)
    model.eval()
    widths = prunable_widths(spec)
    assert widths
    for w in widths:
        _kill(model, w, [0, 2])
    x = torch.randn(96, *SHAPE)
    sparsity = channel_sparsity(model, x)
    for w in widths:
        assert sparsity[w.name][0] == sparsity[w.name][2] == 1.0
    # Pc just below 1: exactly the channels that are zero on every input go.
    keep = keep_channels(sparsity, 1.0 - 1e-9, spec)
    for w in widths:
        assert 0 not in keep[w.name] and 2 not in keep[w.name]
    pruned = prune_channels(model, keep).eval()
    new_widths = {w.name: w.size for w in prunable_widths(pruned.spec)}
    for w in widths:
        assert new_widths[w.name] == len(keep[w.name]) <= w.size - 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    # A really smaller network: the cost model sees fewer FLOPs and parameters.
    before, after = estimate_cost(spec, SHAPE, 10), estimate_cost(pruned.spec, SHAPE, 10)
    assert after["flops"] < before["flops"] and after["params"] < before["params"]
    assert after["params"] == sum(p.numel() for p in pruned.parameters())


def test_what_is_prunable_per_block_type():
    names = {k: [w.name for w in prunable_widths(s)] for k, s in SPECS.items()}
    assert names["basic"] == ["blocks.0.mid", "blocks.1.mid", "blocks.2.mid"]
    assert names["bottleneck"] == ["blocks.0.mid", "blocks.0.mid2", "blocks.1.mid", "blocks.1.mid2"]
    # The expansion-1 inverted block (mid == in) has no expand conv: its mid is the block input.
    assert names["inverted"] == ["blocks.0.mid", "blocks.1.mid"]
    # Plain space: every width between two plain convolutions, and into the head.
    assert names["plain"] == ["stem", "blocks.0.out", "blocks.1.out", "head.hidden"]


def test_keep_channels_rule():
    spec = SPECS["inverted"]  # blocks.0: input 8, mid 24 (expand conv)
    s = torch.linspace(0.0, 0.9, 24)  # channel c has sparsity 0.9 * c / 23
    keep = keep_channels({"blocks.0.mid": s}, 0.5, spec)["blocks.0.mid"]
    assert keep == [c for c in range(24) if float(s[c]) <= 0.5]  # removed: sparsity *above* Pc
    # Exactly the input width (8) would drop the expand conv: one more channel, the next least sparse.
    assert keep_channels({"blocks.0.mid": s}, float(s[7]), spec)["blocks.0.mid"] == list(range(9))
    # Every channel above the threshold: the least sparse ones stay (min_channels).
    assert keep_channels({"blocks.0.mid": torch.ones(24)}, 0.5, spec, min_channels=3)["blocks.0.mid"] == [0, 1, 2]
    assert keep_channels({"blocks.0.mid": s}, 0.95, spec) == {}  # nothing to remove


@pytest.mark.parametrize("space", ["resnet", "mobilenetv2"])
def test_skip_coupled_widths_are_never_cut(space):
    shape = (3, 16, 16)
    sp = get_space(space, input_shape=shape)
    for seed in range(6):
        spec = sample_spec(sp, seed)
        model = build_model(spec, shape, 10).eval()
        # Even the most aggressive pruning (every channel "always zero") keeps block inputs/outputs.
        sparsity = {w.name: torch.ones(w.size) for w in prunable_widths(spec)}
        assert all(w.name.endswith((".mid", ".mid2")) for w in prunable_widths(spec))
        keep = keep_channels(sparsity, 0.5, spec)
        pruned = prune_channels(model, keep)
        assert pruned.spec.stem == spec.stem
        assert pruned.spec.block_inputs() == spec.block_inputs()
        assert [b.out_channels for b in pruned.spec.blocks] == [b.out_channels for b in spec.blocks]
        assert [b.is_residual(c) for b, c in zip(pruned.spec.blocks, pruned.spec.block_inputs(), strict=True)] == \
            [b.is_residual(c) for b, c in zip(spec.blocks, spec.block_inputs(), strict=True)]
        # An inverted block with an expand conv keeps it (its width never collapses onto the input's).
        for old, new, c in zip(spec.blocks, pruned.spec.blocks, spec.block_inputs(), strict=True):
            if old.type == "inverted":
                assert (new.mid_channels == c) == (old.mid_channels == c)
        with torch.no_grad():
            assert pruned(torch.randn(2, *shape)).shape == (2, 10)
        # Channels of a residual block's *output* that are always zero are not even measured.
        sparsity = channel_sparsity(model, torch.randn(8, *shape))
        assert set(sparsity) == {w.name for w in prunable_widths(spec)}


def test_pruning_a_low_rank_layer_keeps_the_blocks_rank_ratio():
    spec = ArchSpec(Stem(8), (Stage((Block("basic", 8, 16, rank_ratio=0.5), Block("basic", 8, 8))),))
    model = build_model(spec, SHAPE, 10).eval()
    keep = {"blocks.0.mid": list(range(0, 16, 2))}
    pruned = prune_channels(model, keep)
    b = pruned.spec.blocks[0]
    assert b.mid_channels == 8 and b.rank_ratio == 0.5
    conv1 = pruned.blocks[0].conv1.conv
    assert isinstance(conv1, LightConv2d) and conv1.rank == rank_from_ratio(0.5, 9 * 8, 8) == 4
    assert estimate_cost(pruned.spec, SHAPE, 10)["flops"] < estimate_cost(spec, SHAPE, 10)["flops"]
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randn(4, *SHAPE))).all()


def test_fusion_removes_the_thinnest_removable_block_and_picks_the_previous_block_as_carrier():
    spec = ArchSpec(Stem(16), (
        Stage((Block("basic", 16, 16), Block("basic", 16, 4), Block("basic", 16, 8))),
        # thinner still, but strided with a projection shortcut: removing it would change shapes
        Stage((Block("basic", 32, 2, stride=2), Block("basic", 32, 6))),
    ))
    assert fusion_candidates(spec, SHAPE) == [0, 1, 2, 4]
    choice = choose_fusion(spec, SHAPE)
    assert (choice.material, choice.carrier) == (1, 0)
    model = build_model(spec, SHAPE, 10).eval()
    fused = remove_block(model, 1)
    assert [b.mid_channels for b in fused.spec.blocks] == [16, 8, 2, 6]
    # The other blocks keep their weights: blocks.2 of the old network is blocks.1 now.
    old, new = model.state_dict(), fused.state_dict()
    for k, v in new.items():
        src = k.replace("blocks.1.", "blocks.2.", 1) if k.startswith("blocks.1.") else \
            k.replace("blocks.2.", "blocks.3.", 1) if k.startswith("blocks.2.") else \
            k.replace("blocks.3.", "blocks.4.", 1) if k.startswith("blocks.3.") else k
        assert torch.equal(v, old[src]), k
    with pytest.raises(ValueError, match="cannot be removed"):
        remove_block(model, 3)


def test_fusion_carrier_is_the_next_block_when_there_is_no_previous_one():
    spec = ArchSpec(Stem(8), (Stage((Block("basic", 8, 2), Block("basic", 8, 8))),
                              Stage((Block("basic", 16, 4, stride=2),))))
    choice = choose_fusion(spec, SHAPE)
    assert (choice.material, choice.carrier) == (0, 1)
    one = ArchSpec(Stem(8), (Stage((Block("basic", 8, 2),)),))
    assert choose_fusion(one, SHAPE) is None  # a network keeps at least one block


def test_short_finetune_trains_only_the_carrier():
    data = load_dataset("digits", seed=0)
    spec = ArchSpec(Stem(8), (Stage((Block("basic", 8, 8), Block("basic", 8, 4), Block("basic", 8, 8))),))
    model = build_model(spec, data.input_shape, data.num_classes)
    choice = choose_fusion(spec, data.input_shape)
    fused = remove_block(model, choice.material)
    carrier = f"blocks.{choice.carrier - (choice.carrier > choice.material)}"
    # Gradients: only the carrier's parameters get them.
    with frozen_except(fused, [carrier]) as frozen:
        fused.train()
        F.cross_entropy(fused(data.x_train[:32]), data.y_train[:32]).backward()
        for n, p in fused.named_parameters():
            assert (p.grad is not None) == n.startswith(carrier + "."), n
        assert frozen and all(not n.startswith(carrier) for n, m in fused.named_modules() if m in frozen)
    fused.zero_grad(set_to_none=True)
    assert all(p.requires_grad for p in fused.parameters())  # restored
    # Training: everything else (weights and BatchNorm statistics) stays bit for bit.
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    teacher = torch.randn(len(data.y_train), data.num_classes)
    train_model(fused, data, TrainConfig(epochs=1, batch_size=64, lr=0.01, device="cpu", threads=1, nesterov=False,
                                         warmup_fraction=0.0), teacher=Distillation(teacher), trainable=[carrier],
                keep_state=False)
    after = fused.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(carrier + ".") for k in changed)
    assert any(k.endswith("conv.reduce.weight") for k in changed)


@pytest.mark.parametrize("space", list_spaces())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_fusion_keeps_shapes_valid_in_every_space(space, shape):
    sp = get_space(space, input_shape=shape)
    removed_any = False
    for seed in range(4):
        spec = sample_spec(sp, seed)
        model = build_model(spec, shape, 10).eval()
        x = torch.randn(2, *shape)
        while (choice := choose_fusion(model.spec, shape)) is not None:
            n = len(model.spec.blocks)
            assert choice.material in fusion_candidates(model.spec, shape)
            assert abs(choice.carrier - choice.material) == 1
            model = remove_block(model, choice.material)
            removed_any = True
            assert len(model.spec.blocks) == n - 1
            with torch.no_grad():
                assert model(x).shape == (2, 10)
            assert estimate_cost(model.spec, shape, 10)["flops"] > 0
        assert len(model.spec.blocks) >= 1
    assert removed_any


def test_kd_loss_is_hintons_soft_plus_hard_loss():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    T, a = 4.0, 0.9
    p_t = F.softmax(t / T, 1)
    soft = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    want = a * soft + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, temperature=T, alpha=a), want)
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    assert float(kd_loss(t, t, y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_low_rank_meets_the_budget_and_full_rank_is_exact():
    spec = ArchSpec(Stem(8), (Stage((Block("basic", 16, 16), Block("basic", 16, 16))),
                              Stage((Block("basic", 32, 32, stride=2),))))
    model = build_model(spec, SHAPE, 10).eval()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(transplant(model, spec).eval()(x), model(x))

    def totals(a):
        return estimate_cost(a, SHAPE, 10).totals

    params = totals(spec)["params"]
    budget = parse_budget(f"params<={int(params * 0.6)}")
    new, met = low_rank_plan(spec, totals, budget)
    assert met and totals(new)["params"] <= params * 0.6
    assert any(b.rank_ratio < 1.0 for b in new.blocks)
    assert [b.out_channels for b in new.blocks] == [b.out_channels for b in spec.blocks]
    lowered = apply_low_rank(model, new).eval()
    assert sum(p.numel() for p in lowered.parameters()) == totals(new)["params"]
    with torch.no_grad():
        assert torch.isfinite(lowered(x)).all()
    assert low_rank_plan(spec, totals, parse_budget(f"params<={int(params) + 1}")) == (spec, True)
