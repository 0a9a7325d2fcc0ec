"""The study commands as a user runs them: create, run, show, list, pareto, export, report, delete, demo."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import nas, nas_here

TINY = ["--option", "max_depth=1", "--option", "widths=(8,16)", "--option", "kernels=(3,)",
        "--option", "hidden=(0,)"]


def test_full_flow_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/flow.db"
    nas("study", "create", "flow", "--space", "plain", "--data", "digits", "--budget", "params<=12k",
        "--epochs", "2", "--trials", "5", "--device", "cpu", *TINY, "--storage", url, cwd=tmp_path)
    r = nas_here("study", "run", "flow", "--quiet", "--storage", url, cwd=tmp_path)
    assert "5/5 within budget" in r.stdout
    show = json.loads(nas_here("study", "show", "flow", "--format", "json", "--storage", url, cwd=tmp_path).stdout)
    assert show["within_budget"] == 5 and show["spec"]["budget"] == "params<=12k"
    listed = json.loads(nas_here("study", "list", "--format", "json", "--storage", url, cwd=tmp_path).stdout)
    assert [s["name"] for s in listed] == ["flow"]
    front = json.loads(nas_here("pareto", "flow", "--format", "json", "--storage", url, cwd=tmp_path).stdout)
    assert front and all(r["params"] <= 12_000 for r in front)
    rows = list(csv.DictReader(io.StringIO(nas_here("pareto", "flow", "--format", "csv", "--storage", url,
                                                    cwd=tmp_path).stdout)))
    assert [int(r["trial"]) for r in rows] == [r["trial"] for r in front]
    nas_here("export", "flow", "--trial", str(front[0]["trial"]), "--to", str(tmp_path / "exp"), "--storage", url,
             cwd=tmp_path)
    assert (tmp_path / "exp" / "model.onnx").stat().st_size > 0
    nas_here("report", "flow", "--to", str(tmp_path / "rep"), "--storage", url, cwd=tmp_path)
    assert (tmp_path / "rep" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "Pareto front" in (tmp_path / "rep" / "report.html").read_text()
    # Rerunning with a higher target resumes.
    nas_here("study", "run", "flow", "--trials", "7", "--quiet", "--storage", url, cwd=tmp_path)
    assert json.loads(nas_here("study", "show", "flow", "--format", "json", "--storage", url,
                               cwd=tmp_path).stdout)["within_budget"] == 7
    assert nas_here("study", "delete", "flow", "--storage", url, cwd=tmp_path, check=False).returncode == 2
    nas_here("study", "delete", "flow", "--yes", "--storage", url, cwd=tmp_path)
    assert json.loads(nas_here("study", "list", "--format", "json", "--storage", url, cwd=tmp_path).stdout) == []


def test_config_file(tmp_path):
    (tmp_path / "study.toml").write_text(
        'name = "fromfile"\nspace = "resnet"\ndata = "digits"\nbudget = "flops<=5M"\nsampler = "random"\n'
        'trials = 2\n[fidelity]\nepochs = 1\n')
    url = f"sqlite:///{tmp_path}/cfg.db"
    nas_here("study", "create", "--config", str(tmp_path / "study.toml"), "--storage", url, cwd=tmp_path)
    show = json.loads(nas_here("study", "show", "fromfile", "--format", "json", "--storage", url, cwd=tmp_path).stdout)
    assert show["spec"]["sampler"] == "random" and show["spec"]["fidelity"]["epochs"] == 1


@pytest.mark.parametrize("args, needle", [
    (["study", "create", "x", "--space", "vgg", "--budget", "flops<=1M"], "accepted: mobilenetv2, plain, resnet"),
    (["study", "create", "x", "--space", "plain", "--sampler", "cma", "--budget", "flops<=1M"],
     "auto, tpe, nsga2, gp, random"),
    (["study", "create", "x", "--space", "plain", "--objectives", "accuracy,speed", "--budget", "flops<=1M"],
     "unknown objective 'speed'"),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1Q"], "suffix"),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--data", "idx:/nonexistent"], "data: "),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--storage", "mysql://a/b"],
     "unsupported database"),
    # A read on a database that is not there is refused, never created (an unknown study in an
    # existing database: tests/test_bad_input.py).
    (["study", "run", "nosuch"], "sqlite:///nas.db does not exist"),
    (["pareto", "nosuch"], "sqlite:///nas.db does not exist"),
    (["study", "create", "--config", "/nonexistent.toml"], "cannot read"),
    # Refused after the data are read, still before the database is opened: no new file.
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--option", "widths=abc"],
     "widths must be positive integers"),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1"], "below what space 'plain'"),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--warm-start", "old"],
     "unknown study 'old'"),
    # The demo creates its study: its run's arguments are checked first.
    (["demo", "--trials", "0"], "--trials: must be between 1"),
    (["demo", "--workers", "0"], "--workers: must be between 1"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    db = tmp_path / "nas.db"
    r = nas_here(*args, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not db.exists()  # a refused request never creates the database


def test_existing_name_exits_2(tmp_path):
    args = ["study", "create", "dup", "--space", "plain", "--budget", "flops<=1M", "--trials", "3"]
    nas_here(*args, cwd=tmp_path)
    r = nas_here(*args[:-1], "9", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "already exists" in r.stderr
    show = json.loads(nas_here("study", "show", "dup", "--format", "json", cwd=tmp_path).stdout)
    assert show["target"] == 3


@pytest.mark.slow
def test_demo_meets_its_promise(tmp_path):
    """README's main job: digits + SQLite, a front of >= 3 architectures within budget, >= 95% test."""
    r = nas("demo", "--quiet", cwd=tmp_path)
    assert (tmp_path / "nas.db").exists()
    # Budget first: the space's minimum cost and share within the budget, before any training.
    assert "the space's minimum is params" in r.stdout and "lies within the budget (2000 samples)" in r.stdout
    assert "60 networks within budget" in r.stdout
    # The space's cheapest architecture runs first: the front's low-cost end is never left unexplored.
    assert "warm start: the space's cheapest by params queued first" in r.stdout
    assert "Pareto plot: nas_runs/demo/pareto.png" in r.stdout
    front = json.loads(nas("pareto", "demo", "--format", "json", cwd=tmp_path).stdout)
    assert len(front) >= 3
    from nas.search import DEMO_BUDGET
    from objectives import parse_budget

    budget = parse_budget(DEMO_BUDGET)
    assert all(budget.feasible(row["cost"]) for row in front)
    assert max(row["test_accuracy"] for row in front) >= 0.95
    # Running it again resumes: nothing more to do.
    again = nas("demo", "--quiet", cwd=tmp_path)
    assert "resuming study demo" in again.stdout


def test_study_run_checks_every_argument_before_it_writes_the_target(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    nas_here("study", "create", "t", "--space", "plain", "--data", "digits", "--budget", "params<=12k", "--epochs", "1",
        "--trials", "2", "--device", "cpu", *TINY, "--storage", url, cwd=tmp_path)
    nas_here("study", "run", "t", "--quiet", "--storage", url, cwd=tmp_path)

    def target() -> int:
        show = nas_here("study", "show", "t", "--format", "json", "--storage", url, cwd=tmp_path)
        return int(json.loads(show.stdout)["target"])

    for args, needle in [(["--trials", "10", "--workers", "0"], "--workers"),
                         (["--trials", "10", "--timeout", "-1"], "--timeout"),
                         (["--trials", "1"], "the target cannot go below that"),
                         (["--trials", "2000000"], "between 1 and 1,000,000"),
                         (["--trials", str(10**30)], "between 1 and 1,000,000")]:
        r = nas_here("study", "run", "t", "--quiet", *args, "--storage", url, cwd=tmp_path, check=False)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert target() == 2, args
