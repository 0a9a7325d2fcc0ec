"""Operator-level latency model: exact recovery of a known model, costing through profiles (model,
lookup table, board power), TOML round trip, probes, stored profiles. No timings are asserted
(they live in bench/bench_latency.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from kit_data import TRUE

from objectives import DeviceError, DeviceProfile, estimate_cost, get_device, list_devices, probe_set
from objectives.cost import (
    FAMILIES as PROBE_FAMILIES,
)
from objectives.cost import (
    OP_CLASSES,
    Validation,
    add_layer,
    analytic_layers,
    conv_layer,
    cross_validate,
    fit_opmodel,
    layers_from_ops,
    linear_layer,
    measure_latencies,
    op_classes,
    parse_profile,
    pool_layer,
    predict_many,
)
from search_spaces import ArchSpec, Block, Head, Stage, Stem, get_space, sample_spec


def random_network(rng: random.Random) -> list:
    """Layers of every class at random shapes (the model sums layers, so any mix is a network)."""
    layers = []
    for _ in range(rng.randint(3, 12)):
        c, cout = rng.choice((4, 8, 16, 32, 64, 128)), rng.choice((4, 8, 16, 32, 64, 128))
        h = rng.choice((2, 4, 8, 16, 32))
        k, s = rng.choice((1, 3, 5)), rng.choice((1, 2))
        kind = rng.choice(OP_CLASSES)
        if kind == "conv":
            layers.append(conv_layer(c, cout, h, h, rng.choice((3, 5)), s))
        elif kind == "conv1x1":
            layers.append(conv_layer(c, cout, h, h, 1, s))
        elif kind == "dwconv":
            layers.append(conv_layer(c, c, h, h, k, s, c))
        elif kind == "gconv":
            layers.append(conv_layer(2 * c, 2 * cout, h, h, 1, 1, 2))
        elif kind == "lowrank":
            layers.append(conv_layer(c, cout, h, h, k, s, op="lowrank"))
        elif kind == "linear":
            layers.append(linear_layer(c * 4, cout * 2))
        elif kind == "pool":
            layers.append(pool_layer(c, h, h))
        else:
            layers.append(add_layer(c, h, h))
    return layers


def test_fit_recovers_a_known_model_exactly():
    rng = random.Random(0)
    nets = [random_network(rng) for _ in range(400)]
    truth = [TRUE.network_ms(n, 4) for n in nets]
    res = fit_opmodel(nets, truth, saturation_prior=0.0, max_nfev=2000)
    assert res.median_abs_ln_error < 1e-9
    assert max(abs(math.log(p / t)) for p, t in zip(res.predicted_ms, truth, strict=True)) < 1e-6
    # Every number is identified by these networks and comes back (linear layers have no positions).
    for cls, want in TRUE.classes.items():
        got = res.model.classes[cls]
        assert got.fitted
        for field in ("peak_per_s", "overhead_us", "half_out", "half_reduction") + (
                ("half_positions",) if cls != "linear" else ()):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-4), (cls, field)
    assert res.model.bandwidth_bytes_per_s == pytest.approx(3e9, rel=1e-4)
    # New networks are predicted as the true model predicts them.
    fresh = [random_network(rng) for _ in range(50)]
    np.testing.assert_allclose(predict_many(res.model, fresh), [TRUE.network_ms(n, 4) for n in fresh], rtol=1e-6)


def test_cross_validation_of_a_known_model_is_exact():
    rng = random.Random(1)
    nets = [random_network(rng) for _ in range(200)]
    cv = cross_validate(nets, [TRUE.network_ms(n, 4) for n in nets], folds=4, saturation_prior=0.0, max_nfev=2000)
    assert cv.tau > 0.999 and cv.median_abs_ln_error < 1e-6


def test_classes_absent_from_the_data_borrow_their_nearest_fitted_class():
    rng = random.Random(2)
    nets = [[la for la in random_network(rng) if la.op in ("conv", "conv1x1", "pool")] or
            [conv_layer(8, 8, 8, 8, 3)] for _ in range(150)]
    res = fit_opmodel(nets, [TRUE.network_ms(n, 4) for n in nets], saturation_prior=0.0)
    assert not res.model.classes["lowrank"].fitted and res.model.classes["conv1x1"].fitted
    assert res.model.classes["lowrank"].model_dump(exclude={"fitted"}) == \
        res.model.classes["conv1x1"].model_dump(exclude={"fitted"})
    assert res.model.classes["add"].model_dump(exclude={"fitted"}) == res.model.classes["pool"].model_dump(
        exclude={"fitted"})


def test_grouped_classes_share_their_numbers():
    rng = random.Random(3)
    nets = [random_network(rng) for _ in range(60)]
    groups = {c: "mac" for c in OP_CLASSES if c not in ("pool", "add")} | {"pool": "elem", "add": "elem"}
    res = fit_opmodel(nets, [TRUE.network_ms(n, 4) for n in nets], groups=groups, saturation=False, memory=False)
    p = res.model.classes
    assert p["conv"].peak_per_s == p["dwconv"].peak_per_s == p["linear"].peak_per_s
    assert p["pool"].peak_per_s == p["add"].peak_per_s != p["conv"].peak_per_s
    assert p["conv"].half_out == 0 and res.model.bandwidth_bytes_per_s > 1e29  # no saturation, no memory term


def test_fit_refuses_bad_latencies():
    net = [conv_layer(3, 8, 8, 8, 3)]
    for bad in ([0.0], [-1.0], [float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="positive finite"):
            fit_opmodel([net], bad)
    with pytest.raises(ValueError, match="one latency per network"):
        fit_opmodel([net, net], [1.0])


def test_operator_classes_of_a_spec():
    spec = ArchSpec(Stem(8), (Stage((Block("conv", 16, kernel=3, rank_ratio=0.5),
                                     Block("conv", 16, kernel=1),
                                     Block("inverted", 16, 48, None, 3, 1),
                                     Block("basic", 32, 32, None, 3, 2)),),), Head(hidden=32, rank_ratio=0.5))
    ops = analytic_layers(spec, (3, 16, 16), 10)
    classes = dict(zip((op.name for op in ops), op_classes(ops), strict=True))
    assert classes["stem.conv.reduce"] == "conv"
    assert classes["blocks.0.conv1.conv.reduce"] == classes["blocks.0.conv1.conv.expand"] == "lowrank"
    assert classes["blocks.1.conv1.conv.reduce"] == "conv1x1"
    assert classes["blocks.2.dw.conv"] == "dwconv" and classes["blocks.2.expand.conv.reduce"] == "conv1x1"
    assert classes["blocks.2.add"] == classes["blocks.3.add"] == "add"
    assert classes["blocks.3.shortcut.conv.reduce"] == "conv1x1" and classes["head.pool"] == "pool"
    assert classes["head.hidden.reduce"] == classes["head.classifier"] == "linear"
    layers = layers_from_ops(ops)
    assert [la.macs for la in layers] == [op.macs for op in ops]
    strided = next(la for la, op in zip(layers, ops, strict=True) if op.name == "blocks.3.conv1.conv.reduce")
    assert (strided.kernel, strided.stride, strided.h, strided.oh) == (3, 2, 16, 8)
    assert layers[1].signature() == "conv:8x16x16:8:k3:s1:g1"  # a pair's kxk part is keyed as a conv


def _profile(**update) -> DeviceProfile:
    base = get_device("rpi4")
    return base.model_copy(update={"name": "t", "opmodel": TRUE, "lut": {}, **update})


def test_estimate_cost_sums_the_model_and_uses_the_lookup_table():
    spec = sample_spec(get_space("mobilenetv2"), 4)
    ops = analytic_layers(spec, (3, 32, 32), 10)
    layers = layers_from_ops(ops)
    prof = _profile(board_power_w=2.0)
    report = estimate_cost(spec, (3, 32, 32), 10, device=prof)
    assert report["latency_ms"] == pytest.approx(TRUE.network_ms(layers, 4), rel=1e-12)
    dynamic = sum(r.macs * prof.energy_pj_per_mac + r.traffic_bytes * prof.energy_pj_per_byte for r in report.rows)
    assert report["energy_uj"] == pytest.approx(2.0 * report["latency_ms"] * 1e3 + dynamic * 1e-6, rel=1e-9)
    assert sum(r.latency_ms for r in report.rows) == pytest.approx(report["latency_ms"], rel=1e-12)
    # A lookup-table entry replaces the model for exactly the layers with that signature.
    sig = layers[3].signature()
    hits = sum(la.signature() == sig for la in layers)
    with_lut = estimate_cost(spec, (3, 32, 32), 10, device=_profile(lut={sig: 5.0}))
    expected = report["latency_ms"] + sum(5.0 - TRUE.layer_ms(la, 4) for la in layers if la.signature() == sig)
    assert hits >= 1 and with_lut["latency_ms"] == pytest.approx(expected, rel=1e-12)


def test_profile_toml_round_trip_and_errors():
    prof = _profile(lut={"conv:3x8x8:8:k3:s1:g1": 0.5}, board_power_w=1.5, runtime="onnxruntime 1.x",
                    validation=[Validation(data="d", source="s", n_fit=3, n_test=4, tau=0.9, median_abs_ln_error=0.1)],
                    sources={**get_device("rpi4").sources, "opmodel": "test", "lut": "test"})
    again = parse_profile(prof.to_toml(), "test")
    assert again == prof and not again.uncited()
    assert "tau 0.90" in again.validation_summary()
    bad = prof.to_toml().replace('form = "opmodel-1"', 'form = "opmodel-9"')
    with pytest.raises(DeviceError, match="opmodel.form"):
        parse_profile(bad, "x")
    bad = prof.to_toml().replace("[opmodel.classes.add]", "[opmodel.classes.nope]")
    with pytest.raises(DeviceError, match="nope"):
        parse_profile(bad, "x")


def test_shipped_profiles_record_runtime_and_validation():
    for name in ("rpi4", "jetson-tx2", "cortex-m7", "jetson-nano"):
        p = get_device(name)
        assert p.runtime and p.validation and not p.uncited(), name
        for v in p.validation:
            assert v.n_test > 0 and v.source and v.median_abs_ln_error is not None
    fitted = {n for n in list_devices() if n != "host" and get_device(n).opmodel is not None}
    assert fitted >= {"rpi4", "jetson-tx2", "cortex-m7"}


def test_stored_profiles_resolve_by_name_before_local_ones():
    prof = _profile(name="from-db", sources={**get_device("rpi4").sources, "opmodel": "test"})
    stored = {"from-db": prof.to_toml(), "broken": "not toml [", "rpi4": prof.model_copy(
        update={"name": "rpi4"}).to_toml()}
    assert "from-db" in list_devices(stored) and get_device("from-db", stored) == prof
    assert get_device("rpi4", stored).opmodel == prof.opmodel != get_device("rpi4").opmodel  # the database's first
    with pytest.raises(DeviceError, match="'broken' .stored in the study database.: not valid TOML"):
        get_device("broken", stored)
    # Given to those calls only: nothing of them stays behind in the process.
    assert "from-db" not in list_devices()
    with pytest.raises(DeviceError, match="unknown device profile 'from-db'"):
        get_device("from-db")


def test_probe_sets_span_every_family_and_are_deterministic():
    probes = probe_set(48, seed=3)
    assert [p.id for p in probes] == [f"p{i:03d}" for i in range(48)]
    assert {p.family for p in probes} >= set(PROBE_FAMILIES) | {"mobilenetv2", "plain", "resnet"}
    assert len({(p.spec.hash, p.input_shape) for p in probes}) == 48
    assert [p.spec.hash for p in probe_set(48, seed=3)] == [p.spec.hash for p in probes]
    assert [p.spec.hash for p in probe_set(48, seed=4)] != [p.spec.hash for p in probes]


def test_measure_latencies_gives_one_time_per_network():
    pairs = [(p.spec, p.input_shape) for p in probe_set(4, seed=0)]
    times = measure_latencies(pairs, rounds=2, threads=1)
    assert len(times) == 4 and all(t > 0 and math.isfinite(t) for t in times)
    with pytest.raises(ValueError, match="rounds"):
        measure_latencies(pairs, rounds=0)
