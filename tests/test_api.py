"""The HTTP API as a client sees it: the real app (TestClient) on SQLite and PostgreSQL, real
workers running what it queues, a real ``nas serve`` process, and schemathesis over its own schema."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import wait_for_server
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from lightnas_pg import free_port
from sqlalchemy import create_engine, inspect, text

from nas.cli import main
from nas.serve import ApiSettings, create_app
from nas.workers import run_job, run_worker
from search_spaces import ArchSpec, build_model
from storage import Store

WRITE = "w-" + "a" * 30
READ = "r-" + "b" * 30
AUTH = {"Authorization": f"Bearer {WRITE}"}
RAUTH = {"Authorization": f"Bearer {READ}"}
SPACE = {"max_depth": 2, "widths": [8, 16], "hidden": [0, 32]}
STUDY = {"name": "s1", "space": "plain", "budget": "params<=20k flops<=1.5M", "space_options": SPACE,
         "trials": 6, "seed": 0, "device": "cpu", "fidelity": {"epochs": 2}}
QUICK_REFINE = {"reuse_weights": True, "finetune_epochs": 1, "iterations": 1}


def client(url: str, **settings) -> TestClient:
    return TestClient(create_app(ApiSettings(storage=url, **{"tokens": (WRITE,), "read_tokens": (READ,),
                                                            **settings})))


def dump(url: str) -> dict[str, list]:
    """Every row of every table (Optuna's and lightnas's), to show that a request changed nothing."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{t}"')).all()))
                    for t in sorted(inspect(engine).get_table_names())}
    finally:
        engine.dispose()


def work(url: str, name: str = "s1") -> None:
    """A real worker (the loop of ``nas worker``) until the study's target and job queue are done."""
    run_worker([name], url, until_done=True, threads=1, jobs=True, poll_min=0.05, poll_max=0.2)


# --------------------------------------------------------------------------------- the full flow


