"""The web page of ``nas serve`` as a person uses it: Debian's chromium, driven by Playwright, against a
real ``nas serve`` process on a database with a trained study; a real worker runs what the page asks.

What a user would notice: the studies and their progress, one point per network within the budget
on the plot with the budget's limit drawn and rejected samples apart, the ``where`` filter narrowing
the front's table, downloads that onnxruntime and torch load, writes only with the token the user
typed (never in a URL, a log, a cookie or localStorage), the page refreshing by itself while a
worker runs, refined candidates with their lineage, a server that protects reads asking for a
token, and no request leaving 127.0.0.1. Screenshots are saved under pytest's temp dir (their paths
are printed with ``-s``); the README's docs/web.png is the second one, taken with
``NAS_WEB_SCREENSHOT=docs/web.png pytest tests/test_web.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import is_local, record_requests
from fastapi.testclient import TestClient
from lightnas_pg import free_port

from nas.serve import ApiSettings, create_app
from nas.workers import run_worker
from search_spaces import ArchSpec, build_model

WRITE = "w-" + "a" * 30
READ = "r-" + "b" * 30
# The tiny plain space of tests/test_api.py: 6 networks of 2 epochs train in seconds.
STUDY = {"name": "s1", "space": "plain", "budget": "params<=20k flops<=1.5M", "trials": 6, "seed": 0,
         "device": "cpu", "space_options": {"max_depth": 2, "widths": [8, 16], "hidden": [0, 32]},
         "fidelity": {"epochs": 2}}
SERVE_TIMEOUT = 60.0  # s for `nas serve` to answer /health
UI_TIMEOUT = 30_000  # ms for the page to show what a test waits for (it refreshes every 2 s while work runs)


def work(url: str) -> None:
    """A real worker (the loop of ``nas worker``) until the study's target and job queue are done."""
    run_worker(["s1"], url, until_done=True, threads=1, jobs=True, poll_min=0.05, poll_max=0.2)



@dataclass
class Server:
    base: str
    log: Path
    proc: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database with study s1 run to its 6 networks within the budget (over-budget ones rejected)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('web')}/nas.db"
    with TestClient(create_app(ApiSettings(storage=url, tokens=(WRITE,)))) as c:
        assert c.post("/studies", json=STUDY, headers={"Authorization": f"Bearer {WRITE}"}).status_code == 201
    work(url)
    return url


