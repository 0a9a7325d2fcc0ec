"""A study on a supernet runs on the fast path (trials in memory, stored in batches): same trials as the
standard worker loop, resumable after an interruption, shared by several workers."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter

import optuna
import pytest
import torch
from conftest import NAS, TINY_OPTIONS, nas_cli, wait_until

import nas.search
from nas.workers import work
from storage import Store

torch.set_num_threads(1)

TRAIN = ["supernet", "train", "sn", "--space", "plain", *TINY_OPTIONS, "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding supernet 'sn' of the tiny plain space, trained 1 epoch."""
    url = f"sqlite:///{tmp_path_factory.mktemp('supernet_fast') / 'nas.db'}"
    code, _, err = nas_cli(*TRAIN, "--storage", url)
    assert code == 0, err
    return url


def _create(name: str, url: str, trials: int, budget: str = "params<=3k") -> None:
    # The supernet's whole space (no fitting to the budget): rejections over the budget are part of what is stored.
    code, _, err = nas_cli("study", "create", name, "--supernet", "sn", "--budget", budget, "--trials", str(trials),
                           "--no-fit-space", "--storage", url)
    assert code == 0, err


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    store = Store(url)
    try:
        return optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    finally:
        store.close()


def _counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("status") == "supernet"
               for t in trials)


def _numbers_unique(trials: list[optuna.trial.FrozenTrial]) -> None:
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no gap, no duplicate
    keys = Counter((t.datetime_start, tuple(sorted(t.params.items()))) for t in trials)
    assert max(keys.values()) == 1  # no trial stored twice


def test_a_supernet_study_stores_the_trials_the_standard_loop_stores(trained: str) -> None:
    _create("fast", trained, 30, budget="params<=1500")
    code, out, err = nas_cli("study", "run", "fast", "--quiet", "--storage", trained)
    assert code == 0, err
    assert "30/30 within budget (30 evaluated on the supernet)" in out
    _create("standard", trained, 30, budget="params<=1500")
    assert work("standard", trained, fast=False) > 0
    fast, standard = _trials("fast", trained), _trials("standard", trained)
    assert _counted(fast) == _counted(standard) == 30
    _numbers_unique(fast)
    assert any(t.user_attrs["status"] == "over_budget" for t in fast)  # rejections stored, not counted

    def shape(t: optuna.trial.FrozenTrial) -> tuple:
        return (t.state, t.user_attrs["status"], tuple(sorted(set(t.user_attrs) - {"inherited_reused"})),
                tuple(sorted(t.system_attrs)), tuple(sorted(t.params)), len(t.values or []),
                t.datetime_complete is not None)

    assert {shape(t) for t in fast} == {shape(t) for t in standard}
    for t in fast:
        assert t.user_attrs["spec_hash"] and t.user_attrs["cost"]["params"] > 0 and t.user_attrs["worker"]
        constraints = t.constraints.values() if isinstance(t.constraints, dict) else t.constraints
        assert constraints and t.system_attrs["constraints"]  # Optuna's and the dashboard's forms
        assert all(c <= 0 for c in constraints) == (t.user_attrs["status"] == "supernet")
        if t.user_attrs["status"] == "supernet":
            assert t.user_attrs["accuracy_source"] == "supernet sn"
            assert t.values[0] == t.user_attrs["val_accuracy"]
    # Same sampler, seed and history: the fast path draws what the standard loop draws.
    assert [t.params for t in fast] == [t.params for t in standard]
    code, out, err = nas_cli("pareto", "fast", "--format", "json", "--storage", trained)
    assert code == 0, err
    assert {r["accuracy_source"] for r in json.loads(out)} == {"supernet sn"}
    code, out, err = nas_cli("study", "show", "fast", "--storage", trained)
    assert code == 0 and "30/30 within budget" in out, err


