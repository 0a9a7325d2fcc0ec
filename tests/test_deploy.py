"""From search to device: int8 artifacts in their runtimes, and RAM / flash budgets that hold there.

The converter (litert-torch) and the interpreters (LiteRT, TFLM, ONNX Runtime) are real: the
``lightnas[deploy]`` extra, which ``.ci/run`` installs.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import nas_cli

from objectives import estimate_cost, flash_bytes, get_device, ram_bytes, simulated_logits
from objectives.cost import planned_bytes, tflite_graph
from objectives.deploy import (
    describe_tflite,
    io_quantization,
    quantize_ptq,
    run_litert,
    run_onnx,
    run_tflm,
    tflm_arena,
    to_onnx_int8,
    to_tflite,
)
from search_spaces import ArchSpec, Block, Head, Stage, Stem, build_model

#: One small network per block type, each with a LightLayer (low-rank) and a stride-2 convolution
#: whose PyTorch padding is not TFLite's SAME (the converter adds a PAD), and a low-rank hidden head.
NETWORKS = {
    "conv": ArchSpec(Stem(8, kernel=3, stride=1), (Stage((Block("conv", 16, kernel=5, stride=2, rank_ratio=0.25),
                                                          Block("conv", 16, kernel=3))),),
                     Head(hidden=32, rank_ratio=0.25)),
    "basic": ArchSpec(Stem(8, stride=2), (Stage((Block("basic", 8, 8),  # a strided stem: a fitted space's
                                                 Block("basic", 16, 8, stride=2, rank_ratio=0.5))),)),
    "bottleneck": ArchSpec(Stem(8), (Stage((Block("bottleneck", 16, 8, mid2_channels=8, stride=2,
                                                  rank_ratio=0.5),
                                            Block("bottleneck", 16, 4, mid2_channels=4))),)),
    "inverted": ArchSpec(Stem(8), (Stage((Block("inverted", 8, 24, rank_ratio=0.5),
                                          Block("inverted", 8, 24, kernel=5),  # chained residual additions
                                          Block("inverted", 8, 8),
                                          Block("inverted", 12, 48, stride=2))),)),
}


def _bn_statistics(model: torch.nn.Module, shape: tuple[int, int, int]) -> None:
    """BatchNorm statistics of real activations, as a trained network has (calibration is then meaningful)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
    model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("block", sorted(NETWORKS))
@pytest.mark.parametrize("shape", [(1, 12, 12), (3, 16, 16)], ids=["1x12", "3x16"])
def test_every_block_type_converts_to_a_full_integer_artifact_the_ram_flash_model_predicts(block, shape):
    spec = NETWORKS[block]
    torch.manual_seed(0)
    model = build_model(spec, shape, 10)
    _bn_statistics(model, shape)
    x = torch.randn(48, *shape)
    q = quantize_ptq(model, x[:32])
    tfl = to_tflite(q)  # raises if any float tensor were left in the graph
    assert tfl[4:8] == b"TFL3"
    io = io_quantization(tfl)
    inp, out = io["input"], io["output"]
    assert inp["dtype"] == "int8" and out["dtype"] == "int8"
    assert inp["shape"] == [1, shape[1], shape[2], shape[0]]  # the device's channels-last layout
    # the converted graph is the one the RAM/flash model assumes, op for op
    graph = tflite_graph(spec, shape, 10)
    assert [o["op"] for o in describe_tflite(tfl)["ops"]] == [op.kind for op in graph.ops]
    arena = tflm_arena(tfl)
    assert arena.head == planned_bytes(graph)  # TFLM's planner replayed exactly
    for predicted, measured in ((ram_bytes(spec, shape, 10), arena.arena), (flash_bytes(spec, shape, 10), len(tfl))):
        assert abs(math.log(predicted / measured)) <= 0.10, (predicted, measured)
        assert predicted >= 0.95 * measured  # a budget is a promise
    # the three int8 executions agree: simulated in PyTorch, LiteRT, TFLM (in output quantization steps: an
    # untrained network's logits are near ties, so its top-1 flips with any rounding)
    scale, zp = out["scale"], out["zero_point"]
    sim = torch.round(simulated_logits(q, x) / scale).numpy() + zp
    litert = run_litert(tfl, x).astype(int)
    tflm = run_tflm(tfl, x[:16], arena=arena.arena).astype(int)
    spread = abs(litert - zp).mean()  # tens of steps: a wrong conversion differs by as much
    assert abs(sim - litert).mean() <= max(3.0, 0.1 * spread), (abs(sim - litert).mean(), spread)
    assert abs(tflm - litert[:16]).mean() <= max(3.0, 0.1 * spread)
    assert (sim.argmax(1) == litert.argmax(1)).mean() >= 0.75


