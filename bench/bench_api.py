"""Latency of the HTTP API (issue 6): a real ``nas serve`` process, a real client, SQLite and PostgreSQL.

``python bench/bench_api.py [--trials 60] [--requests 60]``

For each backend: the digits demo study is searched (``--trials``, so the answers have real
content), then ``nas serve`` is started on it and every read endpoint is called ``--requests``
times in a row (one client, keep-alive), and the writes (create a study, raise a target, queue
a refinement) a few times. Reported: median and 95th-percentile latency per endpoint, and the
ratio of ``GET /pareto`` to calling ``nas.search.pareto_rows`` directly in one process (what
the HTTP layer, validation and JSON cost on top of the query), and reading a page of 50 trials
in process one ``get_trial`` at a time against one batched read (what the trials page does).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "NAS_HOME" not in os.environ:
    os.environ["NAS_HOME"] = tempfile.mkdtemp(prefix="lightnas-bench-home-")
    atexit.register(shutil.rmtree, os.environ["NAS_HOME"], True)

import httpx  # noqa: E402
from _util import machine_header, table  # noqa: E402
from bench_search import demo_variant, new_study, postgres_server  # noqa: E402

TOKEN = "bench-" + "x" * 26


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]


def run_backend(label: str, url: str, args) -> tuple[list[list], dict]:
    from nas.search import pareto_rows
    from nas.workers import work
    from storage import Store

    new_study(url, demo_variant("demo", trials=args.trials))
    work("demo", url, threads=2)
    store = Store(url)
    direct = _timed(lambda: pareto_rows("demo", store, with_test=False), args.requests)
    front = pareto_rows("demo", store, with_test=False)
    ids = store.trial_page("demo", limit=50)  # what GET .../trials?limit=50 reads, in process
    one_by_one = _timed(lambda: [store.optuna.get_trial(i) for i in ids], args.requests)
    batched = _timed(lambda: store.trials_by_id("demo", ids), args.requests)
    store.close()
    if not front:
        raise SystemExit(f"bench_api: no trial of {args.trials} fits the budget, so there is no front to ask for; "
                         "raise --trials")
    n = front[0]["trial"]

    port = _port()
    env = {**os.environ, "NAS_API_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--storage", url,
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
                if time.monotonic() > deadline:
                    raise RuntimeError("nas serve did not start")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            reads = [("GET /health", lambda: c.get("/health")),
                     ("GET /studies", lambda: c.get("/studies")),
                     ("GET /studies/{name}", lambda: c.get("/studies/demo")),
                     ("GET .../pareto", lambda: c.get("/studies/demo/pareto")),
                     ("GET .../pareto?where=", lambda: c.get("/studies/demo/pareto",
                                                             params={"where": "flops<=1M accuracy>=0.9"})),
                     ("GET .../trials?limit=50", lambda: c.get("/studies/demo/trials", params={"limit": 50})),
                     ("GET .../trials/{n}", lambda: c.get(f"/studies/demo/trials/{n}")),
                     ("GET .../export?format=json", lambda: c.get(f"/studies/demo/trials/{n}/export",
                                                                  params={"format": "json"})),
                     ("GET .../export?format=onnx", lambda: c.get(f"/studies/demo/trials/{n}/export",
                                                                  params={"format": "onnx"}))]
            pareto_ms: list[float] = []
            for name, fn in reads:
                assert fn().status_code == 200, name
                ms = _timed(fn, args.requests)
                if name == "GET .../pareto":
                    pareto_ms = ms
                rows.append([label, name, len(ms), statistics.median(ms), p95(ms)])
            k = iter(range(10_000))
            body = {"space": "plain", "budget": "params<=20k", "trials": 5, "target": 0}
            writes = [("POST /studies", lambda: c.post("/studies", json={**body, "name": f"w{next(k)}"},
                                                        headers=auth), 201),
                      ("PATCH /studies/{name}", lambda: c.patch("/studies/w0", json={"target": 0}, headers=auth),
                       200),
                      ("POST .../refine (queue)", lambda: c.post(f"/studies/demo/trials/{n}/refine",
                                                                  json={"seed": next(k)}, headers=auth), 202)]
            for name, fn, status in writes:
                ms = []
                for _ in range(max(5, args.requests // 6)):
                    t0 = time.perf_counter()
                    r = fn()
                    ms.append((time.perf_counter() - t0) * 1e3)
                    assert r.status_code == status, (name, r.status_code, r.text)
                rows.append([label, name, len(ms), statistics.median(ms), p95(ms)])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return rows, {"pareto": statistics.median(pareto_ms) / statistics.median(direct),
                  "page": (len(ids), statistics.median(one_by_one), statistics.median(batched))}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--requests", type=int, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lightnas-bench-api-"))
    atexit.register(shutil.rmtree, tmp, True)
    print(machine_header("HTTP API latency (bench/bench_api.py)", sys.argv), flush=True)
    rows, ratios = [], {}
    r, ratios["SQLite"] = run_backend("SQLite", f"sqlite:///{tmp}/api.db", args)
    rows += r
    with postgres_server() as fresh:
        r, ratios["PostgreSQL"] = run_backend("PostgreSQL", fresh(), args)
        rows += r
    print(table(["backend", "request", "n", "median ms", "p95 ms"], rows))
    print()
    print("GET /pareto (HTTP, real server) / `pareto_rows` (in process), medians: "
          + ", ".join(f"{k} {v['pareto']:.2f}x" for k, v in ratios.items()))
    print()
    print("Reading a page of trials in process, medians: one `get_trial` per trial / one batched read "
          "(`Store.trials_by_id`, what the API does): "
          + ", ".join(f"{k} {v['page'][1]:.1f} ms / {v['page'][2]:.1f} ms = {v['page'][1] / v['page'][2]:.1f}x "
                      f"({v['page'][0]} trials)" for k, v in ratios.items()))
    print(f"\nStudy: the digits demo spec, {args.trials} trials, searched first; one client with keep-alive; "
          "the server is `nas serve` (uvicorn, one process) on 127.0.0.1; PostgreSQL 15 throwaway server "
          "(fsync off). Writes: POST /studies creates a study with target 0 (loads and checks the data); "
          "refine only queues a job (distinct seeds, so every request queues a new one).")


if __name__ == "__main__":
    main()
