"""Registry-driven tests: every space, every input size, dozens of sampled specs."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import thop
import torch

from objectives import estimate_cost
from search_spaces import (
    ArchSpec,
    Block,
    SpaceError,
    SpecError,
    Stage,
    Stem,
    build_model,
    get_space,
    list_spaces,
    sample_spec,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
N_SPECS = 24


def _thop_layers(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[float, float, dict]:
    macs, params, info = thop.profile(model, inputs=(torch.randn(1, *shape),), verbose=False, ret_layer_info=True)

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for n, (ops, _params, sub) in d.items():
            out[prefix + n] = ops
            out.update(flat(sub, prefix + n + "."))
        return out

    return macs, params, flat(info)


def test_builtin_spaces_registered():
    assert {"resnet", "mobilenetv2", "plain"} <= set(list_spaces())


def test_unknown_space_lists_valid_ones():
    with pytest.raises(SpaceError) as e:
        get_space("resnet50x")
    assert "resnet" in str(e.value) and "mobilenetv2" in str(e.value) and "plain" in str(e.value)


def test_unknown_option_lists_accepted():
    with pytest.raises(SpaceError, match="accepted: .*max_depth"):
        get_space("resnet", max_dpth=3)


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sampled_specs_build_run_roundtrip_and_count(name, shape):
    space = get_space(name, input_shape=shape)
    hashes = set()
    for seed in range(N_SPECS):
        spec = sample_spec(space, seed)
        hashes.add(spec.hash)
        # JSON round trip: equal spec, equal hash
        again = ArchSpec.from_json(spec.to_json())
        assert again == spec and again.hash == spec.hash
        model = build_model(spec, shape, 10).eval()
        x = torch.randn(3, *shape)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (3, 10)
        assert torch.isfinite(y).all()
        report = estimate_cost(spec, shape, 10)
        n_params = sum(p.numel() for p in model.parameters())
        assert report["params"] == n_params
        if seed < 6:  # thop is slow-ish; a quarter of the specs is plenty per space x shape
            macs, params, layers = _thop_layers(model, shape)
            assert params == n_params
            for row in report.rows:
                if row.kind in ("conv", "dwconv", "linear"):
                    assert layers[row.name] == row.macs, row.name
            conv_linear = sum(r.macs for r in report.rows)
            assert conv_linear == report["macs"]
    assert len(hashes) > N_SPECS // 2, "sampling should explore the space"


@pytest.mark.parametrize("name", list_spaces())
def test_fixed_trial_replays_sampled_spec(name):
    space = get_space(name, input_shape=(1, 28, 28))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    trial = study.ask()
    spec = space.suggest(trial)
    replay = space.suggest(optuna.trial.FixedTrial(trial.params))
    assert replay.hash == spec.hash


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_params_of_maps_every_sampled_spec_back_to_its_parameters(name, shape):
    """What warm starts rely on: a spec of the space -> the trial parameters that produce it."""
    space = get_space(name, input_shape=shape)
    for seed in range(N_SPECS):
        spec = sample_spec(space, seed)
        params = space.params_of(spec)
        assert space.suggest(optuna.trial.FixedTrial(params)).hash == spec.hash


def test_params_of_refuses_a_spec_outside_the_space():
    wide = sample_spec(get_space("plain", input_shape=(1, 8, 8), widths=(32,)), 0)
    with pytest.raises(SpaceError, match="is not in space 'plain'"):
        get_space("plain", input_shape=(1, 8, 8), widths=(8,)).params_of(wide)
    with pytest.raises(SpaceError, match="is a 'plain' network, not one of space 'resnet'"):
        get_space("resnet", input_shape=(1, 8, 8)).params_of(wide)
    narrowed = json.loads(wide.to_json())  # per-block widths, as pruning leaves them: not a point of the space
    narrowed["stages"][0]["blocks"][0]["out_channels"] = 31
    with pytest.raises(SpaceError, match="not in space"):
        get_space("plain", input_shape=(1, 8, 8), widths=(32,)).params_of(ArchSpec.from_dict(narrowed))


@pytest.mark.parametrize("name", list_spaces())
def test_space_adapts_downsampling_to_input(name):
    small = sample_spec(get_space(name, input_shape=(1, 8, 8)), 0)
    large = sample_spec(get_space(name, input_shape=(3, 32, 32)), 0)
    tiny = sample_spec(get_space(name, input_shape=(1, 2, 2)), 0)

    def downsamplings(spec: ArchSpec) -> int:
        return sum(b.stride == 2 for b in spec.blocks) + (spec.stem.stride == 2)

    assert downsamplings(tiny) == 0
    assert downsamplings(small) < downsamplings(large) or downsamplings(large) <= 2
    # The last feature map of an 8x8 input is never strided below 2x2.
    report = estimate_cost(small, (1, 8, 8), 10)
    last_conv = [r for r in report.rows if r.kind in ("conv", "dwconv")][-1]
    assert min(last_conv.out_shape[1:]) >= 2


def test_options_narrow_the_space():
    space = get_space("resnet", input_shape=(1, 8, 8), max_depth=1, block_types=("basic",), rank_ratios=(0.25,))
    for seed in range(10):
        spec = sample_spec(space, seed)
        assert all(len(s.blocks) == 1 for s in spec.stages)
        assert all(b.type == "basic" and b.rank_ratio == 0.25 for b in spec.blocks)
    with pytest.raises(SpaceError, match="rank_ratios"):
        get_space("resnet", rank_ratios=(0.3,))
    with pytest.raises(SpaceError, match="max_depth"):
        get_space("mobilenetv2", min_depth=3, max_depth=2)


def test_hash_is_independent_of_key_order_and_process():
    spec = sample_spec(get_space("mobilenetv2"), 5)
    d = json.loads(spec.to_json())
    reordered = json.dumps(dict(reversed(list(d.items()))))
    assert ArchSpec.from_json(reordered).hash == spec.hash
    code = ("import sys; from search_spaces import ArchSpec; "
            "print(ArchSpec.from_json(sys.stdin.read()).hash)")
    other = subprocess.run([sys.executable, "-c", code], input=spec.to_json(), capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert other.stdout.strip() == spec.hash


def test_int_and_float_ratios_hash_alike():
    a = ArchSpec(Stem(8), (Stage((Block("basic", 8, 8, rank_ratio=1),)),))
    b = ArchSpec(Stem(8), (Stage((Block("basic", 8, 8, rank_ratio=1.0),)),))
    assert a.hash == b.hash


def test_nonuniform_block_widths_are_representable():
    blocks = (Block("basic", 16, 5), Block("basic", 16, 11), Block("bottleneck", 32, 3, 7, stride=2))
    spec = ArchSpec(Stem(16), (Stage(blocks),))
    model = build_model(spec, (3, 16, 16), 4)
    assert model.blocks[0].conv1.conv.reduce.out_channels == 5
    assert model.blocks[2].conv2.conv.reduce.out_channels == 7
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert ArchSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("bad, field", [
    ({"stem": {"out_channels": 0}}, "stem.out_channels"),
    ({"stem": {"out_channels": 8, "kernel": 4}}, "stem.kernel"),
    ({"stages": []}, "stages"),
    ({"stages": [{"blocks": [{"type": "dense", "out_channels": 8}]}]}, "stages[0].blocks[0].type"),
    ({"stages": [{"blocks": [{"type": "basic", "out_channels": 8}]}]}, "stages[0].blocks[0].mid_channels"),
    ({"stages": [{"blocks": [{"type": "conv", "out_channels": 8, "rank_ratio": 1.5}]}]}, "rank_ratio"),
    ({"stages": [{"blocks": [{"type": "conv", "out_channels": 8, "stride": 3}]}]}, "stride"),
    ({"act": "gelu"}, "act"),
    ({"head": {"dropout": 1.0}}, "head.dropout"),
    ({"colour": "red"}, "unknown field"),
])
def test_invalid_spec_names_the_field(bad, field):
    base = {"stem": {"out_channels": 8}, "stages": [{"blocks": [{"type": "conv", "out_channels": 8}]}]}
    base.update(bad)
    with pytest.raises(SpecError) as e:
        ArchSpec.from_dict(base)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_json_and_input_shape():
    with pytest.raises(SpecError, match="not valid JSON"):
        ArchSpec.from_json("{nope")
    spec = sample_spec(get_space("plain"), 0)
    with pytest.raises(SpecError, match="input_shape"):
        build_model(spec, (3, 0, 32), 10)
    with pytest.raises(SpecError, match="num_classes"):
        build_model(spec, (3, 32, 32), 1)


def test_every_registered_block_type_is_built_costed_and_validated_from_the_registry():
    """One registry says what a block type is; the builder and the cost model know every one (a
    block of each type builds, and its analytic cost equals the built network's)."""
    from objectives import estimate_cost
    from search_spaces import block_kind, list_blocks, register_block

    assert set(list_blocks()) == {"conv", "basic", "bottleneck", "inverted"}
    fields_of = {"mid": "mid_channels", "mid2": "mid2_channels"}
    for name in list_blocks():
        kind = block_kind(name)
        fields = {fields_of[w]: 6 - i for i, w in enumerate(kind.widths)}
        block = Block(name, 8, **fields)
        assert block.inner_widths == tuple(fields.values())
        spec = ArchSpec(Stem(8), (Stage((block,)),))
        model = build_model(spec, (1, 8, 8), 3)
        assert spec.depth == 1 + kind.depth() + 1  # stem, the block's main path, classifier
        assert estimate_cost(spec, (1, 8, 8), 3)["params"] == sum(p.numel() for p in model.parameters())
        built = {n.split(".")[2] for n, _ in model.named_modules() if n.startswith("blocks.0.") and n.count(".") == 2}
        assert {u.name for u in kind.active_units(block, 8)} <= built, (name, built)
    with pytest.raises(SpecError, match="accepted: conv, basic, bottleneck, inverted"):
        ArchSpec(Stem(8), (Stage((Block("dense", 8),)),))
    with pytest.raises(SpecError, match="mid2_channels: must be null for a 'basic' block"):
        ArchSpec(Stem(8), (Stage((Block("basic", 8, 4, 4),)),))
    with pytest.raises(ValueError, match="registered already"):
        register_block(block_kind("conv"))


def test_a_list_option_given_one_value_is_that_one_choice():
    """`--option widths=16` / `block_types=basic` (one value, not a list) mean one choice, not
    "'int' object is not iterable" or a block type per letter."""
    space = get_space("resnet", input_shape=(1, 28, 28), widths=16, block_types="basic", rank_ratios=1.0)
    assert (space.options.widths, space.options.block_types, space.options.rank_ratios) == ((16,), ("basic",), (1.0,))
    arch = sample_spec(space, 0)
    assert {b.type for st in arch.stages for b in st.blocks} == {"basic"}
    assert arch.stages[0].blocks[0].out_channels == 16
    with pytest.raises(SpaceError, match="block_types"):
        get_space("resnet", block_types="basics")


def test_every_trial_a_space_draws_from_is_a_choice_trial() -> None:
    """Optuna's trials and the stand-ins (random draws, enumeration, parameter checking, the
    proxy's sampler-answered draw) all take the calls a space makes, with the same keywords."""
    import inspect
    import random

    import nas.search._proxy as proxy_mod
    import search_spaces._registry as registry_mod
    from search_spaces import ChoiceTrial, enumerate_choices

    study = optuna.create_study()
    trials = [study.ask(), optuna.trial.FixedTrial({"a": 1}), registry_mod.RandomTrial(random.Random(0)),
              registry_mod.EnumeratingTrial([]), registry_mod._CheckingTrial({})]
    classes = [type(t) for t in trials] + [proxy_mod._DrawTrial]
    for cls in classes:
        assert issubclass(cls, ChoiceTrial), cls
        inspect.signature(cls.suggest_int).bind(None, "a", 0, 4, step=2, log=False)
        inspect.signature(cls.suggest_categorical).bind(None, "b", (1, 2))
    # And the spaces draw from each without knowing which: the same spec for the same answers.
    space = get_space("plain", input_shape=(1, 8, 8), max_depth=1, widths=(8, 16))
    params, spec = next(iter(enumerate_choices(space.suggest)))
    assert space.suggest(optuna.trial.FixedTrial(params)).hash == spec.hash == space.check_params(params).hash
