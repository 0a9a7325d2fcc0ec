"""optuna-dashboard reads a lightnas study on PostgreSQL exactly as lightnas stored it, and leaves it alone;
its Pareto front is the one ``nas pareto`` answers, over-budget samples apart.

The README and docker-compose.yml promise that optuna-dashboard, pointed at the same database
as the workers, shows lightnas's studies. This runs a small real study on a fresh PostgreSQL
database with lightnas's own API, starts the ``optuna-dashboard`` console script of this
environment on a free port, and compares its HTTP API (the JSON its web page renders) with what
lightnas sees. Afterwards every table of the database must be byte-for-byte what it was. The
dashboard's Pareto plot is read from its own page, rendered by its JavaScript in Debian's chromium.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import record_requests
from lightnas_pg import free_port
from sqlalchemy import column, inspect, select, table

from nas.search import CONSTRAINTS_KEY, create_study, dominates, make_spec, pareto_rows
from nas.workers import run_study
from storage import Store

pytestmark = pytest.mark.postgres

DASHBOARD_READY_TIMEOUT = 30.0  # seconds for the dashboard to answer its first request
NAME = "dash"
# The small space of tests/test_study.py: 4 distinct architectures, ~1 s to train one at this fidelity,
# and params<=12k puts some of them over the budget (seed 2: trained, reused and over-budget trials).
TINY = {"max_depth": 1, "widths": [8, 16], "kernels": [3], "hidden": [0], "rank_ratios": [1.0, 0.5]}


def _dashboard_executable() -> str:
    exe = Path(sys.executable).with_name("optuna-dashboard")
    found = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if not found:
        pytest.fail("optuna-dashboard is not installed; `pip install -e '.[dev]'` (extra `dashboard`)", pytrace=False)
    return found



def _get(base: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    ctype_json = body[:1] in (b"{", b"[")
    return status, (json.loads(body) if ctype_json else body)


class Dashboard:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def get(self, path: str) -> Any:
        status, body = _get(self.base, path)
        assert status == 200, f"GET {path}: HTTP {status}: {body!r:.500}\n{self.tail()}"
        return body

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # SIGTERM, not SIGINT: a process started from a backgrounded shell inherits SIGINT ignored.
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def running_dashboard(url: str, workdir: Path) -> Iterator[Dashboard]:
    """``optuna-dashboard URL`` on 127.0.0.1; always stopped (killed if need be) on exit."""
    exe = _dashboard_executable()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPTUNA_DASHBOARD_DEBUG", None)
    errors = []
    for _attempt in range(3):  # the probed port may be taken before the dashboard binds it
        port = free_port()
        log = workdir / f"dashboard-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=workdir)
        dash = Dashboard(proc, f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + DASHBOARD_READY_TIMEOUT
            ready = False
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(OSError):
                    if _get(dash.base, "/api/meta", timeout=2)[0] == 200:
                        ready = True
                        break
                time.sleep(0.1)  # back-off between polls
            if ready:
                yield dash
                return
            errors.append(f"port {port}: exit code {proc.poll()}\n{dash.tail()}")
        finally:
            _stop(proc)
    pytest.fail("optuna-dashboard did not come up:\n" + "\n".join(errors), pytrace=False)


# ------------------------------------------------------------------------------------ snapshots


def optuna_snapshot(store: Store) -> dict[str, Any]:
    """What lightnas (through Optuna) sees of the study."""
    study = optuna.load_study(study_name=NAME, storage=store.optuna)
    return {
        "directions": [d.name.lower() for d in study.directions],
        "user_attrs": study.user_attrs,
        "trials": [
            {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
             "user_attrs": t.user_attrs, "constraints": t.constraints}
            for t in study.get_trials(deepcopy=False)
        ],
    }


def database_snapshot(store: Store) -> dict[str, list[str]]:
    """Every row of every table (Optuna's and lightnas's), as sorted reprs."""
    out = {}
    with store.engine.connect() as conn:
        schema = inspect(conn)
        for name in sorted(schema.get_table_names()):
            cols = [column(c["name"]) for c in schema.get_columns(name)]
            out[name] = sorted(repr(tuple(r)) for r in conn.execute(select(table(name, *cols))).all())
    return out


def attr_value(v: Any) -> str:
    """How optuna-dashboard 0.x renders an attribute value (its ``serialize_attrs``)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return json.dumps(v)


