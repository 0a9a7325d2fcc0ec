"""The ``nas`` console script as a user runs it: spaces, hardware profiles/cost/calibrate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import NAS


def run(*args: str, home: Path, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAS_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([NAS, *args], capture_output=True, text=True, env=env, timeout=300, check=check)


def test_spaces_json_lists_registry(tmp_path):
    r = run("spaces", "--format", "json", home=tmp_path, check=True)
    names = [row["name"] for row in json.loads(r.stdout)]
    assert names == ["mobilenetv2", "plain", "resnet"]


def test_cost_json_is_a_full_report(tmp_path):
    r = run("hardware", "cost", "--space", "resnet", "--seed", "3", "--input", "1x28x28",
            "--device", "cortex-m7", "--budget", "flops<=1G", "--format", "json", home=tmp_path, check=True)
    d = json.loads(r.stdout)
    assert d["device"] == "cortex-m7" and d["input_shape"] == [1, 28, 28]
    assert d["totals"]["flops"] == 2 * d["totals"]["macs"] > 0
    assert d["totals"]["params"] == sum(row["params"] for row in d["rows"])
    assert d["budget"]["violations"] == {}
    # The same seed gives the same architecture.
    again = json.loads(run("hardware", "cost", "--space", "resnet", "--seed", "3", "--input", "1x28x28",
                           "--format", "json", home=tmp_path, check=True).stdout)
    assert again["spec_hash"] == d["spec_hash"]


def test_cost_table_and_spec_file(tmp_path):
    d = json.loads(run("hardware", "cost", "--space", "plain", "--format", "json", home=tmp_path, check=True).stdout)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(d["spec"]))
    r = run("hardware", "cost", "--spec", str(spec_file), "--budget", "params<=10", home=tmp_path, check=True)
    assert "peak_activation_bytes" in r.stdout and "over budget" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["hardware", "cost", "--space", "nope"], "accepted: mobilenetv2, plain, resnet"),
    (["hardware", "cost", "--space", "resnet", "--input", "32x32"], "CxHxW"),
    (["hardware", "cost", "--space", "resnet", "--device", "pdp11"], "accepted: "),
    (["hardware", "cost", "--space", "resnet", "--budget", "flops<=many"], "not a number"),
    (["hardware", "cost", "--space", "resnet", "--option", "max_depth=0"], "max_depth"),
    (["hardware", "cost", "--spec", "/nonexistent.json"], "cannot read"),
    (["hardware", "cost"], "--space"),
    (["hardware", "cost", "--space", "plain", "--format", "xml"], "xml"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    r = run(*args, home=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    if args[-1] != "xml":  # click's own usage errors are a short box; ours are one line
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_calibrate_writes_a_usable_host_profile(tmp_path):
    r = run("hardware", "calibrate", "--specs", "16", "--rounds", "2", "--threads", "1", home=tmp_path, check=True)
    path = tmp_path / "devices" / "host.toml"
    assert path.exists() and str(path) in r.stdout.replace("\n", "")
    assert "cross-validated tau" in r.stdout
    profiles = json.loads(run("hardware", "profiles", "--format", "json", home=tmp_path, check=True).stdout)
    host = next(p for p in profiles if p["name"] == "host")
    assert host["peak_macs_per_s"] > 1e6 and host["bandwidth_B_per_s"] > 1e6
    assert host["latency_model"] == "operator-level" and "1 threads" in host["runtime"]
    assert host["validations"][0]["n_test"] == 16
    d = json.loads(run("hardware", "cost", "--space", "plain", "--device", "host", "--format", "json",
                       home=tmp_path, check=True).stdout)
    assert d["device"] == "host" and d["totals"]["latency_ms"] > 0


def test_cost_check_compares_with_thop(tmp_path):
    r = run("hardware", "cost", "--space", "mobilenetv2", "--seed", "2", "--input", "3x32x32", "--check",
            home=tmp_path, check=True)
    assert "thop reference: MACs" in r.stdout and "agree" in r.stdout and "DISAGREE" not in r.stdout
    doc = json.loads(run("hardware", "cost", "--space", "plain", "--seed", "1", "--check", "--format", "json",
                         home=tmp_path, check=True).stdout)
    assert doc["reference"]["agrees"] is True
    assert doc["reference"]["macs"] == doc["totals"]["macs"] and doc["reference"]["params"] == doc["totals"]["params"]


def test_help_text_comes_from_the_fields_the_models_are_declared_from(tmp_path):
    """A changed default cannot make the help lie: the CLI's help says what the models declare."""
    from nas.refine import RefineSettings
    from nas.search import Fidelity, StudySpec

    create = " ".join(run("study", "create", "--help", home=tmp_path, check=True).stdout.replace("│", " ").split())
    refine = " ".join(run("refine", "--help", home=tmp_path, check=True).stdout.replace("│", " ").split())
    for text, model, name in ((create, Fidelity, "epochs"), (create, StudySpec, "seed"), (create, StudySpec, "trials"),
                              (create, StudySpec, "cost_device"), (refine, RefineSettings, "alpha"),
                              (refine, RefineSettings, "temperature"), (refine, RefineSettings, "margin")):
        info = model.model_fields[name]
        assert f"{info.description} (default {info.default})" in text, (name, info.description)