@pytest.mark.slow
def test_quantization_aware_fine_tuning_gives_an_int8_network_that_survives_storage_and_conversion():
    from objectives import TrainConfig, load_dataset, quantize_qat, save_int8
    from objectives.deploy import load_int8

    data = load_dataset("digits", seed=0, val_fraction=0.15)
    spec = NETWORKS["basic"]
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, data.num_classes)
    from objectives import train_model

    train_model(model, data, TrainConfig(epochs=2, batch_size=64, lr=0.1, seed=0, device="cpu"))
    q = quantize_qat(model, data, TrainConfig(epochs=1, batch_size=64, lr=0.01, seed=0, device="cpu",
                                               warmup_fraction=0.0))
    before = simulated_logits(q, data.x_val)
    back = load_int8(save_int8(q), data.input_shape)
    assert torch.equal(simulated_logits(back, data.x_val), before)  # the stored network is the trained one
    acc = float((before.argmax(1) == data.y_val).double().mean())
    assert acc > 0.5  # it learned: 10 classes, chance is 0.1
    litert = run_litert(to_tflite(back), data.x_val).argmax(1)
    assert (litert == before.argmax(1).numpy()).mean() >= 0.95


@pytest.mark.slow
def test_onnx_qdq_model_runs_in_onnx_runtime_and_agrees_with_pytorch(tmp_path):
    spec, shape = NETWORKS["basic"], (1, 12, 12)
    torch.manual_seed(1)
    model = build_model(spec, shape, 10)
    _bn_statistics(model, shape)
    x = torch.randn(64, *shape)
    path = tmp_path / "m.onnx"
    to_onnx_int8(model, x[:32], path)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    got = run_onnx(path, x).argmax(1)
    with torch.no_grad():
        want = model(x).argmax(1).numpy()
    assert (got == want).mean() >= 0.85


def test_ram_and_flash_are_costs_of_profiles_with_a_device_runtime():
    spec, shape = NETWORKS["inverted"], (1, 28, 28)
    m7 = estimate_cost(spec, shape, 10, device="cortex-m7")
    assert get_device("cortex-m7").memory_runtime == "tflm"
    assert m7["ram_bytes"] == ram_bytes(spec, shape, 10) > m7["peak_activation_bytes"]
    assert m7["flash_bytes"] == flash_bytes(spec, shape, 10) > m7["weight_bytes"]
    assert "ram_bytes" not in estimate_cost(spec, shape, 10, device="rpi4").totals


def test_a_ram_budget_on_a_profile_without_a_runtime_is_refused_in_one_line(tmp_path, capsys):
    db = tmp_path / "nas.db"
    code, out, err = nas_cli("study", "create", "s", "--space", "plain", "--budget", "ram<=64KiB",
                             "--storage", f"sqlite:///{db}")
    assert code == 2
    line = (out + err).strip()
    assert len(line.splitlines()) == 1 and "ram_bytes" in line and "cortex-m7" in line and "rpi4" in line
    assert not db.exists()


