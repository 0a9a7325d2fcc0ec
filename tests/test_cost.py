"""Cost model: counts against known networks, memory accounting, devices, budgets."""

from __future__ import annotations

import math

import pytest

from objectives import (
    RESOURCES,
    RUNTIME_RESOURCES,
    Budget,
    BudgetError,
    DeviceError,
    estimate_cost,
    get_device,
    list_devices,
    parse_budget,
    parse_conditions,
    save_device,
)
from search_spaces import ArchSpec, Block, Stage, Stem, get_space, sample_spec


def resnet(n: int) -> ArchSpec:
    """CIFAR ResNet-(6n+2) of He et al. 2016: widths 16/32/64, n basic blocks per stage."""
    stages = tuple(Stage(tuple(Block("basic", w, w, stride=2 if i and not j else 1) for j in range(n)))
                   for i, w in enumerate((16, 32, 64)))
    return ArchSpec(Stem(16), stages)


def test_resnet56_matches_published_counts():
    r = estimate_cost(resnet(9), (3, 32, 32), 10)
    # He et al. 2016 Table 6: ResNet-56 has 0.85M params; ~125M MACs is the usual count.
    assert r["params"] == pytest.approx(0.85e6, rel=0.01)
    assert r["macs"] == pytest.approx(125.5e6, rel=0.01)
    assert r["flops"] == 2 * r["macs"]
    assert set(RESOURCES) - set(RUNTIME_RESOURCES) == set(r.totals)  # rpi4 names no device runtime: no ram/flash
    assert set(RESOURCES) == set(estimate_cost(resnet(9), (3, 32, 32), 10, device="cortex-m7").totals)


def test_lightlayers_cut_cost_as_the_formula_says():
    dense = ArchSpec(Stem(8), (Stage((Block("conv", 64, kernel=3),)),))
    light = ArchSpec(Stem(8), (Stage((Block("conv", 64, kernel=3, rank_ratio=0.125),)),))
    rd, rl = estimate_cost(dense, (1, 8, 8), 10), estimate_cost(light, (1, 8, 8), 10)
    conv_d = next(r for r in rd.rows if r.name == "blocks.0.conv1.conv.reduce")
    assert conv_d.params == 9 * 8 * 64 + 2 * 64  # conv + fused BN
    rank = round(0.125 * min(9 * 8, 64))
    light_rows = [r for r in rl.rows if r.name.startswith("blocks.0.conv1.conv")]
    assert sum(r.params for r in light_rows) == rank * (9 * 8 + 64) + 2 * 64  # + BN
    assert rl["macs"] < rd["macs"] and rl["params"] < rd["params"]


def test_traffic_and_activation_accounting_of_a_single_conv():
    spec = ArchSpec(Stem(4, kernel=3), (Stage((Block("conv", 8),)),))
    r = estimate_cost(spec, (1, 6, 6), 3, device="rpi4")  # float32: 4 bytes
    stem = r.rows[0]
    assert stem.name == "stem.conv.reduce"
    assert stem.params == 9 * 1 * 4 + 2 * 4  # conv + BN
    assert stem.traffic_bytes == 4 * (stem.params + 36 + 4 * 36)
    assert stem.live_bytes == 4 * (36 + 4 * 36)
    assert r["mem_traffic_bytes"] == sum(x.traffic_bytes for x in r.rows)
    assert r["weight_bytes"] == 4 * r["params"]


def test_peak_memory_counts_the_skip_tensor():
    # One basic block, identity shortcut: while conv2 runs, x (skip), conv1's output and
    # conv2's output are all alive: 3 maps of 16x8x8.
    spec = ArchSpec(Stem(16), (Stage((Block("basic", 16, 16),)),))
    r = estimate_cost(spec, (1, 8, 8), 10, device="cortex-m7")  # int8: 1 byte
    conv2 = next(x for x in r.rows if x.name == "blocks.0.conv2.conv.reduce")
    assert conv2.live_bytes == 3 * 16 * 64
    plain = ArchSpec(Stem(16), (Stage((Block("conv", 16), Block("conv", 16))),))
    rp = estimate_cost(plain, (1, 8, 8), 10, device="cortex-m7")
    assert rp["peak_activation_bytes"] == 2 * 16 * 64
    assert r["peak_activation_bytes"] == 3 * 16 * 64


def test_projection_shortcut_holds_its_output():
    spec = ArchSpec(Stem(8), (Stage((Block("basic", 16, 16, stride=2),)),))
    r = estimate_cost(spec, (1, 8, 8), 10, device="cortex-m7")
    conv1 = next(x for x in r.rows if x.name == "blocks.0.conv1.conv.reduce")
    # x (8x8x8) + conv1 out (16x4x4) + held shortcut output (16x4x4)
    assert conv1.live_bytes == 8 * 64 + 16 * 16 + 16 * 16


def test_device_profiles_change_latency_and_energy_not_counts():
    spec = sample_spec(get_space("mobilenetv2"), 1)
    a, b = estimate_cost(spec, device="jetson-nano"), estimate_cost(spec, device="cortex-m7")
    assert a["macs"] == b["macs"] and a["params"] == b["params"]
    assert b["weight_bytes"] == a["weight_bytes"] / 2  # int8 vs float16
    assert b["latency_ms"] > a["latency_ms"]  # a microcontroller vs a GPU
    # jetson-nano has no operator-level model: a per-layer roofline; energy is the board's power
    # over the run time plus the dynamic energy of compute and memory.
    dev = get_device("jetson-nano")
    assert dev.opmodel is None
    expected = sum(max(x.macs / dev.peak_macs_per_s, x.traffic_bytes / dev.mem_bandwidth_bytes_per_s) * 1e3
                   + dev.layer_overhead_us * 1e-3 for x in a.rows)
    assert a["latency_ms"] == pytest.approx(expected)
    assert a["energy_uj"] == pytest.approx(dev.board_power_w * a["latency_ms"] * 1e3 + (
        a["macs"] * dev.energy_pj_per_mac + a["mem_traffic_bytes"] * dev.energy_pj_per_byte) * 1e-6)