# ---------------------------------------------------------------------------------------- test


@pytest.fixture
def store(fresh_postgres_url: str) -> Iterator[Store]:
    s = Store(fresh_postgres_url)
    yield s
    s.close()


def test_dashboard_shows_the_study_as_lightnas_stored_it_and_changes_nothing(store, tmp_path):
    spec = make_spec(name=NAME, space="plain", data="digits", budget="params<=12k", objectives=["accuracy", "hw_cost"],
                     trials=6, seed=2, space_options=TINY, device="cpu",
                     fidelity={"epochs": 1, "train_fraction": 0.2, "batch_size": 64})
    create_study(spec, store)
    run_study(NAME, store)

    before = optuna_snapshot(store)
    tables_before = database_snapshot(store)
    front_before = pareto_rows(NAME, store, with_test=False)
    trials = before["trials"]
    statuses = {t["user_attrs"].get("status") for t in trials}
    counted = [t for t in trials if t["user_attrs"].get("status") in ("trained", "reused")]
    assert len(counted) == 6  # the target counts networks within the budget
    assert "over_budget" in statuses and statuses & {"trained", "reused"}, statuses  # both kinds are shown
    assert any(name.startswith("lightnas_") for name in tables_before)

    with running_dashboard(store.url, tmp_path) as dash:
        summaries = dash.get("/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == [NAME]
        summary = summaries[0]
        assert summary["directions"] == ["maximize", "minimize"] == before["directions"]
        assert {a["key"]: a["value"] for a in summary["user_attrs"]} == {
            k: attr_value(v) for k, v in before["user_attrs"].items()}

        detail = dash.get(f"/api/studies/{summary['study_id']}")
        assert detail["name"] == NAME and detail["directions"] == before["directions"]
        shown = sorted(detail["trials"], key=lambda t: t["number"])
        assert [t["number"] for t in shown] == [t["number"] for t in trials]
        for got, want in zip(shown, trials, strict=True):
            where = f"trial {want['number']}"
            assert got["state"].upper() == want["state"], where
            if want["values"] is None:
                assert "values" not in got, where
            else:
                assert [float(v) for v in got["values"]] == want["values"], where
            attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
            assert attrs.keys() == want["user_attrs"].keys(), where
            for key, value in want["user_attrs"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    assert float(attrs[key]) == value, (where, key)  # str() of a float round-trips
                elif isinstance(value, (dict, list)) and len(attrs[key]) < 1024:  # longer ones are cut
                    assert json.loads(attrs[key]) == value, (where, key)
                else:
                    assert attrs[key] == attr_value(value)[:1024], (where, key)
            assert attrs["spec_hash"] == want["user_attrs"]["spec_hash"]
            assert attrs["status"] == want["user_attrs"]["status"]
            assert {p["name"]: p["param_external_value"] for p in got["params"]} == {
                k: str(v) for k, v in want["params"].items()}, where
            # Optuna 5 keeps constraints as one system attr per name ("constraints:params");
            # optuna-dashboard <= 0.21 reads only the list attr "constraints", which lightnas writes too.
            assert got["constraints"] == [want["constraints"]["params"]], where

        # The pages a user opens: the single-page app itself and the CSV export.
        assert b"<html" in dash.get(f"/dashboard/studies/{summary['study_id']}").lower()
        rows = list(csv.reader(io.StringIO(dash.get(f"/csv/{summary['study_id']}").decode())))
        assert [int(r[0]) for r in rows[1:]] == [t["number"] for t in trials]
        # Parameter importances on Optuna 5 (an easy place for a version mismatch to show).
        importances = dash.get(f"/api/studies/{summary['study_id']}/param_importances")["param_importances"]
        assert len(importances) == 2

    assert dash.proc.returncode is not None  # stopped
    assert "Traceback" not in dash.tail()
    assert optuna_snapshot(store) == before
    assert database_snapshot(store) == tables_before
    assert pareto_rows(NAME, store, with_test=False) == front_before
    assert front_before and all(r["params"] <= 12_000 for r in front_before)


# One stage deeper than TINY, so that some architectures exceed a FLOPs budget with fewer parameters
# than any within it. Enqueued in this order, they make the study deterministic (seconds to train):
# the first is rejected, the other three are the target.
SMALL = {"max_depth": 2, "widths": [8, 16], "kernels": [3], "hidden": [0, 32], "rank_ratios": [1.0, 0.5]}
_BASE = {"stem_width": 8, "head_hidden": 0,
         **{f"s{i}_{k}": v for i, w in enumerate((8, 16, 32)) for k, v in
            (("depth", 1), ("width", w), ("kernel", 3), ("rank", 0.5))}}
OVER = {**_BASE, "stem_width": 16, "s0_depth": 2}  # 5,082 params, 183k FLOPs: over flops<=150k, yet the fewest params
WITHIN = [{**_BASE, "head_hidden": 32, "head_rank": 1.0},  # 5,426 params, 98k FLOPs
          {**_BASE, "s2_rank": 1.0},  # 6,162 params, 110k FLOPs
          {**_BASE, "s2_width": 64}]  # 8,594 params, 127k FLOPs


def test_the_dashboards_pareto_front_is_nas_pareto_s(store, tmp_path, chromium):
    spec = make_spec(name="front", space="plain", data="digits", budget="flops<=150k",
                     objectives=["accuracy", "params"], trials=3, seed=0, space_options=SMALL, device="cpu",
                     fit_space=False, fidelity={"epochs": 1, "train_fraction": 0.2, "batch_size": 64})
    create_study(spec, store)
    study = optuna.load_study(study_name="front", storage=store.optuna)
    for params in (OVER, *WITHIN):
        study.enqueue_trial(params)
    run_study("front", store)
    trials = study.get_trials(deepcopy=False)
    status = {t.number: t.user_attrs["status"] for t in trials}
    assert [status[n] for n in sorted(status)] == ["over_budget", "trained", "trained", "trained"]
    hashes = {t.number: t.user_attrs["spec_hash"][:12] for t in trials}
    nas_front = {r["spec_hash"] for r in pareto_rows("front", store, with_test=False)}

    # Blind to feasibility, the over-budget sample is on the front (fewest parameters): what the dashboard drew.
    vectors = {t.number: [-t.values[0], t.values[1]] for t in trials}
    blind = {n for n, v in vectors.items() if not any(dominates(w, v) for m, w in vectors.items() if m != n)}
    assert 0 in blind and {hashes[n] for n in blind} != nas_front

    # Feasibility in both forms: Optuna 5's per-name attribute, and the list optuna-dashboard and older Optuna read.
    assert CONSTRAINTS_KEY == optuna.study._constrained_optimization._CONSTRAINTS_KEY
    for t in trials:
        assert t.system_attrs[CONSTRAINTS_KEY] == [t.system_attrs["constraints:flops"]]
        assert (t.system_attrs[CONSTRAINTS_KEY][0] <= 0) == (status[t.number] != "over_budget")
    feasible = optuna.study._constrained_optimization._get_feasible_trials(trials)
    assert {t.number for t in feasible} == {1, 2, 3}
    assert {hashes[t.number] for t in study.best_trials} == nas_front  # Optuna's own front agrees

    with running_dashboard(store.url, tmp_path) as dash:
        study_id = dash.get("/api/studies")["study_summaries"][0]["study_id"]
        shown = dash.get(f"/api/studies/{study_id}")["trials"]
        assert {t["number"]: all(c <= 0 for c in t["constraints"]) for t in shown} == {
            n: s != "over_budget" for n, s in status.items()}

        # The Pareto plot as the dashboard's own JavaScript draws it, in a real browser.
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        requests = record_requests(context)
        try:
            page = context.new_page()
            page.goto(f"{dash.base}/dashboard/studies/{study_id}")
            page.wait_for_function("() => { const g = document.getElementById('graph-pareto-front');"
                                   " return g && g.data && g.data.length > 0; }", timeout=30_000)
            traces = page.evaluate("""() => document.getElementById('graph-pareto-front').data.map(t => ({
                kind: /<extra>(.*)<\\/extra>/.exec(t.hovertemplate)[1],
                numbers: (t.text || []).map(s => JSON.parse(s.replace(/<br>/g, '')).number)}))""")
        finally:
            context.close()
        drawn = {t["kind"]: t["numbers"] for t in traces}
        assert {hashes[n] for n in drawn["Best Trial"]} == nas_front, drawn
        assert drawn["Infeasible Trial"] == [0], drawn
        assert all(r.url.startswith(dash.base) for r in requests)