def test_hardware_cost_checks_ram_and_flash_on_the_profile_that_defines_them(capsys):
    code, out, err = nas_cli("hardware", "cost", "--space", "resnet", "--seed", "3", "--input", "1x28x28",
                             "--device", "rpi4", "--budget", "ram<=64KiB")
    assert code == 2
    assert (out + err).strip().count("\n") == 0 and "ram_bytes" in out + err and "cortex-m7" in out + err
    code, out, err = nas_cli("hardware", "cost", "--space", "resnet", "--seed", "3", "--input", "1x28x28",
                             "--device", "cortex-m7", "--budget", "ram<=1MiB flash<=4MiB", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["budget"]["violations"] == {} and doc["totals"]["ram_bytes"] > doc["totals"]["peak_activation_bytes"]


def test_budget_first_with_ram_and_flash_refuses_below_the_minimum_and_fits_the_space(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    code, out, err = nas_cli("study", "create", "s", "--space", "resnet", "--cost-device", "cortex-m7",
                             "--budget", "ram<=2KiB", "--storage", db)
    assert code == 2
    assert "ram_bytes<=2KiB is below what" in out + err and "needs" in out + err
    # a microcontroller budget the full space mostly misses: the space is fitted to it
    code, out, err = nas_cli("study", "create", "s", "--space", "resnet", "--cost-device", "cortex-m7",
                             "--budget", "ram<=48KiB flash<=96KiB", "--data", "digits", "--storage", db)
    assert code == 0, out + err
    assert "fitted" in out or "scaled" in out
    info = sqlite3.connect(tmp_path / "nas.db").execute("select info_json from lightnas_studies").fetchone()[0]
    share = json.loads(info)
    text = json.dumps(share)
    assert "ram_bytes" in text and "flash_bytes" in text


def _block_deploy_extra_and_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``nas ARGS`` in a Python where the deploy extra's modules cannot be imported."""
    code = ("import sys\n"
            "class Missing:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('litert_torch', 'tflite_micro', 'ai_edge_litert', 'torchao'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Missing())\n"
            "from nas.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_without_the_deploy_extra_int8_requests_say_which_extra_in_one_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    r = _block_deploy_extra_and_run(["study", "create", "s", "--space", "plain", "--precision", "int8",
                                     "--budget", "params<=50k", "--storage", db], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    line = (r.stdout + r.stderr).strip()
    assert len(line.splitlines()) == 1 and "lightnas[deploy]" in line and "--precision int8" in line
    assert not (tmp_path / "nas.db").exists()


@pytest.fixture(scope="module")
def int8_study(tmp_path_factory):
    """A --precision int8 study on the digits under microcontroller limits, 3 networks trained."""
    from nas.cli import main

    path = tmp_path_factory.mktemp("int8")
    db = f"sqlite:///{path / 'nas.db'}"
    for args in (["study", "create", "m", "--space", "plain", "--data", "digits", "--cost-device", "cortex-m7",
                  "--budget", "ram<=24KiB flash<=64KiB", "--precision", "int8", "--calibration", "64",
                  "--qat-epochs", "1", "--qat-threshold", "0", "--epochs", "2", "--trials", "3", "--storage", db],
                 ["study", "run", "m", "--storage", db, "--quiet"]):
        with pytest.raises(SystemExit) as e:
            main(args)
            raise SystemExit(0)
        assert e.value.code in (0, None)
    return path, db


@pytest.mark.slow
def test_an_int8_study_ranks_the_int8_network_and_keeps_fp32_beside_it(int8_study, capsys):
    path, db = int8_study
    code, out, _ = nas_cli("pareto", "m", "--format", "json", "--storage", db)
    assert code == 0
    rows = json.loads(out)
    assert rows
    for r in rows:
        assert 0 < r["accuracy"] <= 1 and 0 < r["fp32_accuracy"] <= 1
        assert r["int8_drop"] == pytest.approx(r["fp32_accuracy"] - r["accuracy"])
        assert r["ram_bytes"] <= 24 * 1024 and r["flash_bytes"] <= 64 * 1024
    # quantization-aware fine-tuning where post-training quantization lost anything (threshold 0), kept where
    # it beats it on validation
    import optuna

    for t in optuna.load_study(study_name="m", storage=db).get_trials():
        a = t.user_attrs
        if a.get("status") != "trained":
            continue
        ptq = a.get("ptq_accuracy", a["val_accuracy"])
        assert ("ptq_accuracy" in a) == (a["fp32_accuracy"] - ptq > 0)
        assert a["int8_method"] == ("qat" if a["val_accuracy"] > ptq else "ptq")
    code, out, _ = nas_cli("pareto", "m", "--deploy", "--storage", db)
    assert code == 0
    assert "int8_accuracy" in out and "int8_drop" in out and "ram_bytes" in out and "flash_bytes" in out


@pytest.mark.slow
def test_export_tflite_measures_the_artifact_in_its_runtimes_and_checks_the_budget(int8_study, capsys):
    path, db = int8_study
    rows = json.loads(nas_cli("pareto", "m", "--format", "json", "--storage", db)[1])
    trial = str(rows[0]["trial"])
    to = path / "out"
    code, out, err = nas_cli("export", "m", "--trial", trial, "--to", str(to), "--formats",
                             "json,tflite,onnx-int8", "--calibration", "32", "--storage", db)
    assert code == 0, out + err
    assert (to / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert (to / "model_int8.onnx").exists()
    for needle in ("LiteRT", "TFLM", "ONNX Runtime", "RAM (TFLM arena)", "flash (.tflite)", "limit"):
        assert needle in out, needle
    deploy = json.loads((to / "model.json").read_text())["deploy"]
    t = deploy["tflite"]
    assert t["flash_bytes"] == (to / "model.tflite").stat().st_size
    assert t["ram_bytes"] <= 24 * 1024 and t["flash_bytes"] <= 64 * 1024 and t["within_budget"]
    assert abs(math.log(t["ram_predicted"] / t["ram_bytes"])) <= 0.10
    assert t["litert"]["images"] == deploy["onnx-int8"]["onnxruntime"]["images"] > 100
    assert t["simulated_vs_litert"] >= 0.95
    if deploy["int8_method"] == "ptq":  # a QAT network is trained further: it need not agree with fp32
        assert t["litert"]["agreement"] >= 0.9

    # the study's limits tightened in its database below what the artifact measures: --strict refuses it
    spec = json.loads(sqlite3.connect(path / "nas.db").execute(
        "select spec_json from lightnas_studies where name='m'").fetchone()[0])
    spec["budget"] = f"ram<=24KiB flash<={t['flash_bytes'] - 1}B"
    with sqlite3.connect(path / "nas.db") as conn:
        conn.execute("update lightnas_studies set spec_json=? where name='m'", (json.dumps(spec),))
    strict = path / "strict"
    code, out, err = nas_cli("export", "m", "--trial", trial, "--to", str(strict), "--formats", "tflite",
                             "--calibration", "32", "--strict", "--storage", db)
    assert code == 2
    assert "over the study's budget" in out + err and "flash" in out + err
    assert not strict.exists() or not any(strict.iterdir())
    code, out, err = nas_cli("export", "m", "--trial", trial, "--to", str(strict), "--formats", "tflite",
                             "--calibration", "32", "--storage", db)
    assert code == 0 and "OVER BUDGET" in out  # without --strict: written, and flagged


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needle"), [
    (["--formats", "tflite", "--calibration", "0"], "--calibration"),
    (["--formats", "tflite", "--calibration", "100000000"], "--calibration"),
    (["--formats", "json", "--calibration", "8"], "--calibration"),
    (["--formats", "tflite,bogus"], "accepted: json, state_dict, onnx, tflite, onnx-int8"),
])
def test_bad_export_requests_are_one_line_exit_2(int8_study, capsys, args, needle):
    path, db = int8_study
    trial = str(json.loads(nas_cli("pareto", "m", "--format", "json", "--storage", db)[1])[0]["trial"])
    to = path / "bad"
    code, out, err = nas_cli("export", "m", "--trial", trial, "--to", str(to), *args, "--storage", db)
    assert code == 2
    text = (out + err).strip()
    assert len(text.splitlines()) == 1 and needle in text
    assert not to.exists()
