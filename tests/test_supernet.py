"""Weight-shared supernet (issue 30): exact slicing, BN recalibration, sandwich training, membership."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from objectives import TrainConfig, evaluate_subnet, load_dataset, recalibrate_bn, train_supernet
from search_spaces import (
    ArchSpec,
    Block,
    LightNet,
    SpecError,
    Stage,
    SuperNet,
    build_model,
    enumerate_choices,
    get_space,
    sample_spec,
)

torch.set_num_threads(1)

#: name, options, input shape: each space's default choices (every block kind, kernel, rank, depth).
SPACES = [
    ("plain", {}, (1, 8, 8)),
    ("resnet", {}, (1, 8, 8)),
    ("mobilenetv2", {}, (3, 16, 16)),
]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


class _Forcing:
    """A define-by-run trial answering ``forced`` where it names the parameter, at random otherwise."""

    def __init__(self, rng: random.Random, forced: dict[str, Any]) -> None:
        self.rng, self.forced = rng, forced

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.forced[name] if name in self.forced else choices[self.rng.randrange(len(choices))]

    def suggest_int(self, name: str, low: int, high: int, **_kw: Any) -> int:
        return self.forced[name] if name in self.forced else self.rng.randint(low, high)


class _Recording(_Forcing):
    """Random answers, recording every parameter's choices."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng, {})
        self.choices: dict[str, list[Any]] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.choices.setdefault(name, list(choices))
        return super().suggest_categorical(name, choices)

    def suggest_int(self, name: str, low: int, high: int, **_kw: Any) -> int:
        self.choices.setdefault(name, list(range(low, high + 1)))
        return super().suggest_int(name, low, high)


def _every_choice(space, seed: int = 0) -> list[ArchSpec]:
    """A spec per (parameter, value) of the space, the other choices random; conditional parameters
    (a head rank only with a hidden layer) are found by recording many random draws."""
    rng = random.Random(seed)
    choices: dict[str, list[Any]] = {}
    for _ in range(50):
        rec = _Recording(rng)
        space.suggest(rec)
        for k, v in rec.choices.items():
            choices.setdefault(k, v)
    specs = []
    for name, values in sorted(choices.items()):
        for value in values:
            forced = {name: value}
            if name == "head_rank":
                forced["head_hidden"] = max(choices["head_hidden"])
            specs.append(space.suggest(_Forcing(rng, forced)))
    return specs