def test_the_service_flow_create_run_query_export_refine(storage_url):
    with client(storage_url) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.post("/studies", json={**STUDY, "target": 0}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert (r.json()["target"], r.json()["finished"]) == (0, 0)
        work(storage_url)  # target 0: nothing to do, the worker returns at once
        assert c.get("/studies/s1").json()["counts"] == {}

        # Raising the target is how a search starts; the API only writes it.
        r = c.patch("/studies/s1", json={"target": 6}, headers=AUTH)
        assert r.status_code == 200 and r.json()["target"] == 6
        work(storage_url)
        info = c.get("/studies/s1").json()
        # The target counts networks within the budget; over-budget samples are complete trials too.
        assert info["finished"] == 6 and info["counts"] == {"complete": 6 + info["rejected"]}
        assert info["pareto_size"] >= 1 and info["feasibility"]["share_within_budget"] > 0
        assert c.get("/studies").json()["studies"][0]["name"] == "s1"

        front = c.get("/studies/s1/pareto").json()["rows"]
        assert front and all(r["params"] <= 20_000 and r["flops"] <= 1.5e6 for r in front)
        smallest = min(r["flops"] for r in front)
        narrowed = c.get("/studies/s1/pareto", params={"where": f"flops<={smallest}"}).json()["rows"]
        assert [r["flops"] for r in narrowed] == [smallest]

        # Pagination visits every trial exactly once, in order.
        seen, cursor = [], None
        while True:
            page = c.get("/studies/s1/trials", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
            seen += [t["number"] for t in page["trials"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(range(6 + info["rejected"]))
        assert [t["number"] for t in c.get("/studies/s1/trials", params={"state": "fail"}).json()["trials"]] == []

        n = max(front, key=lambda r: r["accuracy"])["trial"]
        detail = c.get(f"/studies/s1/trials/{n}").json()
        assert detail["spec"]["family"] == "plain" and detail["status"] == "trained"
        assert detail["cost_report"]["totals"]["flops"] == pytest.approx(detail["cost"]["flops"])
        assert detail["metrics"]["val_accuracy"] == pytest.approx(detail["accuracy"]) and detail["metrics"]["curve"]

        # Exports: the ONNX file computes what the state_dict computes.
        onnx = c.get(f"/studies/s1/trials/{n}/export", params={"format": "onnx"})
        assert onnx.status_code == 200 and onnx.headers["content-disposition"].endswith('.onnx"')
        weights = c.get(f"/studies/s1/trials/{n}/export", params={"format": "state_dict"})
        spec_doc = c.get(f"/studies/s1/trials/{n}/export", params={"format": "json"}).json()
        model = build_model(ArchSpec.from_dict(spec_doc["spec"]), (1, 8, 8), 10).eval()
        model.load_state_dict(torch.load(io.BytesIO(weights.content), weights_only=True))
        x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
        sess = ort.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)

        # Refinement is queued, not run: the request returns before any training.
        r = c.post(f"/studies/s1/trials/{n}/refine", json=QUICK_REFINE, headers=AUTH)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["state"] == "queued" and job["candidates"] == []
        assert r.headers["location"] == f"/studies/s1/jobs/{job['id']}"
        again = c.post(f"/studies/s1/trials/{n}/refine", json=QUICK_REFINE, headers=AUTH)
        assert again.status_code == 200 and again.json()["id"] == job["id"]  # the same work is not queued twice
        work(storage_url)
        done = c.get(f"/studies/s1/jobs/{job['id']}").json()
        assert done["state"] == "done" and done["attempts"] == 1 and done["error"] is None, done
        methods = [cand["method"] for cand in done["candidates"]]
        assert methods[0] == "baseline" and "prune" in methods
        assert c.get("/studies/s1").json()["jobs"] == {"done": 1}
        assert c.get(f"/studies/s1/trials/{n}").json()["lineage"]["jobs"] == [job["id"]]
        with_refined = c.get("/studies/s1/pareto", params={"include_refined": "true"}).json()["rows"]
        assert {r["source"].split()[0] for r in with_refined} <= {"trial", "refined"}
        last = done["candidates"][-1]["refined"]
        refined_onnx = c.get(f"/studies/s1/refined/{last}/export", params={"format": "onnx"})
        assert refined_onnx.status_code == 200 and len(refined_onnx.content) > 100

        assert c.delete("/studies/s1", headers=AUTH).status_code == 204
        assert c.get("/studies/s1").status_code == 404
        assert c.get("/studies").json()["studies"] == []


# --------------------------------------------------------------------------------- bad requests


@pytest.fixture
def trained(storage_url):
    """A database with study s1 run to its 6 trials (the plain space: fast)."""
    with client(storage_url) as c:
        assert c.post("/studies", json=STUDY, headers=AUTH).status_code == 201
    work(storage_url)
    return storage_url


BAD_BODIES = [
    ({**STUDY, "name": "s2", "space": "nope"}, "space", "accepted: mobilenetv2, plain, resnet"),
    ({**STUDY, "name": "s2", "sampler": "grid"}, "sampler", "accepted: auto, tpe, nsga2, gp, random"),
    ({**STUDY, "name": "s2", "objectives": ["accuracy", "speed"]}, "objectives", "accepted: accuracy, hw_cost"),
    ({**STUDY, "name": "s2", "budget": "flops<=lots"}, "budget", "write e.g. 5M"),
    ({**STUDY, "name": "s2", "budget": "colour<=3"}, "budget", "flops"),
    ({**STUDY, "name": "s2", "trials": 0}, "trials", "greater than or equal to 1"),
    ({**STUDY, "name": "no spaces"}, "name", "use letters, digits"),
    ({**STUDY, "name": "s2", "colour": "red"}, "colour", "/docs"),
    ({**STUDY, "name": "s2", "data": "npz:/etc/passwd"}, "data", "only 'digits'"),
    ({**STUDY, "name": "s2", "cost_device": "toaster"}, "cost_device", "rpi4"),
    ({**STUDY, "name": "s2", "pruner": "median"}, None, "pruner"),
]


def test_bad_requests_get_one_line_json_errors_and_change_nothing(trained):
    with client(trained) as c:
        n = c.get("/studies/s1/pareto").json()["rows"][0]["trial"]
        over = [t["number"] for t in c.get("/studies/s1/trials").json()["trials"] if t["status"] == "over_budget"]
        before = dump(trained)
        cases = []
        for body, field, hint in BAD_BODIES:
            cases.append((c.post("/studies", json=body, headers=AUTH), 422, field, hint))
        cases += [
            (c.post("/studies", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}), 422,
             "body", "JSON"),
            (c.post("/studies", json=STUDY, headers=AUTH), 409, "name", "already exists"),
            (c.patch("/studies/s1", json={"target": 2}, headers=AUTH), 409, "target",
             "6 networks evaluated within its budget"),
            (c.patch("/studies/s1", json={"target": -1}, headers=AUTH), 422, "target", "greater than"),
            (c.patch("/studies/s1", json={"trials": 9}, headers=AUTH), 422, "target", "field required"),
            (c.patch("/studies/nope", json={"target": 9}, headers=AUTH), 404, None, "unknown study 'nope'"),
            (c.delete("/studies/nope", headers=AUTH), 404, None, "unknown study"),
            (c.get("/studies/nope"), 404, None, "GET /studies lists them"),
            (c.get("/studies/nope/pareto"), 404, None, "unknown study"),
            (c.get("/studies/s1/pareto", params={"where": "flops<<3"}), 422, "where", ""),
            (c.get("/studies/s1/pareto", params={"where": "colour<=3"}), 422, "where", "flops"),
            (c.get("/studies/s1/trials", params={"state": "sleeping"}), 422, "state", "complete"),
            (c.get("/studies/s1/trials", params={"limit": 0}), 422, "limit", ""),
            (c.get("/studies/s1/trials", params={"cursor": "abc"}), 422, "cursor", "next_cursor"),
            (c.get("/studies/s1/trials/99"), 404, None, f"numbered 0..{5 + len(over)}"),
            (c.get("/studies/s1/trials/-1"), 422, "number", ""),
            (c.get("/studies/s1/trials/99/export"), 404, None, "no trial 99"),
            (c.get(f"/studies/s1/trials/{n}/export", params={"format": "pdf"}), 422, "format", "onnx"),
            (c.post("/studies/s1/trials/99/refine", json={}, headers=AUTH), 404, None, "no trial 99"),
            (c.post(f"/studies/s1/trials/{n}/refine", json={"margin": 2}, headers=AUTH), 422, "margin", "less than"),
            (c.post(f"/studies/s1/trials/{n}/refine", json={"low_rank": "params<=x"}, headers=AUTH), 422,
             "low_rank", "number"),
            (c.get("/studies/s1/jobs/7"), 404, None, "no job 7"),
            (c.get("/studies/s1/refined/7/export"), 404, None, ""),
            (c.get("/no/such/route"), 404, None, "Not Found"),
            (c.put("/studies/s1", json={}, headers=AUTH), 405, None, "method PUT is not allowed"),
        ]
        if over:  # an architecture rejected before training has no weights to export or refine
            cases += [(c.get(f"/studies/s1/trials/{over[0]}/export"), 409, None, "no trained weights"),
                      (c.post(f"/studies/s1/trials/{over[0]}/refine", json={}, headers=AUTH), 409, None, "budget")]
        for r, status, field, hint in cases:
            assert r.status_code == status, (r.request.method, r.request.url, r.text)
            body = r.json()
            assert set(body) == {"message", "field"} and "\n" not in body["message"], body
            assert "Traceback" not in r.text
            assert hint.lower() in body["message"].lower(), (r.request.url, body)
            if field is not None:
                assert body["field"] == field, (r.request.url, body)
        assert over, "the study should have rejected an architecture over its budget"
    assert dump(trained) == before


def test_export_formats_and_study_precision_are_checked_before_any_work(sqlite_url):
    from nas import EXPORT_FORMATS as FORMATS

    with client(sqlite_url) as c:
        schema = c.get("/openapi.json").json()["paths"]
        for path in ("/studies/{name}/trials/{number}/export", "/studies/{name}/refined/{refined}/export"):
            params = {p["name"]: p["schema"] for p in schema[path]["get"]["parameters"]}
            assert sorted(params["format"]["enum"]) == sorted(FORMATS)  # what `nas export --formats` knows
        for path in ("/studies/nope/trials/0/export", "/studies/nope/refined/0/export"):
            for params, field, hint in [({"format": "bogus"}, "format", "'tflite'"),
                                        ({"format": "tflite", "calibration": 0}, "calibration", "greater than"),
                                        ({"format": "tflite", "calibration": 100_001}, "calibration", "less than")]:
                r = c.get(path, params=params)
                assert r.status_code == 422, r.text
                body = r.json()
                assert body["field"] == field and hint in body["message"] and "\n" not in body["message"], body
                if field == "format":
                    assert all(f"'{f}'" in body["message"] for f in FORMATS), body

        bad = c.post("/studies", json={**STUDY, "precision": "int4"}, headers=AUTH)
        assert bad.status_code == 422 and bad.json()["field"] == "precision", bad.text
        assert "'int8'" in bad.json()["message"] and "\n" not in bad.json()["message"]
        fp32_cal = c.post("/studies", json={**STUDY, "calibration": 64}, headers=AUTH)
        assert fp32_cal.status_code == 422 and "precision int8" in fp32_cal.json()["message"], fp32_cal.text
        assert c.get("/studies").json()["studies"] == []
        r = c.post("/studies", json={**STUDY, "precision": "int8", "calibration": 64, "target": 0}, headers=AUTH)
        assert r.status_code == 201, r.text
        spec = c.get("/studies/s1").json()["spec"]
        assert (spec["precision"], spec["calibration"]) == ("int8", 64)


INT8_STUDY = {**STUDY, "name": "q1", "precision": "int8", "calibration": 64, "cost_device": "cortex-m7",
              "budget": "params<=20k flops<=1.5M ram_bytes<=64KiB", "trials": 3, "fidelity": {"epochs": 1}}


@pytest.mark.slow
def test_int8_exports_come_with_what_was_measured(sqlite_url, monkeypatch):
    with client(sqlite_url) as c:
        r = c.post("/studies", json=INT8_STUDY, headers=AUTH)
        assert r.status_code == 201, r.text
    work(sqlite_url, "q1")
    with client(sqlite_url) as c:
        rows = c.get("/studies/q1/pareto").json()["rows"]
        assert rows and all(r["int8_drop"] == pytest.approx(r["fp32_accuracy"] - r["accuracy"]) for r in rows)
        assert all(r["ram_bytes"] > 0 and r["flash_bytes"] > 0 for r in rows)  # cortex-m7: a TFLM runtime
        n = rows[0]["trial"]
        metrics = c.get(f"/studies/q1/trials/{n}").json()["metrics"]
        assert metrics["fp32_accuracy"] == pytest.approx(rows[0]["fp32_accuracy"])
        url = f"/studies/q1/trials/{n}/export"

        tfl = c.get(url, params={"format": "tflite", "calibration": 32})
        assert tfl.status_code == 200, tfl.text
        assert tfl.headers["content-type"] == "application/octet-stream"
        assert tfl.headers["content-disposition"] == f'attachment; filename="q1-trial{n}.tflite"'
        assert tfl.content[4:8] == b"TFL3"  # a TFLite flatbuffer
        deploy = json.loads(tfl.headers["x-lightnas-deploy"])
        measured = deploy["tflite"]
        assert deploy["calibration"] == 32 and deploy["over_budget"] == []
        assert measured["ram_bytes"] > 0 and measured["flash_bytes"] == len(tfl.content)
        assert measured["ram_bytes_limit"] == 64 * 1024 and measured["ram_predicted"] > 0
        assert 0 <= measured["litert"]["accuracy"] <= 1 and measured["tflm"]["images"] > 0
        # Served from memory with its figures; another calibration is another file, not the cached one.
        again = c.get(url, params={"format": "tflite", "calibration": 32})
        assert again.content == tfl.content and again.headers["x-lightnas-deploy"] == tfl.headers["x-lightnas-deploy"]
        other = c.get(url, params={"format": "tflite", "calibration": 8})
        assert other.status_code == 200 and json.loads(other.headers["x-lightnas-deploy"])["calibration"] == 8

        q = c.get(url, params={"format": "onnx-int8"})
        assert q.status_code == 200, q.text
        assert q.headers["content-disposition"] == f'attachment; filename="q1-trial{n}_int8.onnx"'
        assert json.loads(q.headers["x-lightnas-deploy"])["onnx-int8"]["onnxruntime"]["images"] > 0
        sess = ort.InferenceSession(q.content, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
        assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 10)
        assert "x-lightnas-deploy" not in c.get(url, params={"format": "json"}).headers

        # Requests the export refuses: one line, on the query field, nothing cached.
        cases = [(c.get(url, params={"format": "tflite", "calibration": 100_000}), "calibration", "accepted: 1.."),
                 (c.get(url, params={"format": "onnx", "calibration": 8}), "calibration", "int8 formats")]
        monkeypatch.setattr("objectives._int8.DEPLOY_MODULES", {"lightnas_no_such_module": "the extra's stand-in"})
        cases.append((c.get(url, params={"format": "onnx-int8", "calibration": 16}), "format", "lightnas[deploy]"))
        for r, field, hint in cases:
            assert r.status_code == 422, r.text
            body = r.json()
            assert body["field"] == field and hint in body["message"] and "\n" not in body["message"], body
        monkeypatch.undo()

        # A refined candidate's int8 files, the same way.
        job = c.post(f"/studies/q1/trials/{n}/refine", json=QUICK_REFINE, headers=AUTH).json()
        work(sqlite_url, "q1")
        last = c.get(f"/studies/q1/jobs/{job['id']}").json()["candidates"][-1]["refined"]
        rq = c.get(f"/studies/q1/refined/{last}/export", params={"format": "onnx-int8"})
        assert rq.status_code == 200, rq.text
        assert rq.headers["content-disposition"] == f'attachment; filename="q1-refined{last}_int8.onnx"'
        assert json.loads(rq.headers["x-lightnas-deploy"])["onnx-int8"]["bytes"] == len(rq.content)
        assert c.get("/studies/q1/refined/999/export", params={"format": "tflite"}).status_code == 404


def test_who_may_do_what(sqlite_url, caplog):
    caplog.set_level(logging.DEBUG)
    with client(sqlite_url) as c:
        assert c.post("/studies", json={**STUDY, "name": "s0"}, headers=AUTH).status_code == 201
        before = dump(sqlite_url)
        for method, path, body in [("post", "/studies", STUDY), ("patch", "/studies/s1", {"trials": 9}),
                                   ("delete", "/studies/s1", None), ("post", "/studies/s1/trials/0/refine", {})]:
            kw = {"json": body} if body is not None else {}
            no_token = c.request(method, path, **kw)
            assert no_token.status_code == 401 and no_token.headers["www-authenticate"].startswith("Bearer")
            wrong = c.request(method, path, headers={"Authorization": "Bearer " + "x" * 32}, **kw)
            assert wrong.status_code == 401 and wrong.json()["message"] == "unknown bearer token"
            read_only = c.request(method, path, headers=RAUTH, **kw)
            assert read_only.status_code == 403 and "only read" in read_only.json()["message"]
        assert dump(sqlite_url) == before
        assert c.get("/studies").status_code == 200  # reads are open by default
        assert c.post("/studies", json=STUDY, headers=AUTH).status_code == 201
    assert WRITE not in caplog.text and READ not in caplog.text  # tokens are never logged

    with client(sqlite_url, protect_reads=True) as c:
        assert c.get("/studies").status_code == 401
        assert c.get("/studies", headers=RAUTH).status_code == 200
        assert c.get("/studies/s1", headers=AUTH).status_code == 200
        assert c.get("/health").status_code == 200  # probes need no token
    with client(sqlite_url, tokens=(), read_tokens=(), read_only=True) as c:
        r = c.patch("/studies/s1", json={"target": 9}, headers=AUTH)
        assert r.status_code == 403 and "read-only" in r.json()["message"]
        assert c.get("/studies/s1").json()["target"] == 6
    with client(sqlite_url, tokens=(), read_tokens=(), insecure=True) as c:
        assert c.patch("/studies/s1", json={"target": 9}).json()["target"] == 9


def test_a_large_body_is_refused_before_it_is_read(sqlite_url):
    with client(sqlite_url, max_body_bytes=4096) as c:
        big = {**STUDY, "space_options": {**SPACE, "padding": "x" * 8000}}
        r = c.post("/studies", json=big, headers=AUTH)
        assert r.status_code == 413 and r.json()["message"] == "request body too large: at most 4096 bytes"

        def chunks():  # no Content-Length: the limit applies as the body streams in
            text = json.dumps(big).encode()
            for i in range(0, len(text), 1000):
                yield text[i:i + 1000]

        r = c.post("/studies", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 413 and "at most 4096 bytes" in r.json()["message"]
        assert c.get("/studies").json()["studies"] == []


def test_a_bug_is_a_500_with_a_reference_and_no_traceback(sqlite_url, caplog):
    app = create_app(ApiSettings(storage=sqlite_url, tokens=(WRITE,)))

    def broken() -> None:
        raise ZeroDivisionError("the bug")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/broken")
    assert r.status_code == 500 and set(r.json()) == {"message", "field"}
    assert "the bug" not in r.text and "Traceback" not in r.text
    ref = r.json()["message"].split("reference ")[1].split()[0]
    assert ref in caplog.text and "ZeroDivisionError" in caplog.text  # the traceback is in the server log


@pytest.mark.parametrize("env, flags, message", [
    ({}, [], "no write token: set NAS_API_TOKEN"),
    ({"NAS_API_TOKEN": "short"}, [], "at least 16 characters"),
    ({"NAS_API_TOKEN": WRITE}, ["--insecure"], "--insecure is for a server without tokens"),
    ({"NAS_API_TOKEN": WRITE, "NAS_API_READ_TOKEN": WRITE}, [], "both a write and a read-only token"),
    ({"NAS_API_READ_TOKEN": READ}, ["--protect-reads"], "no write token"),
    ({"NAS_API_TOKEN": WRITE}, ["--port", "0"], "--port: must be 1..65535"),
    ({"NAS_API_TOKEN": WRITE}, ["--data-root", "/no/such/dir"], "--data-root: /no/such/dir is not a directory"),
    ({"NAS_API_TOKEN": WRITE}, ["--storage", "mysql://x"], "storage"),
])
def test_nas_serve_refuses_unsafe_or_bad_setups(monkeypatch, capsys, sqlite_url, env, flags, message):
    for k in ("NAS_API_TOKEN", "NAS_API_READ_TOKEN", "NAS_API_PROTECT_READS", "NAS_API_DATA_ROOT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--storage", sqlite_url, *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert WRITE not in err


def test_files_are_read_only_under_a_data_root(tmp_path, sqlite_url):
    root = tmp_path / "data"
    root.mkdir()
    x = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    np.savez(root / "d.npz", x_train=x, y_train=np.arange(40) % 4)
    with client(sqlite_url, data_roots=(root,)) as c:
        (tmp_path / "secret.npz").write_bytes((root / "d.npz").read_bytes())
        (root / "link.npz").symlink_to(tmp_path / "secret.npz")
        (root / "loop_a").symlink_to(root / "loop_b")
        (root / "loop_b").symlink_to(root / "loop_a")
        for source, needle in [(f"npz:{root}/../secret.npz", "not under a data root"),
                               (f"npz:{root}/loop_a", "loop of symbolic links"),  # was a 500
                               (f"idx:{root}/loop_b/x", "loop of symbolic links"),
                               (f"npz:{root}/link.npz", "not under a data root"),  # a symlink out of the root
                               ("npz:~/secret.npz", "not an absolute path"),
                               ("npz:data/d.npz", "not an absolute path")]:
            r = c.post("/studies", json={**STUDY, "data": source}, headers=AUTH)
            assert r.status_code == 422 and needle in r.json()["message"], (source, r.text)
        inside = c.post("/studies", json={**STUDY, "data": f"npz:{root}/./d.npz"}, headers=AUTH)
        assert inside.status_code == 201, inside.text
        assert inside.json()["spec"]["data"] == f"npz:{root.resolve()}/d.npz"  # stored resolved

        # The files vanish (an unmounted volume): the shape stored at creation still serves an
        # export; a study created before shapes were stored needs its files, and says so with 409.
        work(sqlite_url)
        n = c.get("/studies/s1/pareto").json()["rows"][0]["trial"]
        (root / "d.npz").unlink()
        r = c.get(f"/studies/s1/trials/{n}/export", params={"format": "state_dict"})
        assert r.status_code == 200 and r.content, r.text
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        info = json.loads(conn.execute(text("SELECT info_json FROM lightnas_studies")).scalar_one())
        conn.execute(text("UPDATE lightnas_studies SET info_json = :i"), {"i": json.dumps(
            {k: v for k, v in info.items() if k != "data"})})
    engine.dispose()
    with client(sqlite_url, data_roots=(root,)) as c:
        r = c.get(f"/studies/s1/trials/{n}/export", params={"format": "onnx"})
        assert r.status_code == 409 and r.json()["field"] == "data", r.text


def test_reads_never_write_and_delete_takes_the_jobs_along(trained):
    with client(trained) as c:
        n = c.get("/studies/s1/pareto").json()["rows"][0]["trial"]
        before = dump(trained)
        for path, params in [("/studies", {}), ("/studies/s1", {}), ("/studies/s1/pareto", {}),
                             ("/studies/s1/pareto", {"include_refined": "true", "where": "flops<=1M"}),
                             ("/studies/s1/trials", {"limit": 2}), (f"/studies/s1/trials/{n}", {}),
                             (f"/studies/s1/trials/{n}/export", {"format": "onnx"}),
                             (f"/studies/s1/trials/{n}/export", {"format": "json"}), ("/spaces", {}),
                             ("/devices", {}), ("/health", {}), ("/studies/s1/jobs", {})]:
            assert c.get(path, params=params).status_code == 200, path
        assert dump(trained) == before  # no test accuracy measured, nothing cached in the database
        assert all(r["test_accuracy"] is None for r in c.get("/studies/s1/pareto").json()["rows"])
        # A second export is served from memory, byte for byte the same.
        first = c.get(f"/studies/s1/trials/{n}/export", params={"format": "onnx"}).content
        assert c.get(f"/studies/s1/trials/{n}/export", params={"format": "onnx"}).content == first

        job = c.post(f"/studies/s1/trials/{n}/refine", json=QUICK_REFINE, headers=AUTH).json()
        assert c.delete("/studies/s1", headers=AUTH).status_code == 204
        assert c.post("/studies", json=STUDY, headers=AUTH).status_code == 201  # the name again
        assert c.get("/studies/s1").json()["jobs"] == {}
        assert c.get(f"/studies/s1/jobs/{job['id']}").status_code == 404


# --------------------------------------------------------------------------------- jobs and workers


def test_a_job_of_a_dead_worker_is_taken_over_and_an_interrupted_one_requeued(storage_url):
    with client(storage_url) as c:
        assert c.post("/studies", json=STUDY, headers=AUTH).status_code == 201
        work(storage_url)
        n = c.get("/studies/s1/pareto").json()["rows"][0]["trial"]
        job_id = c.post(f"/studies/s1/trials/{n}/refine", json=QUICK_REFINE, headers=AUTH).json()["id"]
    store = Store(storage_url)
    try:
        first = store.claim_job("dead-worker", ["s1"], heartbeat=10)
        assert first is not None and first.id == job_id and first.attempts == 1
        assert store.claim_job("other", ["s1"], heartbeat=1) is None  # it is running, and alive
        with store.session() as s:  # the dead worker's last heartbeat, 400 days ago
            s.execute(text("UPDATE lightnas_jobs SET heartbeat_at = :t WHERE id = :i"),
                      {"t": first.heartbeat_at - timedelta(days=400), "i": job_id})
        assert store.claim_job("other", ["s1"], sweep=False) is None  # just after an outage: no sweep
        second = store.claim_job("other", ["s1"], heartbeat=10)
        assert second is not None and second.id == job_id and second.attempts == 2 and second.worker == "other"
        assert not store.finish_job(job_id, "dead-worker", "done")  # a zombie cannot finish it any more

        # A worker asked to stop puts the job back without counting the attempt.
        import threading

        stop = threading.Event()
        stop.set()
        assert run_job(second, store, worker="other", stop=stop, threads=1, heartbeat=1) == "queued"
        back = store.get_job(job_id)
        assert (back.state, back.attempts, back.worker) == ("queued", 1, None)
        assert "worker stopping" in back.error

        work(storage_url)
        done = store.get_job(job_id)
        assert done.state == "done" and done.error is None
    finally:
        store.close()


def test_nas_refine_queue_and_nas_worker_run_the_job(sqlite_url, capsys):
    with client(sqlite_url) as c:
        assert c.post("/studies", json=STUDY, headers=AUTH).status_code == 201
    work(sqlite_url)
    with client(sqlite_url) as c:
        n = c.get("/studies/s1/pareto").json()["rows"][0]["trial"]
    with pytest.raises(SystemExit) as e:
        main(["refine", "s1", "--trial", str(n), "--reuse-weights", "--finetune-epochs", "1", "--iterations", "1",
              "--queue", "--format", "json", "--storage", sqlite_url])
    assert e.value.code in (0, None)
    jobs = json.loads(capsys.readouterr().out)
    assert [(j["trial"], j["state"], j["created"]) for j in jobs] == [(n, "queued", True)]
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "worker", "s1", "--until-done", "--threads", "1",
                           "--storage", sqlite_url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "and 1 jobs (done 1)" in proc.stderr
    with client(sqlite_url) as c:
        assert c.get(f"/studies/s1/jobs/{jobs[0]['id']}").json()["state"] == "done"


# --------------------------------------------------------------------------------- a real server



def test_nas_serve_runs_a_real_server(tmp_path):
    import httpx

    port = free_port()
    env = {**os.environ, "NAS_API_TOKEN": f"{WRITE},{'c' * 20}"}
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--storage",
                             f"sqlite:///{tmp_path}/nas.db"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, base)
        r = httpx.post(f"{base}/studies", json=STUDY, headers={"Authorization": f"Bearer {'c' * 20}"}, timeout=30)
        assert r.status_code == 201, r.text
        assert httpx.post(f"{base}/studies", json=STUDY, timeout=30).status_code == 401
        assert httpx.get(f"{base}/studies/s1", timeout=30).json()["target"] == 6
        assert httpx.get(f"{base}/openapi.json", timeout=30).json()["info"]["title"] == "lightnas"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so that the exit status tells why it ended.
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in err, err
    assert "2 write token(s)" in err
    assert '"POST /studies HTTP/1.1" 201' in out + err  # the access log
    assert WRITE not in out + err and "c" * 20 not in out + err  # tokens never reach the log


# --------------------------------------------------------------------------------- schemathesis

@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_makes_the_server_fail(tmp_path, mode):
    """schemathesis over the app's own OpenAPI schema: every operation, fuzzed with valid
    (positive) and invalid (negative) input, with and without the write token, on a database with
    a trained study. Never a 5xx; every response matches the documented schema."""
    import schemathesis
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi import checks

    CHECKS = [not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,  # noqa: N806
              checks.response_schema_conformance]

    url = f"sqlite:///{tmp_path}/nas.db"
    with client(url) as c:
        assert c.post("/studies", json={**STUDY, "trials": 3}, headers=AUTH).status_code == 201
    work(url)
    app = create_app(ApiSettings(storage=url, tokens=(WRITE,), read_tokens=(READ,)))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    statuses: dict[str, set[int]] = {}

    def fuzzer(operation):  # one Hypothesis test per operation (a closure: @given takes no defaults)
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=int(os.environ.get("NAS_FUZZ_EXAMPLES", "25")), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            for headers in (AUTH, {}):
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.method, case.formatted_path, response.text)
                statuses.setdefault(operation.label, set()).add(response.status_code)
                if mode == "positive":
                    case.validate_response(response, headers=headers, checks=CHECKS)

        return fuzz

    for operation in operations:
        raw = operation.definition.raw
        if mode == "negative" and not (raw.get("parameters") or raw.get("requestBody")):
            continue  # nothing to get wrong (GET /health, /spaces, ...)
        fuzzer(operation)()
    fuzzed = {op.label for op in operations if mode == "positive" or op.definition.raw.get("parameters")
              or op.definition.raw.get("requestBody")}
    assert set(statuses) == fuzzed and len(fuzzed) >= 12
