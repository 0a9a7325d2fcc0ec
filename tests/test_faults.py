"""Issue 28 (reliability), section 3: faults and API races, with real processes, signals and servers.

* ``kill -9`` of ``nas study run --workers 2``: its workers die with it (not orphans training on),
  and a rerun resumes with nothing completed lost or done twice;
* ``kill -TERM`` of ``nas study run``: as Ctrl-C, one line on stderr, the running trial failed and
  queued again at once, status 143 (death by SIGTERM), the workers stopped;
* PostgreSQL stopped for ~10 s while a trial trains: the trial keeps training and tells its result
  once the database is back; it completes once, is not retrained, its result stored once;
* concurrent ``DELETE /studies/x`` (and PATCH with DELETE): one 204, the others 404, never a 500;
  ``GET /studies`` while studies are deleted: 200, never a 404;
* a token a client puts in the URL never reaches the access log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from conftest import NAS, WAIT, create_studies, trials_of, wait_for_server, wait_until
from lightnas_pg import free_port
from optuna.trial import TrialState

from nas.search import get_study_spec, make_spec
from storage import Store

WRITE = "w-" + "a" * 30
READ = "r-" + "b" * 30
AUTH = {"Authorization": f"Bearer {WRITE}"}
#: The smallest space: plain networks of one stage, two widths; each trains in about a second.
TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0,)}
#: Still small, but many distinct architectures (so trials really train rather than reuse).
SMALL = {"max_depth": 2, "widths": (8, 16, 24), "kernels": (3,), "hidden": (0, 32), "rank_ratios": (1.0, 0.5)}


def spec(name: str, trials: int, *, epochs: int = 1, options: dict | None = None, fraction: float = 0.5, **kw):
    fields = dict(name=name, space="plain", data="digits", budget="params<=60k", trials=trials, seed=1,
                  sampler="random", space_options=options or TINY, device="cpu",
                  fidelity={"epochs": epochs, "train_fraction": fraction, "batch_size": 64})
    fields.update(kw)
    return make_spec(**fields)


create = create_studies


def training_trial(url: str, name: str) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial past its budget check and training (cost known, no status yet)."""
    return next((t for t in trials_of(url, name) if t.state == TrialState.RUNNING and "cost" in t.user_attrs
                 and "status" not in t.user_attrs and "worker" in t.user_attrs), None)


def completed(url: str, name: str) -> dict[int, tuple]:
    """The COMPLETE trials by number: (values, status, spec hash)."""
    return {t.number: (tuple(t.values), t.user_attrs.get("status"), t.user_attrs.get("spec_hash"))
            for t in trials_of(url, name) if t.state == TrialState.COMPLETE}


def assert_resumed_intact(url: str, name: str, before: dict[int, tuple], target: int) -> None:
    """After a rerun: every trial complete before is complete still, unchanged; exactly ``target``
    networks within the budget; unique numbers; nothing running or queued; no architecture trained twice."""
    trials = trials_of(url, name)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    after = completed(url, name)
    assert {n: after.get(n) for n in before} == before  # nothing completed was lost or changed
    assert sum(v[1] != "over_budget" for v in after.values()) == target
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    trained = [v[2] for v in after.values() if v[1] == "trained"]
    assert len(trained) == len(set(trained))  # identical architectures are never trained twice


def children(pid: int) -> set[int]:
    """Pids of the live child processes of ``pid`` (Linux /proc)."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out |= {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def worker_pids(parent: int) -> set[int]:
    """The worker processes of a ``nas study run --workers N`` (multiprocessing spawn children, not
    its resource tracker)."""
    return {p for p in children(parent) if "spawn_main" in cmdline(p) and "resource_tracker" not in cmdline(p)}


@pytest.fixture
def reaped() -> Iterator[list[int]]:
    """Pids a test started or found; any still alive at the end is killed (never left running)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def nas_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------ 1, 2. kill -9 and kill -TERM of nas study run


