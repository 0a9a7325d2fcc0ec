"""The Ray Tune backend (``nas study run --backend ray``): real local Ray, real trials.

Two tests start Ray (about 6 s and 1 GB each): an in-process run on PostgreSQL (budget
rejection, evaluations and weights, Pareto, ASHA early stopping) and an interrupted CLI run
resumed by rerunning the command. The argument checks never start Ray.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import NAS, add_known_result, trials_of
from optuna.trial import TrialState

from nas import weights_key
from nas.search import create_study, make_spec
from nas.workers.ray import RayOptions, absolute_url, experiment_dir, run_ray
from storage import Store, normalize_url

TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0, 32)}


def new_study(url: str, name: str, **fields) -> None:
    base = {"name": name, "space": "plain", "data": "digits", "space_options": TINY, "device": "cpu", "seed": 0,
            "fidelity": {"epochs": 2, "train_fraction": 0.3}}
    store = Store(url)
    try:
        create_study(make_spec(**{**base, **fields}), store)
    finally:
        store.close()


def states(trials: list[optuna.trial.FrozenTrial]) -> collections.Counter[str]:
    return collections.Counter(t.state.name for t in trials)


# ------------------------------------------------------------------------------- no Ray started
@pytest.mark.parametrize(("args", "needle"), [
    (["--backend", "foo"], "--backend: got 'foo'; accepted: local, ray"),
    (["--address", "127.0.0.1:6379"], "--address: only with --backend ray"),
    (["--max-concurrent", "2"], "--max-concurrent: only with --backend ray"),
    (["--backend", "ray", "--max-concurrent", "0"], "--max-concurrent: must be an integer >= 1, got 0"),
    (["--backend", "ray", "--cpus-per-trial", "-1"], "--cpus-per-trial: must be a number > 0, got -1"),
    (["--backend", "ray", "--gpus-per-trial", "-0.5"], "--gpus-per-trial: must be a number >= 0"),
    (["--backend", "ray", "--workers", "2"], "--workers: only with --backend local"),
])
def test_bad_backend_arguments_exit_2_in_one_line(tmp_path, capsys, args, needle):
    from nas.cli import main

    url = f"sqlite:///{tmp_path}/never.db"
    with pytest.raises(SystemExit) as exc:
        main(["study", "run", "s", *args, "--storage", url])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "never.db").exists()  # rejected before touching storage
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized()


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from nas import NasError

    url = f"sqlite:///{tmp_path}/s.db"
    new_study(url, "s", budget="params<=5k")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "ray" else real(name, *a))
    store = Store(url)
    try:
        with pytest.raises(NasError, match=r'pip install "lightnas\[ray\]"'):
            run_ray("s", store)
    finally:
        store.close()


# ------------------------------------------------------------------------------- real Ray
# (conftest's local_ray fixture)
@pytest.mark.slow
@pytest.mark.postgres
def test_ray_run_meets_target_with_budget_reuse_pareto_and_asha(fresh_postgres_url, local_ray):
    from nas.search import pareto_rows

    url = fresh_postgres_url
    # (a) Two objectives, a budget that rejects part of the space, 6 trials, 2 at a time.
    new_study(url, "mo", budget="params<=5k", trials=6)
    store = Store(url)
    seen: list[int] = []
    try:
        t0 = time.perf_counter()
        p = run_ray("mo", store, options=RayOptions(max_concurrent=2), on_progress=lambda p: seen.append(p.finished))
        print(f"ray run of 6 trials: {time.perf_counter() - t0:.1f} s")
        assert p.finished == p.complete - p.rejected == 6 and p.target == 6
        trials = trials_of(url, "mo")
        assert states(trials) == {"COMPLETE": 6 + p.rejected}  # rejected over budget: complete, not counted
        assert sorted(t.number for t in trials) == list(range(6 + p.rejected))
        ray_ids = [t.user_attrs["ray_trial_id"] for t in trials]
        assert len(set(ray_ids)) == 6 + p.rejected
        assert all(t.user_attrs["worker"].startswith("ray:") and "/ray/mo-" in t.user_attrs["worker"] for t in trials)
        spec_key = make_spec(name="mo", space="plain", budget="params<=5k", space_options=TINY, device="cpu",
                             fidelity={"epochs": 2, "train_fraction": 0.3}).fidelity_key
        over = [t for t in trials if t.user_attrs["status"] == "over_budget"]
        trained = [t for t in trials if t.user_attrs["status"] == "trained"]
        assert over and trained, [t.user_attrs["status"] for t in trials]
        for t in over:  # rejected before training: no training record, no evaluation
            assert t.values[0] == 0.0 and t.user_attrs["violations"]["params"] > 0
            assert "train_seconds" not in t.user_attrs and "epochs_run" not in t.user_attrs
            assert store.get_evaluation(t.user_attrs["spec_hash"], spec_key) is None
        for t in trained:
            ev = store.get_evaluation(t.user_attrs["spec_hash"], spec_key)
            assert ev is not None and ev.val_accuracy == t.values[0] and ev.epochs_run == 2
            assert store.get_artifact(weights_key(t.user_attrs["spec_hash"], spec_key))
            assert t.user_attrs["cost"]["params"] <= 5000
        front = pareto_rows("mo", store, with_test=False)
        assert front and {r["trial"] for r in front} <= {t.number for t in trained}
        assert seen and seen[-1] == 6
        assert not experiment_dir("mo", absolute_url(store.url)).exists()  # done: a later, higher target starts afresh

        # Early stopping: single objective accuracy with ASHA -> stopped trials are PRUNED, untold
        # partial training leaves no evaluation.
        new_study(url, "so", objectives=["accuracy"], pruner="asha", trials=8,
                  fidelity={"epochs": 4, "train_fraction": 0.3})
        p = run_ray("so", store, options=RayOptions(max_concurrent=2))
        assert p.finished == 8
        trials = trials_of(url, "so")
        counts = states(trials)
        assert counts["COMPLETE"] + counts["PRUNED"] == 8 and counts["RUNNING"] == 0
        fkey = make_spec(name="so", space="plain", objectives=["accuracy"], pruner="asha", space_options=TINY,
                         device="cpu", fidelity={"epochs": 4, "train_fraction": 0.3}).fidelity_key
        for t in trials:
            ev = store.get_evaluation(t.user_attrs["spec_hash"], fkey)
            if t.state == TrialState.PRUNED:
                assert t.user_attrs["status"] == "pruned" and 1 <= t.user_attrs["epochs_run"] < 4
                assert t.intermediate_values[t.user_attrs["epochs_run"]] == t.user_attrs["val_accuracy"]
                assert ev is None or ev.epochs_run == 4  # only a full training (another trial) is stored
            else:
                assert t.user_attrs["status"] in ("trained", "reused") and ev is not None and ev.epochs_run == 4
        print(f"asha: {dict(counts)}")

        # Pareto-aware early stopping in a multi-objective study: the same rule as local workers,
        # inside the trainable; a stopped trial is PRUNED with its partial curve.
        new_study(url, "pe", budget="params<=20k", pruner="pareto", trials=4,
                  fidelity={"epochs": 3, "train_fraction": 0.3}, early_stop={"rungs": [1], "margin": 0.0})
        best = add_known_result(store, "pe", epochs=3)  # perfect and free: every trained network is dominated
        p = run_ray("pe", store, options=RayOptions(max_concurrent=2))
        trials = trials_of(url, "pe")
        stopped = [t for t in trials if t.state == TrialState.PRUNED]
        assert p.finished == 4 and states(trials)["RUNNING"] == 0 and stopped
        for t in stopped:
            assert t.user_attrs["stopped_by"]["trial"] == best and t.user_attrs["epochs_run"] == 1
            assert len(t.user_attrs["curve"]) == 1 and t.user_attrs["ray_trial_id"]
        assert all(t.user_attrs["status"] == "over_budget" for t in trials
                   if t.state == TrialState.COMPLETE and t.number != best)
    finally:
        store.close()


@pytest.mark.slow
def test_interrupted_ray_run_resumes_on_rerun(tmp_path, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path}/nas.db"
    new_study(url, "resume", objectives=["accuracy", "params"], trials=6,
              fidelity={"epochs": 4, "train_fraction": 0.5})
    env = dict(os.environ)
    env.pop("NAS_STORAGE", None)
    cmd = [NAS, "study", "run", "resume", "--backend", "ray", "--max-concurrent", "2", "--quiet", "--storage", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while states(trials_of(url, "resume"))["COMPLETE"] < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no 2 complete trials within 180 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGINT, (out, err)  # after its message, ended by the SIGINT (nas.cli.entry)
    assert "rerun the same command to resume" in err and err.count("Traceback") == 0, err
    before = {t.number: t for t in trials_of(url, "resume")}
    interrupted = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert 2 <= states(before.values())["COMPLETE"] < 6
    print(f"interrupted with trials {interrupted} running")
    path = experiment_dir("resume", absolute_url(normalize_url(url)))
    assert path.parent == tmp_path / "home" / "ray" and path.exists()

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "6/6 within budget" in r.stdout
    assert "resuming the interrupted Ray Tune experiment" in r.stderr, r.stderr
    after = trials_of(url, "resume")
    counts = states(after)
    assert counts["COMPLETE"] == 6 and counts["RUNNING"] == 0, counts
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len({t.number for t in complete}) == 6
    assert len({t.user_attrs["ray_trial_id"] for t in complete}) == 6  # no Tune trial told twice
    for n in interrupted:  # the restored Tune trial finished its own Optuna trial
        t = next(x for x in after if x.number == n)
        assert t.state == TrialState.COMPLETE and t.user_attrs["ray_trial_id"] == before[n].user_attrs["ray_trial_id"]
    assert not path.exists()


@pytest.mark.slow
def test_ray_run_trains_the_candidates_a_proxy_picked(sqlite_url, local_ray):
    """Issue 18: proxy-guided sampling in the Ray driver's searcher; the trainables train the pick."""
    new_study(sqlite_url, "px", budget="params<=5k", trials=3, sampler="tpe", proxy="synflow", proxy_candidates=3)
    store = Store(sqlite_url)
    try:
        p = run_ray("px", store, options=RayOptions(max_concurrent=1))
        assert p.finished == 3
        picked = [t for t in trials_of(sqlite_url, "px") if "proxy_pick" in t.user_attrs]
        assert picked and all(t.user_attrs["spec_hash"] == t.user_attrs["proxy_pick"]["spec_hash"] for t in picked)
        assert all(t.user_attrs["status"] in ("trained", "reused", "over_budget") for t in picked)
    finally:
        store.close()