def _scramble(net: SuperNet, seed: int) -> None:
    """Random BN statistics and affine parameters (and kernel transforms), so slices must line up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bn.bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
            elif name.endswith("bn.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif ".transforms." in name:
                t.add_(torch.randn(t.shape, generator=g) * 0.1)


def _space_choices(specs: list[ArchSpec]) -> dict[str, set]:
    out: dict[str, set] = {"type": set(), "kernel": set(), "rank_ratio": set(), "depth": set(), "hidden": set()}
    for s in specs:
        out["hidden"].add(s.head.hidden)
        for st in s.stages:
            out["depth"].add(len(st.blocks))
            for b in st.blocks:
                out["type"].add(b.type)
                out["kernel"].add(b.kernel)
                out["rank_ratio"].add(b.rank_ratio)
    return out


@pytest.mark.parametrize("kernel_transform", [False, True], ids=["crop", "transform"])
@pytest.mark.parametrize("name,options,shape", SPACES, ids=[s[0] for s in SPACES])
def test_active_subnet_equals_extracted_network_for_every_choice(name, options, shape, kernel_transform):
    space = get_space(name, input_shape=shape, **options)
    net = SuperNet.from_space(space, shape, 10, kernel_transform=kernel_transform)
    _scramble(net, 1)
    specs = _every_choice(space) + [net.largest(), net.smallest()]
    seen = _space_choices(specs)
    o = space.options
    assert seen["depth"] == set(range(o.min_depth, o.max_depth + 1))
    assert seen["rank_ratio"] == set(o.rank_ratios)
    assert seen["kernel"] == set(getattr(o, "kernels", (3,)))
    assert seen["type"] == set(getattr(o, "block_types", ("inverted",) if name == "mobilenetv2" else ("conv",)))
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(2))
    for spec in specs:
        net.eval()
        net.set_active(spec)
        model = net.extract(spec)
        assert isinstance(model, LightNet) and model.spec == spec and not model.training
        with torch.no_grad():
            assert torch.allclose(net(x), model(x), rtol=1e-5, atol=1e-6), spec.short_hash
            net.train(), model.train()  # batch statistics of the sliced channels
            assert torch.allclose(net(x), model(x), rtol=1e-5, atol=1e-5), spec.short_hash
    # the BN buffers the train-mode passes updated are the supernet's slices: extraction sees them
    spec = specs[0]
    net.set_active(spec)
    assert torch.equal(net.extract(spec).stem.bn.running_mean, net.stem.bn.running_mean[:spec.stem.out_channels])


def test_extracted_network_is_the_builders_network():
    space = get_space("resnet", input_shape=(1, 8, 8), max_depth=2)
    net = SuperNet.from_space(space, (1, 8, 8), 10)
    spec = sample_spec(space, 3)
    model = net.extract(spec)
    reference = build_model(spec, (1, 8, 8), 10)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())
    # its weights are copies: training the extracted network leaves the supernet alone
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_largest_smallest_and_sample_are_subnets_of_the_space():
    space = get_space("resnet", input_shape=(1, 8, 8), max_depth=2, widths=(8, 16), stem_widths=(8, 16),
                      rank_ratios=(1.0,))
    net = SuperNet.from_space(space, (1, 8, 8), 10)

    def params(spec: ArchSpec) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(spec, (1, 8, 8), 10).parameters())

    every = [spec for _, spec in enumerate_choices(space.suggest)]
    sizes = [params(s) for s in every]
    assert params(net.largest()) == max(sizes) and params(net.smallest()) == min(sizes)
    space.params_of(net.largest()), space.params_of(net.smallest())  # in the space itself
    assert all(net.contains(s) for s in every)
    assert net.sample(random.Random(5)) == net.sample(5) and net.contains(net.sample(7))


def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_recalibrate_bn_changes_statistics_and_nothing_else(digits):
    space = get_space("plain", input_shape=(1, 8, 8), max_depth=2, hidden=(0, 32))
    model = build_model(sample_spec(space, 1), (1, 8, 8), 10)
    model.train()  # a mode it must get back
    momenta = [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = _bn_state(model)
    recalibrate_bn(model, digits.x_train, batches=3, batch_size=100)
    assert model.training and all(m.training for m in model.modules())
    assert [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    after = _bn_state(model)
    changed = [k for k in stats if "running" in k and not torch.allclose(stats[k], after[k])]
    assert len(changed) == len([k for k in stats if "running" in k])
    assert all(int(v) == 3 for k, v in after.items() if k.endswith("num_batches_tracked"))
    # the cumulative average: with one batch of every example, the stem's statistics are the data's
    recalibrate_bn(model, digits.x_train, batches=1, batch_size=len(digits.x_train))
    with torch.no_grad():
        z = model.stem.conv(digits.x_train)
    assert torch.allclose(model.stem.bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.stem.bn.running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    # the same seed gives the same statistics
    again = recalibrate_bn(model, digits.x_train, batches=3, batch_size=100)
    assert again is model and all(torch.equal(after[k], v) for k, v in _bn_state(model).items())


def _tiny(data) -> SuperNet:
    space = get_space("plain", stages=2, max_depth=2, widths=(8, 16), kernels=(3,), hidden=(0,),
                      rank_ratios=(1.0, 0.5))
    torch.manual_seed(0)
    return SuperNet.from_space(space, data.input_shape, data.num_classes)


def test_tiny_supernet_trains_on_digits_and_subnets_evaluate_in_a_second(digits):
    net = _tiny(digits)
    seen = []
    result = train_supernet(net, digits, TrainConfig(epochs=2, batch_size=64, lr=0.1, threads=1), sandwich=2,
                            on_epoch=lambda e, r: seen.append((e, r.largest)))
    assert [e for e, _ in seen] == [1, 2] and result.epochs_run == 2 and len(result.curve) == 2
    assert result.steps == 2 * -(-len(digits.y_train) // 64)
    assert result.largest is not None and result.largest > 0.5  # chance is 0.1
    assert net.active == net.largest() and not net.training
    acc = evaluate_subnet(net, net.largest(), digits, bn_batches=8)  # its time: bench/bench_supernet.py
    assert acc > 0.5 and acc == result.largest


def _factors(net: SuperNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters() if k.endswith(("reduce", "expand"))}


def _svd_error(w: torch.Tensor, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation of ``w`` (Eckart-Young)."""
    s = torch.linalg.svdvals(w.reshape(w.shape[0], -1).double())
    return float(s[rank:].square().sum().sqrt())