# ------------------------------------------------------------------------ probe, fit, cost (issue 17)
def fill(manifest: Path, latency, energy=None) -> None:
    """Fill a probe manifest's latency_ms (and energy_uj) columns from functions of the probe's spec."""
    import csv

    from search_spaces import ArchSpec

    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        spec = ArchSpec.from_json((manifest.parent / r["spec"]).read_text())
        shape = tuple(int(v) for v in r["input_shape"].split("x"))
        r["latency_ms"] = repr(latency(spec, shape))
        r["energy_uj"] = "" if energy is None else repr(energy(spec, shape))
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    """``nas hardware probe`` once for the module (ONNX export is the slow part)."""
    d = tmp_path_factory.mktemp("probes")
    r = run("hardware", "probe", "--to", str(d / "p"), "--n", "40", home=d, check=True)
    assert "probes.csv" in r.stdout
    return d / "p"


def known_latency(spec, shape):
    """What the 'device' of these tests measures: a known operator-level model (tests/test_opmodel.py)."""
    from kit_data import TRUE

    from objectives.cost import analytic_layers, layers_from_ops

    return TRUE.network_ms(layers_from_ops(analytic_layers(spec, shape, 10)), 4)


def test_probe_writes_onnx_specs_and_an_empty_manifest(probe_dir):
    import csv

    import onnx

    with open(probe_dir / "probes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and all(r["latency_ms"] == "" for r in rows)
    model = onnx.load(str(probe_dir / rows[0]["onnx"]))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *(int(v) for v in rows[0]["input_shape"].split("x"))]  # fixed shapes, batch 1
    assert (probe_dir / rows[0]["spec"]).exists() and (probe_dir / "README.txt").exists()
    again = run("hardware", "probe", "--to", str(probe_dir), home=probe_dir)
    assert again.returncode == 2 and "already holds a probe set" in again.stderr


def test_probe_fit_cost_round_trip(probe_dir, tmp_path):

    from storage import Store

    work = tmp_path / "p"
    shutil.copytree(probe_dir, work)
    fill(work / "probes.csv", known_latency, energy=lambda s, sh: 2.5 * known_latency(s, sh) * 1e3)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    # A mistyped database is refused before anything is written.
    r = run("hardware", "fit", "myboard", "--measurements", str(work / "probes.csv"), "--storage", db,
            home=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "devices" / "myboard.toml").exists() and not (tmp_path / "nas.db").exists()
    Store(db, mode="create").close()  # a lightnas database, as 'nas study create' leaves one
    r = run("hardware", "fit", "myboard", "--measurements", str(work / "probes.csv"), "--runtime", "test runtime",
            "--storage", db, home=tmp_path, check=True)
    assert "cross-validated tau" in r.stdout and f"stored profile 'myboard' in {db}" in r.stdout
    profiles = json.loads(run("hardware", "profiles", "--format", "json", home=tmp_path, check=True).stdout)
    mine = next(p for p in profiles if p["name"] == "myboard")
    assert mine["latency_model"] == "operator-level" and mine["runtime"] == "test runtime"
    assert mine["validations"][0]["tau"] > 0.95 and mine["validations"][0]["median_abs_ln_error"] < 0.05
    # The 'device' draws 2.5 W in all: the board's share is what the dynamic energy leaves of it.
    assert 2.0 < mine["board_power_w"] < 2.5
    # The fitted profile costs a network it never saw as the device would have measured it.
    d = json.loads(run("hardware", "cost", "--space", "resnet", "--seed", "11", "--device", "myboard",
                       "--format", "json", home=tmp_path, check=True).stdout)
    from search_spaces import ArchSpec

    want = known_latency(ArchSpec.from_dict(d["spec"]), (3, 32, 32))
    assert d["totals"]["latency_ms"] == pytest.approx(want, rel=0.1)
    assert d["totals"]["energy_uj"] == pytest.approx(2.5 * want * 1e3, rel=0.1)
    # And the study database holds the same profile, for workers on other hosts.
    store = Store(db, mode="existing")
    try:
        assert "myboard" in store.device_profiles()
        assert "[opmodel]" in store.device_profiles()["myboard"]
    finally:
        store.close()