def test_shipped_profiles_cite_every_number():
    shipped = [n for n in list_devices() if n != "host"]
    assert {"rpi4", "cortex-m7", "jetson-nano"} <= set(shipped)
    for name in shipped:
        p = get_device(name)
        assert p.uncited() == [], f"{name} has uncited numbers: {p.uncited()}"


def test_user_profile_file_and_errors(tmp_path):
    p = get_device("rpi4").model_copy(update={"name": "myboard", "peak_macs_per_s": 1e9})
    path = save_device(p, tmp_path)
    assert get_device(str(path)).peak_macs_per_s == 1e9
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\npeak_macs_per_s = -1\n')
    with pytest.raises(DeviceError, match="peak_macs_per_s"):
        get_device(str(bad))
    with pytest.raises(DeviceError, match="accepted: .*rpi4"):
        get_device("pdp11")
    with pytest.raises(DeviceError, match="calibrate"):
        get_device("host")


def test_user_profile_dir_is_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_HOME", str(tmp_path))
    save_device(get_device("rpi4").model_copy(update={"name": "board2"}))
    assert "board2" in list_devices()


# ------------------------------------------------------------------------------ budgets
def test_parse_budget_from_the_issue():
    b = parse_budget("flops<=5M params<=100k latency_ms<=3 peak_mem<=256KiB")
    assert b.limits == {"flops": 5e6, "params": 1e5, "latency_ms": 3.0, "peak_activation_bytes": 262144.0}


@pytest.mark.parametrize("text, name, value", [
    ("params<=1.5M", "params", 1.5e6),
    ("macs < 2G", "macs", 2e9),
    ("size<=1MiB", "weight_bytes", 1048576.0),
    ("mem_traffic<=2MB", "mem_traffic_bytes", 2e6),
    ("energy<=50", "energy_uj", 50.0),
    ("latency<=0.5", "latency_ms", 0.5),
    ("peak_mem<=64Ki", "peak_activation_bytes", 65536.0),
    ("flops<=3e6", "flops", 3e6),
])
def test_parse_budget_accepts(text, name, value):
    assert parse_budget(text).limits == {name: value}


@pytest.mark.parametrize("text, needle", [
    ("flopz<=5M", "accepted: "),
    ("flops=>5M", "operator"),
    ("flops>=5M", "upper limits"),
    ("flops<=5X", "suffix"),
    ("flops<=five", "not a number"),
    ("params<=10kB", "byte unit"),
    ("flops<=0", "positive"),
    ("flops<=1M flops<=2M", "twice"),
    ("", "empty"),
    ("flops", "cannot read"),
])
def test_parse_budget_rejects_with_one_line(text, needle):
    with pytest.raises(BudgetError) as e:
        parse_budget(text)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_budget_check_and_hw_cost():
    b = parse_budget("flops<=2M params<=10k")
    within = {"flops": 1e6, "params": 5e3}
    over = {"flops": 3e6, "params": 5e3}
    assert b.check(within) == {} and b.feasible(within)
    assert b.check(over) == {"flops": pytest.approx(0.5)}
    # FS-DNN: sum w_i r_i / b_i with w_i = 1/n by default
    assert b.hw_cost(within) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)
    weighted = parse_budget("flops<=2M params<=10k", weights={"flops": 1.0, "params": 0.0})
    assert weighted.hw_cost(over) == pytest.approx(1.5)
    assert Budget.from_dict(b.to_dict()) == b
    strict = parse_budget("params<10k")
    assert not strict.feasible({"params": 1e4})
    report = estimate_cost(sample_spec(get_space("plain", input_shape=(1, 8, 8)), 0), (1, 8, 8), 10)
    c = parse_budget("flops<=1G").constraints(report)
    assert c["flops"] == pytest.approx(report["flops"] / 1e9 - 1)
    assert math.isfinite(b.hw_cost(report))


def test_where_conditions_accept_lower_bounds_and_extra_names():
    conds = parse_conditions("flops<=1M accuracy>=0.95", extra=("accuracy",))
    assert [(c.name, c.op, c.value) for c in conds] == [("flops", "<=", 1e6), ("accuracy", ">=", 0.95)]
    assert conds[1].holds(0.96) and not conds[1].holds(0.9)


def test_reference_count_is_thops_count_of_any_module_and_the_analytic_model_agrees():
    """thop stays the reference: it counts a user's own nn.Module, and every space's networks count
    the same analytically (``nas hardware cost --check`` shows both)."""
    import torch

    from objectives import reference_count
    from search_spaces import build_model

    baseline = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                   torch.nn.Linear(8 * 32 * 32, 10))
    ref = reference_count(baseline, (3, 32, 32))
    assert ref == {"macs": 3 * 9 * 8 * 32 * 32 + 8 * 32 * 32 * 10, "params": 3 * 9 * 8 + 8 + 8 * 32 * 32 * 10 + 10}
    for name in ("resnet", "mobilenetv2", "plain"):
        spec = sample_spec(get_space(name, input_shape=(3, 32, 32)), 4)
        report = estimate_cost(spec, (3, 32, 32), 10)
        ref = reference_count(build_model(spec, (3, 32, 32), 10), (3, 32, 32))
        assert (ref["macs"], ref["params"]) == (report["macs"], report["params"]), name
