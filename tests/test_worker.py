"""Long-running workers and fault tolerance: real processes, real PostgreSQL, real signals.

* ``nas worker`` picks studies with work left, waits when there is none, exits 0 on SIGTERM
  after cleanly failing (and re-queueing) the trial it was training;
* ``kill -9`` of workers in the middle of trials: the study still ends with exactly its target
  of complete trials, every one intact, the killed ones failed and retried;
* PostgreSQL restarted while workers run: they wait, reconnect and finish;
* 4 workers on one PostgreSQL study of 100 trials: 100 complete, no errors, never more.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import WAIT, create_studies, nas_here, trials_of, wait_until
from optuna.trial import TrialState

from nas import weights_key
from nas.search import create_study, get_study_spec, make_spec
from nas.workers import run_study
from storage import Store

# Distinct architectures are many (so trials really train) and each trains for about a second.
SPACE = {"max_depth": 2, "widths": (8, 16, 24), "kernels": (3,), "hidden": (0, 32), "rank_ratios": (1.0, 0.5)}
# Few distinct architectures and one short epoch: most trials are reuses or rejections (fast).
FAST = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0, 0.5)}



def spec(name: str, trials: int, *, epochs: int = 4, options: dict | None = None, **kw):
    fields = dict(name=name, space="plain", data="digits", budget="params<=60k", trials=trials, seed=1,
                  sampler="random", space_options=options or SPACE, device="cpu",
                  fidelity={"epochs": epochs, "train_fraction": 0.5, "batch_size": 64})
    fields.update(kw)
    return make_spec(**fields)


create = create_studies


def start_worker(url: str, *args: str, log: Path, heartbeat: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas.cli", "worker", *args, "--storage", url, "--heartbeat", str(heartbeat),
           "--poll-max", "1", "--threads", "1"]
    fh = open(log, "a")  # noqa: SIM115 -- closed with the process
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)



def wait_all(ps: list[subprocess.Popen], log: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    for p in ps:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {p.pid} still running; log:\n{log.read_text()[-3000:]}") from None
        assert p.returncode == 0, f"worker {p.pid} exited {p.returncode}; log:\n{log.read_text()[-3000:]}"


def assert_intact(url: str, name: str, target: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` complete trials within the budget (rejected ones besides), unique
    numbers, each with its values, cost and status; trained ones have their evaluation and weights
    in the store; nothing left running or queued."""
    trials = trials_of(url, name)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sum(t.user_attrs.get("status") != "over_budget" for t in complete) == target
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    store = Store(url)
    try:
        fkey = get_study_spec(name, store).fidelity_key
        for t in complete:
            assert t.values is not None and len(t.values) == 2
            assert t.user_attrs["status"] in ("trained", "reused", "over_budget")
            assert "hw_cost" in t.user_attrs["cost"] and t.user_attrs["spec_hash"]
            if t.user_attrs["status"] != "over_budget":
                ev = store.get_evaluation(t.user_attrs["spec_hash"], fkey)
                assert ev is not None and ev.val_accuracy == pytest.approx(t.values[0])
            if t.user_attrs["status"] == "trained":
                assert store.get_artifact(weights_key(t.user_attrs["spec_hash"], fkey))
    finally:
        store.close()
    return trials