def test_a_worker_on_another_host_costs_with_the_stored_profile(probe_dir, tmp_path):

    work, here, there = tmp_path / "p", tmp_path / "here", tmp_path / "there"
    shutil.copytree(probe_dir, work)
    fill(work / "probes.csv", known_latency)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    run("hardware", "fit", "myboard", "--measurements", str(work / "probes.csv"), "--no-store", home=here, check=True)
    # Created where the profile file is; the database then holds it too.
    run("study", "create", "s1", "--space", "plain", "--data", "digits", "--budget", "latency_ms<=1000",
        "--cost-device", "myboard", "--trials", "1", "--storage", db, home=here, check=True)
    # Another host: no profile file, only the database.
    assert not (there / "devices" / "myboard.toml").exists()
    r = run("study", "show", "s1", "--storage", db, "--format", "json", home=there)
    assert r.returncode == 0, r.stderr
    assert "myboard" in r.stdout


def test_fit_from_a_per_layer_lookup_table(tmp_path):
    import csv

    from kit_data import TRUE

    from objectives.cost import conv_layer, linear_layer, pool_layer

    rows = []
    for c in (8, 16, 32, 64):
        for h in (4, 8, 16, 32):
            for op, layer in (("conv", conv_layer(c, 2 * c, h, h, 3)), ("conv1x1", conv_layer(c, 2 * c, h, h, 1)),
                              ("dwconv", conv_layer(c, c, h, h, 3, 1, c)), ("pool", pool_layer(c, h, h))):
                rows.append({"operator": op, "cin": c, "h": h, "w": h, "cout": layer.cout, "kernel": layer.kernel,
                             "stride": 1, "groups": layer.groups, "latency_ms": TRUE.layer_ms(layer, 4)})
        rows.append({"operator": "linear", "cin": c, "h": 1, "w": 1, "cout": 10, "kernel": 1, "stride": 1, "groups": 1,
                     "latency_ms": TRUE.layer_ms(linear_layer(c, 10), 4)})
    lut = tmp_path / "lut.csv"
    with open(lut, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = run("hardware", "fit", "lutboard", "--measurements", str(lut), "--no-store", home=tmp_path, check=True)
    assert "layers of the lookup table" in r.stdout
    from objectives.cost import load_device_file

    prof = load_device_file(tmp_path / "devices" / "lutboard.toml")
    assert len(prof.lut) == len(rows) and prof.lut["conv:8x4x4:16:k3:s1:g1"] == rows[0]["latency_ms"]
    assert prof.validation[0].tau > 0.95


BAD_MEASUREMENTS = [
    ("missing", lambda rows: rows[:-3], "lacks 3 of the 40 probes"),
    ("empty", lambda rows: [dict(r, latency_ms="") if i == 5 else r for i, r in enumerate(rows)], "has no latency_ms"),
    ("negative", lambda rows: [dict(r, latency_ms="-1.5") if i == 2 else r for i, r in enumerate(rows)],
     "latency_ms must be a positive finite number"),
    ("nan", lambda rows: [dict(r, latency_ms="nan") if i == 2 else r for i, r in enumerate(rows)],
     "latency_ms must be a positive finite number"),
    ("text", lambda rows: [dict(r, latency_ms="fast") if i == 2 else r for i, r in enumerate(rows)],
     "is not a number"),
    ("unknown", lambda rows: [dict(r, probe_id="p999") if i == 1 else r for i, r in enumerate(rows)],
     "unknown probe id 'p999'"),
    ("repeated", lambda rows: rows + [rows[0]], "repeated"),
    ("energy", lambda rows: [dict(r, energy_uj="3") if i == 0 else r for i, r in enumerate(rows)],
     "energy_uj is given for 1 of 40"),
    ("columns", lambda rows: [{"name": r["probe_id"], "ms": r["latency_ms"]} for r in rows], "expected a filled"),
]


@pytest.mark.parametrize("case, edit, needle", BAD_MEASUREMENTS, ids=[c for c, _, _ in BAD_MEASUREMENTS])
def test_bad_measurement_files_exit_2_with_one_line(probe_dir, tmp_path, case, edit, needle):
    import csv

    work = tmp_path / "p"
    shutil.copytree(probe_dir, work)
    fill(work / "probes.csv", lambda s, sh: 1.0)
    with open(work / "probes.csv") as f:
        rows = edit(list(csv.DictReader(f)))
    with open(work / "probes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = run("hardware", "fit", "b", "--measurements", str(work / "probes.csv"), "--no-store", home=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "devices" / "b.toml").exists()


@pytest.mark.parametrize("args, needle", [
    (["hardware", "fit", "rpi4", "--measurements", "x.csv"], "is a shipped profile"),
    (["hardware", "fit", "bad/name", "--measurements", "x.csv"], "profile name"),
    (["hardware", "fit", "ok", "--measurements", "/nonexistent.csv"], "cannot read"),
    (["hardware", "probe", "--to", "x", "--n", "3"], "--n"),
    (["hardware", "calibrate", "--specs", "4"], "--specs"),
])
def test_bad_probe_and_fit_arguments_exit_2(tmp_path, args, needle):
    r = run(*args, home=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