def start_run(url: str, name: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    """``nas study run NAME ARGS`` as a user starts it (its own session: signals reach it alone); its
    output to ``log`` (a file: the workers inherit it, and a pipe would wait for them too) or to pipes."""
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 -- closed with the process
    return subprocess.Popen([NAS, "study", "run", name, "--storage", url, "--quiet", *args], env=nas_env(),
                            stdout=out, stderr=subprocess.STDOUT if log is not None else subprocess.PIPE, text=True,
                            start_new_session=True)


def resume(url: str, name: str, extra: int = 2) -> int:
    """Run the study again to ``extra`` more networks than it has (the retries queued first); the new target."""
    store = Store(url)
    try:
        target = store.study_counts(name)["COUNTED"] + extra
    finally:
        store.close()
    res = subprocess.run([NAS, "study", "run", name, "--storage", url, "--quiet", "--trials", str(target)],
                         capture_output=True, text=True, timeout=WAIT, env=nas_env())
    assert res.returncode == 0, res.stderr
    return target


def running_workers(run: subprocess.Popen, n: int) -> set[int]:
    """The ``n`` worker pids of ``run`` once they are all up."""
    def found() -> set[int] | None:
        assert run.poll() is None, run.communicate()
        pids = worker_pids(run.pid)
        return pids if len(pids) == n else None
    return wait_until(found, f"{n} worker processes")  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc (Linux)")
def test_kill_9_of_study_run_takes_its_workers_with_it(sqlite_url, tmp_path, reaped):
    # A target far beyond what the test waits for: orphans would go on training, not finish the study.
    create(sqlite_url, spec("orphans", 1000, options=SMALL, fraction=1.0))
    run = start_run(sqlite_url, "orphans", "--workers", "2", log=tmp_path / "run.log")
    reaped.append(run.pid)
    workers = running_workers(run, 2)
    reaped.extend(workers)
    wait_until(lambda: completed(sqlite_url, "orphans") and training_trial(sqlite_url, "orphans"),
               "a complete trial and one in training")
    assert worker_pids(run.pid) == workers
    os.kill(run.pid, signal.SIGKILL)
    killed = time.monotonic()
    run.wait(timeout=30)
    try:
        wait_until(lambda: not any(alive(p) for p in workers), "the workers to die with their parent", timeout=20,
                   every=0.05)
    except AssertionError:
        left = {p: cmdline(p) for p in workers if alive(p)}
        raise AssertionError(f"orphaned workers still running 20 s after kill -9 of their parent: {left}") from None
    took = time.monotonic() - killed
    assert took < 10, f"the workers took {took:.1f} s to die"
    # Nothing runs any more; what a worker was training was given back (failed, queued again).
    trials = trials_of(sqlite_url, "orphans")
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    given_back = [t for t in trials if t.state == TrialState.FAIL]
    # Stopped in training (SIGTERM), or claimed as the signal came and given back untrained.
    assert all("SIGTERM" in t.user_attrs.get("fail_reason", "") or t.user_attrs.get("fail_reason", "")
               .startswith("worker stopping") for t in given_back), [t.user_attrs for t in given_back]
    queued = {t.system_attrs.get("failed_trial") for t in trials if t.state == TrialState.WAITING}
    assert {t.number for t in given_back} == queued
    before = completed(sqlite_url, "orphans")
    target = resume(sqlite_url, "orphans", extra=3)
    assert_resumed_intact(sqlite_url, "orphans", before, target)
    after = trials_of(sqlite_url, "orphans")
    for t in given_back:  # each given-back trial was run again by the rerun
        assert any(x.system_attrs.get("failed_trial") == t.number and x.state == TrialState.COMPLETE for x in after)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_to_study_run_stops_it_as_ctrl_c_does(sqlite_url, reaped, workers):
    name = f"term{workers}"
    create(sqlite_url, spec(name, 40, options=SMALL, epochs=8, fraction=1.0))
    run = start_run(sqlite_url, name, "--workers", str(workers))
    reaped.append(run.pid)
    pids = running_workers(run, workers) if workers > 1 else set()
    reaped.extend(pids)
    t = wait_until(lambda: training_trial(sqlite_url, name), "a trial in training")
    before = completed(sqlite_url, name)
    run.send_signal(signal.SIGTERM)  # to `nas study run` alone, as `kill PID` or a service manager does
    sent = time.monotonic()
    out, err = run.communicate(timeout=120)
    took = time.monotonic() - sent
    assert run.returncode == -signal.SIGTERM, (run.returncode, out, err)  # a shell's 143
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{name}: terminated (SIGTERM) at ") and "rerun the same command to resume" in lines[0]
    assert took < 30, f"took {took:.1f} s to stop"
    assert not any(alive(p) for p in pids)  # the workers stopped with it
    trials = trials_of(sqlite_url, name)
    stopped = next(x for x in trials if x.number == t.number)  # type: ignore[union-attr]
    assert stopped.state == TrialState.FAIL and "SIGTERM" in stopped.user_attrs["fail_reason"], stopped.user_attrs
    assert not [x.number for x in trials if x.state == TrialState.RUNNING]  # no heartbeat grace to wait for
    queued = [x for x in trials if x.state == TrialState.WAITING]
    assert stopped.number in {x.system_attrs.get("failed_trial") for x in queued}  # queued again at once
    now = completed(sqlite_url, name)
    assert {n: now.get(n) for n in before} == before  # completed ones intact (another may have completed since)
    before = now
    target = resume(sqlite_url, name, extra=len(queued))
    assert_resumed_intact(sqlite_url, name, before, target)
    assert any(x.system_attrs.get("failed_trial") == stopped.number and x.state == TrialState.COMPLETE
               for x in trials_of(sqlite_url, name))


# ------------------------------------------------------------------ 3. PostgreSQL stopped mid-trial


@pytest.mark.slow
@pytest.mark.postgres
def test_a_trial_training_through_a_postgresql_outage_completes_once(private_postgres, monkeypatch):
    """The server stops while a trial trains and stays down ~10 s, past the end of its training: the
    worker keeps training, its heartbeats (every second, grace 3 s) fail quietly, and it stores and
    tells the result once the server is back. Not failed, not trained again, stored once."""
    import nas.search._objective as objective
    from nas import weights_key
    from nas.workers import run_worker

    url, outage = private_postgres.url, 10.0
    create(url, spec("outage", 1, options=SMALL, fraction=1.0))
    training, down = threading.Event(), threading.Event()
    trainings: list[float] = []
    real = objective.train_spec

    def train(*args, **kw):  # the real training, run while the server is down
        trainings.append(time.monotonic())
        training.set()
        assert down.wait(WAIT)
        return real(*args, **kw)

    monkeypatch.setattr(objective, "train_spec", train)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(["outage"], url, until_done=True, threads=1, heartbeat=1, poll_min=0.05, poll_max=0.5,
                       deadline=time.time() + WAIT)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    worker = threading.Thread(target=work, name="outage-worker")
    worker.start()
    try:
        assert training.wait(WAIT), "no trial started training"
        private_postgres.shutdown()
        stopped = time.monotonic()
    finally:
        down.set()
    time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
    assert worker.is_alive() and not errors, errors  # still holding its result, not given up
    private_postgres.start_again()
    down_for = time.monotonic() - stopped
    worker.join(WAIT)
    assert not worker.is_alive() and not errors, errors
    assert down_for >= outage and len(trainings) == 1  # trained once: not failed and retrained
    trials = trials_of(url, "outage")
    assert [(t.state, t.user_attrs.get("status")) for t in trials] == [(TrialState.COMPLETE, "trained")], \
        [(t.state, t.user_attrs) for t in trials]
    (t,) = trials
    store = Store(url)
    try:
        from sqlalchemy import text

        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT val_accuracy FROM lightnas_evaluations WHERE spec_hash = :h"),
                                {"h": t.user_attrs["spec_hash"]}).all()
        assert [r[0] for r in rows] == [pytest.approx(t.values[0])]  # stored once, the told accuracy
        fkey = get_study_spec("outage", store).fidelity_key
        assert store.get_artifact(weights_key(t.user_attrs["spec_hash"], fkey))
    finally:
        store.close()