def test_dense_first_then_every_factor_starts_from_its_dense_layers_svd(digits):
    net = _tiny(digits)
    assert net.has_factors_of_dense() and net.dense_of(net.smallest()) != net.smallest()
    initial, seen = _factors(net), {}

    def look(epoch, record):
        seen[epoch] = _factors(net)
        if epoch == 2:  # the boundary: each factor pair is the truncated SVD of its dense weight
            for conv in (m for m in net.modules() if hasattr(m, "reduce") and m.reduce is not None):
                product = conv.expand.flatten(1) @ conv.reduce.flatten(1)
                error = float((conv.weight.flatten(1) - product).detach().double().norm())
                assert error == pytest.approx(_svd_error(conv.weight, conv.reduce.shape[0]), rel=1e-3, abs=1e-5)

    train_supernet(net, digits, TrainConfig(epochs=3, batch_size=128, lr=0.1, threads=1), dense_epochs=2,
                   on_epoch=look)
    assert all(torch.equal(seen[1][k], v) for k, v in initial.items())  # dense first: factors untouched
    assert not any(torch.equal(seen[2][k], v) for k, v in initial.items())  # set from the dense layers
    assert not any(torch.equal(seen[3][k], v) for k, v in seen[2].items())  # then trained


def test_factors_from_dense_covers_the_hidden_layer_and_kernel_transforms(digits):
    space = get_space("plain", stages=2, max_depth=1, widths=(8, 16), kernels=(3, 5), hidden=(0, 32),
                      rank_ratios=(1.0, 0.5))
    net = SuperNet.from_space(space, digits.input_shape, digits.num_classes, kernel_transform=True)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 2 and p.shape[0] == p.shape[1]:  # a transform matrix: away from the identity
                p.add_(0.1 * torch.randn_like(p))
    assert net.factors_from_dense() >= 3  # the convolutions that hold both forms, and the hidden layer
    head = net.head
    product = head.hidden_expand @ head.hidden_reduce
    error = float((head.hidden_weight - product).detach().double().norm())
    assert error == pytest.approx(_svd_error(head.hidden_weight, head.hidden_reduce.shape[0]), rel=1e-3, abs=1e-5)
    convs = [m for m in net.modules() if getattr(m, "transforms", None) and m.reduce is not None]
    assert convs
    for conv in convs:  # a cropped low-rank kernel goes through the dense kernel's transform
        for key, m in conv.transforms.items():
            if key.startswith("weight_"):
                assert torch.equal(conv.transforms["reduce_" + key[len("weight_"):]], m)


def _whole_and_resumed(digits, epochs: int, **kw: Any) -> tuple[SuperNet, SuperNet, Any]:
    """A tiny supernet trained ``epochs`` epochs at once, and one stopped after its first epoch and resumed from
    that checkpoint (with the resumed run's result)."""
    config = TrainConfig(epochs=epochs, batch_size=128, lr=0.1, threads=1)
    whole = _tiny(digits)
    train_supernet(whole, digits, config, validate=False, **kw)
    saved = {}

    def stop_after_first(epoch, record):
        saved["checkpoint"] = record.checkpoint()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(_tiny(digits), digits, config, validate=False, on_epoch=stop_after_first, **kw)
    resumed = _tiny(digits)
    result = train_supernet(resumed, digits, config, validate=False, resume=saved["checkpoint"], **kw)
    return whole, resumed, result