def test_an_interrupted_run_keeps_its_stored_trials_and_a_rerun_completes(trained: str, monkeypatch) -> None:
    _create("stopped", trained, 40)
    stop = threading.Event()
    assert work("stopped", trained, stop=stop, callback=stop.set) > 0  # stopped after its first batch
    first = _trials("stopped", trained)
    assert 0 < _counted(first) < 40
    _numbers_unique(first)

    # Ctrl-C during a trial's evaluation: the batch's finished trials are stored, then it is raised.
    real, calls = nas.search.TrialObjective.__call__, [0]

    def interrupt_the_fifth(self, trial):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return real(self, trial)

    monkeypatch.setattr(nas.search.TrialObjective, "__call__", interrupt_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        work("stopped", trained)
    second = _trials("stopped", trained)
    assert len(second) == len(first) + 4 and [t.number for t in second[:len(first)]] == [t.number for t in first]
    _numbers_unique(second)
    monkeypatch.setattr(nas.search.TrialObjective, "__call__", real)

    code, out, err = nas_cli("study", "run", "stopped", "--quiet", "--storage", trained)
    assert code == 0, err
    final = _trials("stopped", trained)
    assert _counted(final) == 40 and "40/40 within budget" in out
    _numbers_unique(final)
    assert [t.params for t in final[:len(second)]] == [t.params for t in second]


def test_two_workers_share_a_supernet_study(trained: str) -> None:
    _create("shared", trained, 60)
    ran: list[int] = []
    errors: list[BaseException] = []

    def one(worker: int) -> None:
        try:
            ran.append(work("shared", trained, worker=worker))
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(ran) == 2
    trials = _trials("shared", trained)
    assert _counted(trials) == 60  # reserved slots: not over the target
    assert sum(ran) == len(trials)
    _numbers_unique(trials)


def test_ctrl_c_on_a_supernet_study_says_what_was_kept(trained: str) -> None:
    """A real `nas study run` process interrupted mid-study: the evaluated subnets are stored, the message
    says so (not the standard loop's "failed and queued again"), and the process ends by SIGINT (a shell's 130)."""
    _create("ctrlc", trained, 100_000)
    proc = subprocess.Popen([NAS, "study", "run", "ctrlc", "--quiet", "--storage", trained],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _counted(_trials("ctrlc", trained)) >= 1 or proc.poll() is not None,
                   "a first batch stored")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGINT, err
    assert "the subnets evaluated were stored, the one in evaluation dropped" in err
    assert "failed and queued again" not in err
    _numbers_unique(_trials("ctrlc", trained))


def test_a_second_study_starts_from_the_subnets_evaluated_before(trained: str) -> None:
    """Another budget on the same supernet weights: subnets any study evaluated before that fit its space and
    budget fill up to half its slots, the best first, read back (not evaluated again), never twice on a rerun."""
    from nas.search import pareto_mask

    _create("wide", trained, 40, budget="params<=6k")
    assert nas_cli("study", "run", "wide", "--quiet", "--storage", trained)[0] == 0
    known = {t.user_attrs["spec_hash"]: (t.values[0], t.user_attrs["cost"]["params"])
             for name in optuna.get_all_study_names(trained) for t in _trials(name, trained)
             if t.user_attrs.get("status") == "supernet"}  # every study's on this supernet (same weights)
    fitting = {h: v for h, v in known.items() if v[1] <= 3000}
    assert len(fitting) >= 4  # the test needs stored subnets within the second budget

    _create("narrow", trained, 20, budget="params<=3k")
    code, out, err = nas_cli("study", "run", "narrow", "--quiet", "--storage", trained)
    assert code == 0 and "20/20 within budget" in out, err
    trials = _trials("narrow", trained)
    seeded = [t for t in trials if "warm_start" in t.user_attrs]
    assert len(seeded) == min(10, len(fitting))  # half the slots at most
    assert [t.number for t in seeded] == list(range(len(seeded)))  # they run first
    for t in seeded:
        assert t.user_attrs["warm_start"] == "evaluated before on supernet sn"
        assert t.user_attrs["status"] == "supernet" and t.user_attrs["inherited_reused"] is True
        assert t.user_attrs["cost"]["params"] <= 3000
        assert t.values[0] == known[t.user_attrs["spec_hash"]][0]  # the stored accuracy, read back
    assert len({t.user_attrs["spec_hash"] for t in seeded}) == len(seeded)
    # the front of what fitted comes first: its members are all seeded when there is room
    hashes = list(fitting)
    front = [h for h, k in zip(hashes, pareto_mask([[-fitting[h][0], fitting[h][1]] for h in hashes]), strict=True)
             if k]
    if len(front) <= len(seeded):
        assert set(front) <= {t.user_attrs["spec_hash"] for t in seeded}

    # Two workers on a new study: seeded once (by one of them), no subnet twice; a rerun does not seed again.
    known = {t.user_attrs["spec_hash"]: t.values[0] for name in optuna.get_all_study_names(trained)
             for t in _trials(name, trained) if t.user_attrs.get("status") == "supernet"
             and t.user_attrs["cost"]["params"] <= 3000}
    _create("narrow2", trained, 20, budget="params<=3k")
    done: list[int] = []
    threads = [threading.Thread(target=lambda i=i: done.append(work("narrow2", trained, worker=i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(done) == 2
    seeded = [t.user_attrs["spec_hash"] for t in _trials("narrow2", trained) if "warm_start" in t.user_attrs]
    # one worker seeded (the mark says how many it queued); the other may fill the slots first, so at most that many
    # ran, each once
    store = Store(trained)
    try:
        study_id = store.optuna.get_study_id_from_name("narrow2")
        mark = store.optuna.get_study_system_attrs(study_id)["lightnas:seeded"]
    finally:
        store.close()
    assert mark == min(10, len(known)) and len(seeded) <= mark and len(set(seeded)) == len(seeded)
    code, _, err = nas_cli("study", "run", "narrow2", "--trials", "30", "--quiet", "--storage", trained)
    assert code == 0, err
    again = _trials("narrow2", trained)
    assert _counted(again) == 30 and sum("warm_start" in t.user_attrs for t in again) == len(seeded)
    _numbers_unique(again)


def test_the_progress_shown_from_the_workers_trials_is_the_stored_studys(trained: str) -> None:
    from nas.workers import progress

    _create("shown", trained, 30, budget="params<=3k")
    seen: list = []
    store = Store(trained)
    try:
        work("shown", trained, on_trials=lambda ts: seen.append(progress("shown", store, trials=ts)))
        stored = progress("shown", store)
    finally:
        store.close()
    assert len(seen) >= 2 and seen[-1] == stored and stored.finished == 30
    assert [p.finished for p in seen] == sorted(p.finished for p in seen)  # it grows batch by batch