def test_waiting_for_the_database_is_bounded_and_a_failed_beat_keeps_beating():
    from nas.workers import Heartbeat, Outages, wait_for_database
    from storage import StorageError

    calls: list[float] = []

    def away() -> None:
        calls.append(time.monotonic())
        raise StorageError("connection refused", transient=True)

    t0 = time.monotonic()
    with pytest.raises(StorageError):
        wait_for_database(away, "testing", max_wait=1.5)
    assert 1.5 <= time.monotonic() - t0 < 3.5 and len(calls) >= 2  # retried, then gave up within the window
    with pytest.raises(ValueError):  # not an outage: at once
        wait_for_database(lambda: (_ for _ in ()).throw(ValueError("bug")), "testing", max_wait=30)
    mine, another = Outages(), Outages()  # the outages of two workers of one process
    with pytest.raises(StorageError):
        wait_for_database(away, "testing", max_wait=0.1, outages=mine)
    assert mine.within(60) and not another.within(60)  # only the worker that met it holds its sweeps

    beats: list[int] = []

    def beat() -> None:  # fails with something no beat function expected; the beating goes on
        beats.append(1)
        if len(beats) <= 2:
            raise OSError("network is unreachable")

    with Heartbeat(beat, 0.05, "test-beat", first=False):
        wait_until(lambda: len(beats) >= 4, "beats after failed ones", timeout=10, every=0.02)


