"""The ``nas`` console script as a user runs it: spaces, hardware profiles/cost/calibrate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NAS = shutil.which("nas", path=str(Path(sys.executable).parent)) or "nas"


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
    r = run("hardware", "calibrate", "--specs", "4", "--repeats", "3", home=tmp_path, check=True)
    path = tmp_path / "devices" / "host.toml"
    assert path.exists() and str(path) in r.stdout.replace("\n", "")
    profiles = json.loads(run("hardware", "profiles", "--format", "json", home=tmp_path, check=True).stdout)
    host = next(p for p in profiles if p["name"] == "host")
    assert host["peak_macs_per_s"] > 1e6 and host["bandwidth_B_per_s"] > 1e6
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
