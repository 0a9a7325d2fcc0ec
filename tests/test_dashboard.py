"""optuna-dashboard reads a lightnas study on PostgreSQL exactly as lightnas stored it, and leaves it alone.

The README and docker-compose.yml promise that optuna-dashboard, pointed at the same database
as the workers, shows lightnas's studies. This runs a small real study on a fresh PostgreSQL
database with lightnas's own API, starts the ``optuna-dashboard`` console script of this
environment on a free port, and compares its HTTP API (the JSON its web page renders) with what
lightnas sees. Afterwards every table of the database must be byte-for-byte what it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
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
from sqlalchemy import column, inspect, select, table

from nas.search import create_study, make_spec, pareto_rows
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        port = _free_port()
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
            # optuna-dashboard <= 0.21 reads only the old list attr "constraints" and shows [].
            assert got["constraints"] in ([], list(want["constraints"].values())), where

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