def test_the_one_retry_loop_backs_off_within_its_limits(monkeypatch):
    import storage._retry as retry_module
    from storage import retry

    pauses: list[float] = []
    monkeypatch.setattr(retry_module.time, "sleep", pauses.append)
    calls, retried = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise OSError("away")
        return "done"

    assert retry(flaky, retryable=lambda e: isinstance(e, OSError), delay=0.1, max_delay=0.25,
                 on_retry=retried.append) == "done"
    assert pauses == [0.1, 0.2, 0.25] and len(retried) == 3  # doubling, capped
    pauses.clear()
    with pytest.raises(OSError):  # the attempts spent: the last error
        retry(lambda: (_ for _ in ()).throw(OSError("away")), retryable=lambda e: True, attempts=3, delay=0.1,
              max_delay=5.0, jitter=True)
    assert len(pauses) == 2 and 0.1 <= pauses[0] <= 0.2 and 0.2 <= pauses[1] <= 0.4  # delay x U(1, 2)
    pauses.clear()
    with pytest.raises(ValueError):  # not retryable: at once
        retry(lambda: (_ for _ in ()).throw(ValueError("bug")), retryable=lambda e: isinstance(e, OSError),
              delay=0.1, max_delay=1.0)
    with pytest.raises(OSError):  # given up: at once
        retry(lambda: (_ for _ in ()).throw(OSError("away")), retryable=lambda e: True, delay=0.1, max_delay=1.0,
              give_up=lambda waited: True)
    assert pauses == []


# ------------------------------------------------------------------ 4. API races


def _client(url: str):
    from fastapi.testclient import TestClient

    from nas.serve import ApiSettings, create_app

    return TestClient(create_app(ApiSettings(storage=url, tokens=(WRITE,), read_tokens=(READ,))))


def test_concurrent_deletes_of_one_study_give_one_204_and_404s(storage_url):
    create(storage_url, *(spec(f"d{i}", 3) for i in range(3)))
    with _client(storage_url) as c:
        for i in range(3):
            name = f"d{i}"
            start = threading.Barrier(15)

            def delete(k: int, name: str = name, start: threading.Barrier = start) -> int:
                start.wait(timeout=WAIT)
                if k % 3 == 2:  # PATCH and DELETE together
                    return c.patch(f"/studies/{name}", json={"target": 5}, headers=AUTH).status_code
                return c.delete(f"/studies/{name}", headers=AUTH).status_code

            with ThreadPoolExecutor(15) as pool:
                codes = list(pool.map(delete, range(15)))
            deletes = [code for k, code in enumerate(codes) if k % 3 != 2]
            patches = [code for k, code in enumerate(codes) if k % 3 == 2]
            assert 500 not in codes, codes
            assert sorted(deletes) == [204] + [404] * (len(deletes) - 1), codes
            assert set(patches) <= {200, 404}, codes
            assert c.get(f"/studies/{name}").status_code == 404
            assert name not in optuna.get_all_study_names(optuna.storages.RDBStorage(storage_url))