def test_dense_first_training_resumes_inside_the_dense_epochs_as_if_never_interrupted(digits):
    whole, resumed, _ = _whole_and_resumed(digits, 3, dense_epochs=2)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_dense_first_needs_a_dense_choice_and_fewer_epochs_than_training(digits):
    no_dense = get_space("plain", stages=2, max_depth=1, widths=(8,), kernels=(3,), hidden=(0,), rank_ratios=(0.5,))
    net = SuperNet.from_space(no_dense, digits.input_shape, digits.num_classes)
    assert not net.has_factors_of_dense()
    with pytest.raises(SpecError):
        net.dense_of(net.smallest())
    initial = _factors(net)
    train_supernet(net, digits, TrainConfig(epochs=1, batch_size=256, lr=0.1, threads=1), validate=False)
    assert not all(torch.equal(_factors(net)[k], v) for k, v in initial.items())  # trained from the start
    for bad in (2, -1, True):
        with pytest.raises(ValueError, match="dense_epochs"):
            train_supernet(_tiny(digits), digits, TrainConfig(epochs=2, threads=1), dense_epochs=bad)


def test_training_resumes_at_an_epoch_as_if_never_interrupted(digits):
    whole, resumed, result = _whole_and_resumed(digits, 2)
    assert [r.epoch for r in result.curve] == [2]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_spec_outside_the_supernet_is_a_one_line_spec_error():
    space = get_space("plain", input_shape=(1, 8, 8), max_depth=2, widths=(8, 16), kernels=(3,),
                      rank_ratios=(0.5, 0.25), hidden=(0, 32))
    net = SuperNet.from_space(space, (1, 8, 8), 10)
    spec = net.largest()
    assert net.contains(spec)
    # another input shape
    assert not net.contains(spec, input_shape=(1, 28, 28))
    with pytest.raises(SpecError) as err:
        net.check(spec, input_shape=(1, 28, 28))
    assert "input_shape: got 1x28x28, accepted: 1x8x8" in _one_line(err)
    # a width above the largest
    wide = spec.replace(stages=(Stage((Block("conv", 64, kernel=3, rank_ratio=0.5),)),) + spec.stages[1:])
    with pytest.raises(SpecError) as err:
        net.set_active(wide)
    text = _one_line(err)
    assert "stages[0].blocks[0].out_channels: 64 is above this supernet's largest, 16 (accepted: 1..16)" in text
    assert "space 'plain'" in text
    # another space
    with pytest.raises(SpecError) as err:
        net.extract(sample_spec(get_space("resnet", input_shape=(1, 8, 8)), 0))
    assert "'resnet' network is not in this supernet; accepted: networks of space 'plain'" in _one_line(err)
    # a kernel, a rank (dense here has no weights), a depth the supernet does not have
    b = spec.stages[0].blocks[0]
    for bad, words in [((Block("conv", 8, kernel=5, rank_ratio=0.5),), "kernel: got 5, accepted: 3"),
                       ((Block("conv", 8, kernel=3, rank_ratio=1.0),), "rank_ratio: a dense conv1"),
                       ((b, b, b), "stages[0].blocks: 3 blocks, accepted: 1..2")]:
        odd = spec.replace(stages=(Stage(bad),) + spec.stages[1:])
        assert not net.contains(odd)
        with pytest.raises(SpecError) as err:
            net.check(odd)
        assert words in _one_line(err)
    # the same space made for another input size: strides follow the input
    big = sample_spec(get_space("mobilenetv2", input_shape=(3, 32, 32), stages=2), 0)
    small = SuperNet.from_space(get_space("mobilenetv2", stages=2), (3, 2, 2), 10)
    with pytest.raises(SpecError) as err:
        small.check(big)
    assert ".stride: got 2, this position strides by 1" in _one_line(err)


def test_from_space_remakes_the_space_for_the_input_shape():
    net = SuperNet.from_space(get_space("plain", max_depth=2), (1, 8, 8), 10)
    assert net.input_shape == (1, 8, 8) and net.space.input_shape == (1, 8, 8)
    assert net.space.options.max_depth == 2
    again = SuperNet.from_config(net.config())
    assert again.config() == net.config()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    with pytest.raises(SpecError, match="num_classes"):
        SuperNet.from_space(get_space("plain"), (1, 8, 8), 1)