@contextlib.contextmanager
def serve(url: str, log: Path, *flags: str) -> Iterator[Server]:
    """``nas serve`` on a free port of 127.0.0.1 with a write and a read token; stopped afterwards."""
    env = {**os.environ, "NAS_API_TOKEN": WRITE, "NAS_API_READ_TOKEN": READ, "PYTHONUNBUFFERED": "1"}
    env.pop("NAS_API_PROTECT_READS", None)
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--storage", url,
                                 *flags], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:  # bounded wait for the server to listen
            try:
                if httpx.get(server.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, server.text()
            assert time.monotonic() < deadline, f"nas serve did not answer within {SERVE_TIMEOUT} s\n{server.text()}"
            time.sleep(0.1)  # back-off between polls
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(trained, tmp_path_factory.mktemp("serve") / "serve.log") as s:
        yield s


class Page:
    """A browser tab with everything it requested and every error it logged."""

    def __init__(self, browser, tmp_path: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.requests = record_requests(self.context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(UI_TIMEOUT)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.tmp = tmp_path

    def js_errors(self) -> list[str]:
        """Errors other than the API's own 4xx answers (which the browser logs as failed loads)."""
        return [e for e in self.errors if "the server responded with a status of 4" not in e]

    def trace(self, uid: str) -> dict:
        """A trace of the Pareto plot as plotly holds it (``uid``: within, front, refined, lineage, rejected)."""
        return self.page.evaluate("uid => document.getElementById('plot').data.find(t => t.uid === uid) || null", uid)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(chromium, tmp_path: Path) -> Iterator[Page]:
    p = Page(chromium, tmp_path)
    yield p
    p.close()


def api(server: Server, path: str, **params: str) -> dict:
    r = httpx.get(server.base + path, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def assert_local_only(tab: Page, server: Server) -> None:
    """No request of the tab left 127.0.0.1; the plotting library came from the server itself."""
    urls = [r.url for r in tab.requests]
    assert urls and [u for u in urls if not is_local(u)] == []
    assert server.base + "/ui/static/plotly.min.js" in urls


# ------------------------------------------------------------------------------------------ tests


def test_the_page_shows_the_study_its_front_under_the_budget_and_exports_it(server, tab, tmp_path):
    from playwright.sync_api import expect

    page = tab.page
    info = api(server, "/studies/s1")
    trials = api(server, "/studies/s1/trials", limit="500")["trials"]
    within = sorted(t["number"] for t in trials if t["status"] in ("trained", "reused"))
    rejected = sorted(t["number"] for t in trials if t["status"] == "over_budget")
    assert len(within) == info["finished"] == 6 and rejected, "the study should have rejected a sample"

    # The studies, with their state and progress.
    started = time.monotonic()
    page.goto(server.base + "/")
    row = page.locator("#studies tbody tr[data-study='s1']")
    expect(row.locator(".finished")).to_have_text("6 / 6")
    index_s = time.monotonic() - started
    expect(row.locator(".badge")).to_have_text("done")
    expect(row.locator(".rejected")).to_have_text(str(len(rejected)))
    expect(row).to_contain_text("params<=20k flops<=1.5M")

    # One study: one point per network within the budget, the rejected samples apart, the front marked.
    started = time.monotonic()
    row.locator("a.study-link").click()
    expect(page).to_have_url(server.base + "/ui/studies/s1")
    expect(page.locator("#plot g.tracewithin path.point")).to_have_count(len(within))
    study_s = time.monotonic() - started
    expect(page.locator("#plot g.tracerejected path.point")).to_have_count(len(rejected))
    expect(page.locator("#progress .finished")).to_have_text("6 / 6 networks within the budget")
    assert sorted(n for _, n in tab.trace("within")["customdata"]) == within
    assert sorted(n for _, n in tab.trace("rejected")["customdata"]) == rejected
    front = api(server, "/studies/s1/pareto")["rows"]
    expect(page.locator("#front tbody tr")).to_have_count(len(front))
    assert sorted(n for _, n in tab.trace("front")["customdata"]) == sorted(r["trial"] for r in front)

    # Any cost on the x axis, with the budget's limit drawn: every network within the budget left of it.
    page.select_option("#xaxis", "params")
    expect(page.locator("#plot .annotation-text")).to_have_text("budget params ≤ 20k")
    assert page.evaluate("document.getElementById('plot').layout.shapes[0].x0") == 20_000
    assert max(tab.trace("within")["x"]) <= 20_000
    over_params = [t["cost"]["params"] for t in api(server, "/studies/s1/points")["trials"]
                   if "params" in (t["violations"] or {})]
    assert sorted(x for x in tab.trace("rejected")["x"] if x > 20_000) == sorted(over_params)
    assert "x=params" in page.url

    # The where filter narrows the table, as `nas pareto --where` does; a bad one says why, in one line.
    smallest = min(r["flops"] for r in front)
    page.fill("#where", f"flops<={smallest:.0f}")
    page.click("#plot-form button[type=submit]")
    expect(page.locator("#front tbody tr")).to_have_count(1)
    narrowed = api(server, "/studies/s1/pareto", where=f"flops<={smallest:.0f}")["rows"]
    expect(page.locator("#front tbody tr")).to_have_attribute("data-trial", str(narrowed[0]["trial"]))
    assert "where=flops" in page.url
    page.fill("#where", "colour<=3")
    page.click("#plot-form button[type=submit]")
    error = page.locator("#where-error")
    expect(error).to_be_visible()
    assert "colour" in error.inner_text() and "\n" not in error.inner_text()
    expect(page.locator("#front tbody tr")).to_have_count(1)  # the last good answer stays
    page.click("#where-clear")
    expect(page.locator("#front tbody tr")).to_have_count(len(front))
    expect(error).to_be_hidden()

    # A trial: its architecture, cost table, learning curve, and its files.
    best = max(front, key=lambda r: r["accuracy"])
    detail = api(server, f"/studies/s1/trials/{best['trial']}")
    page.click(f"#front tbody tr[data-trial='{best['trial']}']")
    box = page.locator("#detail")
    expect(box.locator("h2")).to_contain_text(f"Trial {best['trial']}")
    blocks = sum(len(s["blocks"]) for s in detail["spec"]["stages"])
    expect(box.locator("table.arch tbody tr")).to_have_count(blocks + 2)  # stem, blocks, head
    expect(box.locator("table.cost")).to_contain_text("flops")
    validated = [v for v in detail["metrics"]["curve"] if v is not None]  # epochs between rungs are not validated
    expect(box.locator("#curve g.trace path.point")).to_have_count(len(validated))

    files = {}
    for fmt in ("onnx", "state_dict", "json"):
        with page.expect_download() as download:
            box.locator(f"button.download[data-format={fmt}]").click()
        files[fmt] = Path(download.value.path()).read_bytes()
        assert download.value.suggested_filename.startswith(f"s1-trial{best['trial']}.")
    spec = json.loads(files["json"])["spec"]
    model = build_model(ArchSpec.from_dict(spec), (1, 8, 8), 10).eval()
    model.load_state_dict(torch.load(io.BytesIO(files["state_dict"]), weights_only=True))
    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)

    shot = tmp_path / "web-study.png"
    page.select_option("#xaxis", "hw_cost")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nscreenshot: {shot}; studies page {index_s:.2f} s, study page with its plot {study_s:.2f} s")

    assert tab.js_errors() == [] and len(tab.errors) == 1  # the one 422 of the bad filter
    assert_local_only(tab, server)


def test_writes_need_the_users_token_and_the_page_follows_the_work(server, trained, tab):
    from playwright.sync_api import expect

    page = tab.page
    page.goto(server.base + "/ui/studies/s1")
    expect(page.locator("#progress .finished")).to_contain_text("6 / 6")

    def set_target(n: int) -> None:
        page.fill("#target", str(n))
        page.click("#target-form button[type=submit]")

    # Without a token, and with a read-only one, the write is refused and said so; nothing changes.
    set_target(8)
    expect(page.locator("#target-msg")).to_have_text("Writes need a token: enter a write token (NAS_API_TOKEN) above.")
    page.fill("#token", READ)
    page.click("#token-use")
    set_target(8)
    expect(page.locator("#target-msg")).to_contain_text("this token may only read")
    assert api(server, "/studies/s1")["target"] == 6

    # With the write token typed in, the target is raised; the page shows a study waiting for a worker.
    page.fill("#token", WRITE)
    page.click("#token-use")
    expect(page.locator("#token")).to_have_value("")  # the field does not keep it
    set_target(8)
    expect(page.locator("#target-msg")).to_have_text("target set to 8; workers pick it up")
    assert api(server, "/studies/s1")["target"] == 8
    expect(page.locator("#progress .badge")).to_have_text("waiting for a worker")
    page.evaluate("window.__same_page = true")

    # A worker runs; the page follows by itself (no reload): 8 networks, 8 points.
    work(trained)
    expect(page.locator("#progress .finished")).to_have_text("8 / 8 networks within the budget")
    expect(page.locator("#plot g.tracewithin path.point")).to_have_count(8)
    expect(page.locator("#progress .badge")).to_have_text("done")

    # Queue a refinement of the most accurate network; a worker runs it; its candidates join the plot.
    front = api(server, "/studies/s1/pareto")["rows"]
    n = max(front, key=lambda r: r["accuracy"])["trial"]
    page.click(f"#front tbody tr[data-trial='{n}']")
    form = page.locator("#detail form.refine")
    form.locator("input[type=number] >> nth=0").fill("1")  # fine-tune epochs
    form.locator("input[type=number] >> nth=1").fill("1")  # iterations
    form.locator("button[type=submit]").click()
    expect(form.locator(".msg")).to_have_text("job 1 queued: a worker will run it")
    expect(page.locator("#jobs tbody tr[data-job='1']")).to_contain_text("queued")
    work(trained)
    expect(page.locator("#jobs tbody tr[data-job='1']")).to_contain_text("done")
    job = api(server, "/studies/s1/jobs/1")
    refined = api(server, "/studies/s1/points")["refined"]
    assert job["state"] == "done" and refined
    expect(page.locator("#plot g.tracerefined path.point")).to_have_count(len(refined))
    assert sorted(i for _, i in tab.trace("refined")["customdata"]) == sorted(r["refined"] for r in refined)
    assert tab.trace("lineage")["x"].count(None) == len(refined)  # one segment from each candidate's parent
    assert all(f"refined {n}/" in text for text in tab.trace("refined")["text"])
    expect(page.locator("#detail table.refined tbody tr")).to_have_count(len(job["candidates"]))
    assert page.evaluate("window.__same_page") is True
    shot = tab.tmp / "web-refined.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    if os.environ.get("NAS_WEB_SCREENSHOT"):  # the README's picture: the study, its plot and front
        page.locator("#detail").evaluate("d => d.hidden = true")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["NAS_WEB_SCREENSHOT"])

    # The token went only into Authorization headers: no URL, cookie, localStorage or server log has it.
    writes = [r for r in tab.requests if r.method in ("PATCH", "POST")]
    assert [r.method for r in writes] == ["PATCH", "PATCH", "PATCH", "POST"]
    assert [r.all_headers().get("authorization") for r in writes] == [None, f"Bearer {READ}", f"Bearer {WRITE}",
                                                                 f"Bearer {WRITE}"]
    for token in (WRITE, READ):
        assert not any(token in r.url for r in tab.requests) and token not in page.url
        assert token not in server.text()
        assert token not in page.evaluate("JSON.stringify(localStorage) + document.cookie")
    page.click("#token-forget")
    assert page.evaluate("sessionStorage.length") == 0
    assert tab.js_errors() == []
    assert_local_only(tab, server)


def test_a_server_that_protects_reads_asks_the_page_for_a_token(trained, tab, tmp_path):
    from playwright.sync_api import expect

    with TestClient(create_app(ApiSettings(storage=trained, tokens=(WRITE,)))) as c:
        finished = c.get("/studies/s1").json()["finished"]
    with serve(trained, tmp_path / "protected.log", "--protect-reads") as server:
        page = tab.page
        shell = httpx.get(server.base + "/", timeout=30)
        assert shell.status_code == 200 and "s1" not in shell.text  # the page itself holds no data
        assert httpx.get(server.base + "/studies", timeout=30).status_code == 401

        page.goto(server.base + "/")
        expect(page.locator("#notice")).to_contain_text("This server protects reads: enter a token")
        expect(page.locator("#studies tbody tr")).to_have_count(0)
        page.fill("#token", READ)
        page.click("#token-use")
        expect(page.locator("#studies tbody tr[data-study='s1'] .badge")).to_have_text("done")
        expect(page.locator("#notice")).to_be_hidden()
        page.click("a.study-link")  # the tab keeps the token from page to page
        expect(page.locator("#plot g.tracewithin path.point")).to_have_count(finished)

        statuses = [(r.url, r.response().status) for r in tab.requests if r.url.endswith("/studies")]
        assert statuses[0][1] == 401 and statuses[-1][1] == 200
        assert READ not in page.url and READ not in server.text()
        assert tab.js_errors() == []
        assert_local_only(tab, server)


def test_page_files_are_served_offline_with_the_servers_rules(trained):
    settings = {"storage": trained, "tokens": (WRITE,)}
    with TestClient(create_app(ApiSettings(**settings))) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert 'data-reads="open" data-writes="token"' in page.text
        assert c.get("/ui/studies/s1").status_code == 200
        for html in ("index.html", "study.html"):  # every file a page loads comes from this server
            text = (Path(__file__).parent.parent / "nas" / "serve" / "web" / html).read_text()
            for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
                assert ref.startswith("/") or ref == "data:,", (html, ref)

        js = c.get("/ui/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert js.headers["content-encoding"] == "gzip" and js.text.startswith("/**\n* plotly.js v")
        assert c.get("/ui/static/plotly.min.js", headers={"If-None-Match": js.headers["etag"]}).status_code == 304
        for bad in ("nope.js", "..%2F_api.py", "app.py", "style.css.map", "study.html"):
            r = c.get(f"/ui/static/{bad}")
            assert r.status_code == 404 and "\n" not in r.json()["message"], (bad, r.text)

        points = c.get("/studies/s1/points").json()
        assert points["limits"] == {"params": 20_000.0, "flops": 1_500_000.0, "hw_cost": 1.0}
        assert points["costs"][:3] == ["hw_cost", "params", "flops"]
        within = [t for t in points["trials"] if t["state"] == "complete" and t["status"] != "over_budget"]
        assert len(within) == c.get("/studies/s1").json()["finished"]
        assert all(t["cost"]["params"] <= 20_000 and t["cost"]["flops"] <= 1.5e6 for t in within)
        assert c.get("/studies/nope/points").status_code == 404
    with TestClient(create_app(ApiSettings(**settings, protect_reads=True))) as c:
        assert 'data-reads="token"' in c.get("/").text and c.get("/studies/s1/points").status_code == 401
    with TestClient(create_app(ApiSettings(storage=trained, read_only=True))) as c:
        assert 'data-writes="none"' in c.get("/ui/studies/s1").text



def _binary(v: float) -> str:
    """A byte count as the page writes it (app.js ``fmt``): B, KiB or MiB to 3 significant digits."""
    for unit, size in (("MiB", 1024**2), ("KiB", 1024)):
        if v >= size:
            return f"{float(f'{v / size:.3g}'):g} {unit}"
    return f"{v:g} B"


@pytest.mark.slow
def test_an_int8_study_shows_int8_accuracy_ram_and_flash_and_downloads_its_int8_files(tab, tmp_path):
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path}/int8.db"
    study = {**STUDY, "name": "q1", "precision": "int8", "calibration": 64, "cost_device": "cortex-m7",
             "trials": 3, "fidelity": {"epochs": 1}}
    with TestClient(create_app(ApiSettings(storage=url, tokens=(WRITE,)))) as c:
        assert c.post("/studies", json=study, headers={"Authorization": f"Bearer {WRITE}"}).status_code == 201
    run_worker(["q1"], url, until_done=True, threads=1, jobs=True, poll_min=0.05, poll_max=0.2)
    with serve(url, tmp_path / "int8.log") as server:
        page = tab.page
        front = api(server, "/studies/q1/pareto")["rows"]
        page.goto(server.base + "/ui/studies/q1")
        expect(page.locator("#front tbody tr")).to_have_count(len(front))
        expect(page.locator("#spec")).to_contain_text("int8 (64 calibration images)")
        heads = page.locator("#front thead th").all_inner_texts()
        assert heads[:5] == ["network", "int8 accuracy", "fp32 accuracy", "int8 drop", "test accuracy"], heads
        assert "RAM" in heads and "flash" in heads, heads
        for r in front:  # the int8 network's accuracy, fp32's, the drop; RAM and flash as the rows have them
            row = page.locator(f"#front tbody tr[data-trial='{r['trial']}']")
            expect(row.locator("td.int8-accuracy")).to_have_text(f"{r['accuracy']:.4f}")
            expect(row.locator("td.fp32-accuracy")).to_have_text(f"{r['fp32_accuracy']:.4f}")
            expect(row.locator("td.int8-drop")).to_have_text(f"{r['int8_drop']:.4f}")
            expect(row.locator("td[data-cost=ram_bytes]")).to_have_text(_binary(r["ram_bytes"]))
            expect(row.locator("td[data-cost=flash_bytes]")).to_have_text(_binary(r["flash_bytes"]))

        n = front[0]["trial"]
        page.click(f"#front tbody tr[data-trial='{n}']")
        box = page.locator("#detail")
        expect(box.locator("h2")).to_contain_text(f"Trial {n}")
        expect(box.locator("p.muted").first).to_contain_text(f"fp32 {front[0]['fp32_accuracy']:.4f}")
        with page.expect_download() as download:
            box.locator("button.download[data-format=tflite]").click()
        assert download.value.suggested_filename == f"q1-trial{n}.tflite"
        assert Path(download.value.path()).read_bytes()[4:8] == b"TFL3"
        measured = box.locator("p.deploy")
        expect(measured).to_contain_text("TFLM arena")  # what the server measured, from X-Lightnas-Deploy
        expect(measured).to_contain_text("accuracy LiteRT")
        with page.expect_download() as download:
            box.locator("button.download[data-format=onnx-int8]").click()
        assert download.value.suggested_filename == f"q1-trial{n}_int8.onnx"
        expect(measured).to_contain_text("accuracy ONNX Runtime")
        session = ort.InferenceSession(Path(download.value.path()).read_bytes(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
        assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (1, 10)
        assert tab.js_errors() == []
        assert_local_only(tab, server)