def test_listing_studies_while_they_are_deleted_never_answers_404(sqlite_url):
    n = 20
    create(sqlite_url, *(spec(f"l{i}", 3) for i in range(n)))
    with _client(sqlite_url) as c:
        stop = threading.Event()

        def lists() -> list[int]:
            codes = []
            while not stop.is_set():
                r = c.get("/studies")
                codes.append(r.status_code)
                if r.status_code == 200:
                    names = [s["name"] for s in r.json()["studies"]]
                    assert len(names) == len(set(names))
            return codes

        with ThreadPoolExecutor(3) as pool:
            listing = [pool.submit(lists) for _ in range(3)]
            time.sleep(0.2)
            # Newest first: a list (oldest first) has read the names and meets the deleted ones later.
            for i in reversed(range(n)):
                assert c.delete(f"/studies/l{i}", headers=AUTH).status_code == 204
            time.sleep(0.2)
            stop.set()
            codes = [code for f in listing for code in f.result(timeout=WAIT)]
        assert codes and set(codes) == {200}, sorted(set(codes))
        assert c.get("/studies").json()["studies"] == []


# ------------------------------------------------------------------ 5. tokens in the URL and the access log


def test_a_token_in_the_url_never_reaches_the_access_log(tmp_path):
    import httpx

    port, other = free_port(), "t-" + "c" * 30  # `other`: a secret of the client that is no token here
    env = {**nas_env(), "NAS_API_TOKEN": WRITE, "NAS_API_READ_TOKEN": READ}
    proc = subprocess.Popen([NAS, "serve", "--port", str(port), "--storage", f"sqlite:///{tmp_path}/nas.db"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(proc, base)
        for path in (f"/studies?token={WRITE}", f"/studies?access_token={READ}&x=1", f"/health?api_key={other}",
                     f"/studies?Token={other}", f"/studies?q={WRITE}", f"/studies?auth={WRITE.replace('-', '%2D')}"):
            assert httpx.get(base + path, timeout=30).status_code == 200, path
        assert httpx.get(f"{base}/studies", headers={"Authorization": f"Bearer {WRITE}"}, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    log = out + err
    assert '"GET /health HTTP/1.1" 200' in log, log  # the access log is on
    assert log.count("GET /studies?") == 5, log  # every request line is there, its secrets replaced
    assert '"GET /studies?token=*** HTTP/1.1" 200' in log and "access_token=***&x=1" in log, log
    for secret in (WRITE, READ, other, WRITE[2:], "a" * 30, "b" * 30, "c" * 30):
        assert secret not in log, log


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process tree")
def test_without_the_kernels_help_a_worker_still_notices_its_parent_died(tmp_path):
    """The portable fallback of the parent-death signal: a worker polls os.getppid()."""
    child = tmp_path / "child.py"
    child.write_text(
        "import os, signal, sys, time\n"
        "import nas.workers._local as local\n"
        "sys.platform = 'other'  # no prctl: only the getppid() watch is left\n"
        "signal.signal(signal.SIGTERM, local._terminate_once())\n"
        "local._die_with(os.getppid())\n"
        "print(os.getpid(), flush=True)\n"
        "try:\n"
        "    time.sleep(120)\n"
        "except KeyboardInterrupt as e:  # Terminated\n"
        "    open(sys.argv[1], 'w').write(type(e).__name__)\n")
    # The parent: starts the child, then waits to be killed.
    middle = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, {str(child)!r}, {str(tmp_path / 'why')!r}])\n"
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    pid = int(middle.stdout.readline())  # type: ignore[union-attr]
    try:
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait(timeout=30)
        wait_until(lambda: not alive(pid), "the orphan to stop", timeout=15, every=0.05)
        assert (tmp_path / "why").read_text() == "Terminated"
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