def training_trial(url: str, name: str, steady: float = 0.0) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial that is past its budget check and training (cost known, no status yet).

    With ``steady`` > 0, only one seen so in two reads that many seconds apart: an over-budget or
    reused trial passes through that state in milliseconds, a long training does not.
    """

    def candidates() -> dict[int, optuna.trial.FrozenTrial]:
        return {t.number: t for t in trials_of(url, name)
                if t.state == TrialState.RUNNING and "cost" in t.user_attrs and "status" not in t.user_attrs
                and "worker" in t.user_attrs}

    first = candidates()
    if not first or steady <= 0:
        return next(iter(first.values()), None)
    time.sleep(steady)
    return next((t for n, t in candidates().items() if n in first), None)


# ------------------------------------------------------------------------------------------ tests


def test_bad_arguments_exit_2_with_one_line(sqlite_url, tmp_path):
    create(sqlite_url, spec("known", 2))
    for args, needle in [(["nope"], "unknown study 'nope'; studies here: known"),
                         (["--heartbeat", "0"], "--heartbeat: must be >= 1"),
                         (["--threads", "0"], "--threads: must be >= 1")]:
        res = nas_here("worker", *args, "--storage", sqlite_url, "--until-done", cwd=tmp_path, check=False)
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = nas_here("worker", "--storage", "mysql://x/y", cwd=tmp_path, check=False)
    assert res.returncode == 2 and "unsupported database" in res.stderr


@pytest.mark.slow
def test_worker_without_names_waits_for_work_and_stops_cleanly_on_sigterm(sqlite_url, tmp_path, procs):
    log = tmp_path / "worker.log"
    Store(sqlite_url).close()  # an empty database: the worker has nothing to do yet
    w = start_worker(sqlite_url, log=log)
    procs.append(w)
    wait_until(lambda: "worker started" in log.read_text(), "the worker to start")
    # Two studies appear after it started on an empty database (an API would do this): that it
    # meets the first one's target shows it waited for work instead of exiting. It takes the older first.
    create(sqlite_url, spec("first", 3, epochs=1, options=FAST, budget="params<=15k"), spec("long", 50, epochs=30))
    wait_until(lambda: sum(t.user_attrs.get("status") in ("trained", "reused") for t in trials_of(sqlite_url, "first"))
               == 3, "study 'first' to meet its target (3 networks within its budget)")
    t = wait_until(lambda: training_trial(sqlite_url, "long", steady=0.5), "a trial of 'long' to be training")
    w.send_signal(signal.SIGTERM)
    w.wait(timeout=120)
    assert w.returncode == 0, log.read_text()
    stopped = next(x for x in trials_of(sqlite_url, "long") if x.number == t.number)  # type: ignore[union-attr]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("worker stopping: interrupted after epoch")
    queued = [x for x in trials_of(sqlite_url, "long") if x.state == TrialState.WAITING]
    assert [x.system_attrs["failed_trial"] for x in queued] == [stopped.number]
    assert queued[0].params == stopped.params and not queued[0].user_attrs  # a clean retry
    assert "SIGTERM" in log.read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_workers_mid_trial_loses_and_duplicates_nothing(fresh_postgres_url, tmp_path, procs):
    url, target, kills = fresh_postgres_url, 20, 3
    create(url, spec("faults", target))
    log = tmp_path / "workers.log"
    # heartbeat 3 s (grace 9 s): a survivor starved of the CPU for a moment must not look dead
    procs.extend(start_worker(url, "faults", "--until-done", log=log, heartbeat=3) for _ in range(2))
    killed: list[int] = []
    while len(killed) < kills:
        live = {p.pid: p for p in procs if p.poll() is None}
        if not live:
            break  # the study finished before all kills happened (fast machine): the kills so far count
        t = wait_until(lambda live=live: not any(p.poll() is None for p in live.values()) or (
            (x := training_trial(url, "faults")) and x.number not in killed
            and int(x.user_attrs["worker"].rsplit(":", 1)[1]) in live and x), "a trial in training")
        if t is True:
            continue
        victim = live[int(t.user_attrs["worker"].rsplit(":", 1)[1])]  # type: ignore[union-attr]
        # Frozen first, then looked at: the trial cannot finish (and the worker start its next one)
        # between the look and the kill.
        victim.send_signal(signal.SIGSTOP)
        now = next(x for x in trials_of(url, "faults") if x.number == t.number)  # type: ignore[union-attr]
        if now.state != TrialState.RUNNING:  # it finished between the poll and the freeze
            victim.send_signal(signal.SIGCONT)
            continue
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed.append(now.number)
        procs.append(start_worker(url, "faults", "--until-done", log=log, heartbeat=3))  # a replacement joins
    wait_all([p for p in procs if p.returncode is None or p.returncode == 0], log)
    trials = assert_intact(url, "faults", target)
    by_number = {t.number: t for t in trials}
    for n in killed:
        assert by_number[n].state == TrialState.FAIL  # failed by a survivor once its heartbeat went stale
        retries = [t for t in trials if t.system_attrs.get("retry_history", [])[-1:] == [n]]
        assert len(retries) == 1 and retries[0].params == by_number[n].params
    # Every killed trial's parameters were evaluated in the end (a retry of a retry included).
    for n in killed:
        chain = [t for t in trials if n in t.system_attrs.get("retry_history", [])]
        assert any(t.state == TrialState.COMPLETE for t in chain)
    assert killed and sum(t.state == TrialState.FAIL for t in trials) == len(killed)


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_ride_out_a_postgresql_restart(private_postgres, tmp_path, procs):
    url, target = private_postgres.url, 10
    create(url, spec("restart", target, epochs=3))
    log = tmp_path / "workers.log"
    procs.extend(start_worker(url, "restart", "--until-done", log=log) for _ in range(2))
    wait_until(lambda: sum(t.state == TrialState.COMPLETE for t in trials_of(url, "restart")) >= 2,
               "two complete trials")
    wait_until(lambda: training_trial(url, "restart"), "a trial in training")
    private_postgres.shutdown()
    # Workers meet the dead database (training goes on, heartbeats and tells fail) and stay up.
    wait_until(lambda: "database unavailable" in log.read_text(), "a worker to meet the dead database")
    assert all(p.poll() is None for p in procs), log.read_text()
    private_postgres.start_again()
    wait_all(procs, log)
    assert_intact(url, "restart", target)
    assert "database unavailable" in log.read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_make_exactly_one_hundred_trials(fresh_postgres_url, tmp_path, procs):
    url = fresh_postgres_url
    create(url, spec("hundred", 100, epochs=1, options=FAST, budget="params<=15k"))
    log = tmp_path / "workers.log"
    # heartbeat 5 s: 4 processes on 2 cores must not look dead to each other under CI load
    procs.extend(start_worker(url, "hundred", "--until-done", log=log, heartbeat=5) for _ in range(4))
    wait_all(procs, log, timeout=600)
    trials = assert_intact(url, "hundred", 100)
    assert not [t for t in trials if t.state != TrialState.COMPLETE]  # no errors, no extra trials
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, log.read_text()[-2000:]  # shared, not serial


@pytest.mark.slow
def test_local_pruner_stops_poor_trials_and_they_count_towards_the_target(sqlite_url):
    store = Store(sqlite_url)
    try:
        create_study(spec("pruned", 10, epochs=4, objectives=["accuracy"], budget="", pruner="asha"), store)
        p = run_study("pruned", store)
        trials = optuna.load_study(study_name="pruned", storage=store.optuna).get_trials()
    finally:
        store.close()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert p.finished == 10 and p.pruned == len(pruned) >= 1
    for t in pruned:
        assert t.user_attrs["status"] == "pruned" and t.user_attrs["epochs_run"] < 4
        assert t.intermediate_values  # the accuracies the pruner judged


@pytest.mark.slow
def test_ctrl_c_on_study_run_fails_the_trial_cleanly_and_a_rerun_resumes(sqlite_url, tmp_path):
    create(sqlite_url, spec("ctrlc", 4, epochs=30))
    cmd = [sys.executable, "-m", "nas.cli", "study", "run", "ctrlc", "--storage", sqlite_url, "--quiet"]
    # As from a terminal: Ctrl-C sends SIGINT to the whole foreground group, here a shell script
    # whose next command must not run. SIGINT at its default: a test run started from a
    # backgrounded shell would hand the script SIGINT *ignored* (a shell's rule for `&` jobs).
    script = f"{shlex.join(cmd)}; echo next command ran"
    run = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t = wait_until(lambda: training_trial(sqlite_url, "ctrlc", steady=0.5), "a trial in training")
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    # The run stopped cleanly (its message; the trial failed and queued again, below), then ended
    # by the SIGINT as CPython ends an interrupted program (nas.cli.entry), so the script stopped
    # too; an exit(130) would have let it go on.
    assert "rerun the same command to resume" in err and "Traceback" not in err, err
    assert "next command ran" not in out and run.returncode == -signal.SIGINT, (out, err)
    stopped = next(x for x in trials_of(sqlite_url, "ctrlc") if x.number == t.number)  # type: ignore[union-attr]
    assert stopped.state == TrialState.FAIL and "SIGINT" in stopped.user_attrs["fail_reason"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    trials = assert_intact(sqlite_url, "ctrlc", 4)
    assert any(x.system_attrs.get("failed_trial") == stopped.number and x.state == TrialState.COMPLETE
               for x in trials)


def test_a_result_told_after_another_worker_failed_the_trial_as_stale_is_not_an_error(sqlite_url):
    """A worker cut off from the database (partition, outage) finishes training while another
    worker fails its trial as stale and queues the retry: telling the result must not crash the
    worker nor queue a second retry."""
    from nas.workers import StudyWorker

    create(sqlite_url, spec("stale", 3, epochs=1, options=FAST, budget="params<=15k"))
    store = Store(sqlite_url, heartbeat_interval=1, grace_period=3)
    try:
        sw = StudyWorker("stale", store)
        trial = sw.claim()
        assert trial is not None
        # What fail_stale_trials + the retry callback do on another worker:
        store.optuna.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        sw.retry(sw.study, store.optuna.get_trial(trial._trial_id))
        frozen = sw._finish(trial, TrialState.COMPLETE, [0.9, 0.1], "", False)
        assert frozen.state == TrialState.FAIL
        frozen = sw._finish(trial, TrialState.FAIL, None, "worker stopping", True)
        assert frozen.state == TrialState.FAIL
        waiting = [t for t in trials_of(sqlite_url, "stale") if t.state == TrialState.WAITING]
        assert [t.system_attrs["failed_trial"] for t in waiting] == [trial.number]  # one retry, not two
    finally:
        store.close()


def test_a_trial_abandoned_before_its_first_heartbeat_is_found_and_requeued(sqlite_url):
    from nas.workers import StudyWorker

    create(sqlite_url, spec("nohb", 3, epochs=1, options=FAST, budget="params<=15k"))
    store = Store(sqlite_url, heartbeat_interval=1, grace_period=3)
    try:
        sw = StudyWorker("nohb", store)
        orphan = sw.study.ask()  # a process killed right after ask(): RUNNING, no heartbeat row
        assert store.running_without_heartbeat("nohb", older_than=3600) == []  # too young yet
        assert store.running_without_heartbeat("nohb", older_than=0) == [orphan._trial_id]
        sw._fail_and_requeue(orphan._trial_id, "abandoned before its first heartbeat")
        trials = trials_of(sqlite_url, "nohb")
        assert trials[orphan.number].state == TrialState.FAIL
        assert [t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING] == [orphan.number]
    finally:
        store.close()


@pytest.mark.postgres
def test_only_an_unreachable_database_counts_as_an_outage(postgres_url):
    """Workers wait out outages but must fail fast on errors that waiting cannot fix."""
    from lightnas_pg import free_port
    from sqlalchemy.engine import make_url

    from storage import StorageError, is_transient

    refused = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    missing = make_url(postgres_url).set(database="no_such_database_here").render_as_string(hide_password=False)
    for url, transient in [(refused, True), (missing, False)]:
        with pytest.raises(StorageError) as info:
            Store(url)
        assert is_transient(info.value) is transient, str(info.value)
