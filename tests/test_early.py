"""Pareto-aware early stopping (``--pruner pareto``): the rule, the study settings, and real searches."""

from __future__ import annotations

import optuna
import pytest
from conftest import add_known_result, trials_of
from optuna.trial import TrialState

from nas import NasError, weights_key
from nas.cli import main
from nas.search import EarlyStop, Peer, best_by, create_study, dominators, make_spec, pareto_rows, peers_of, rung_epochs
from nas.workers import run_study
from storage import Store

TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0, 32)}


# ------------------------------------------------------------------------------- the rule


def peer(n: int, hw: float, curve: list[float]) -> Peer:
    return Peer(n, {"hw_cost": hw}, tuple(curve))


def test_a_cheaper_peer_clearly_better_at_the_same_epoch_dominates():
    peers = [peer(1, 0.2, [0.5, 0.9, 0.9]), peer(2, 0.8, [0.9, 0.99, 0.99]), peer(3, 0.3, [0.6, 0.7])]
    # Trial of cost 0.5 at 0.75 after epoch 2: only peer 1 is cheaper *and* 0.1 better by epoch 2.
    found = dominators(2, [0.4, 0.75], {"hw_cost": 0.5}, peers, ["hw_cost"], 0.1)
    assert [(p.number, acc) for p, acc in found] == [(1, 0.9)]
    # A costlier peer never stops a cheaper trial, however good it is.
    assert dominators(2, [0.1, 0.1], {"hw_cost": 0.1}, peers, ["hw_cost"], 0.1) == []
    # The margin is inclusive and "better by that epoch" is the best so far, on both sides.
    assert [p.number for p, _ in dominators(2, [0.8, 0.7], {"hw_cost": 0.5}, peers, ["hw_cost"], 0.1)] == [1]
    assert dominators(2, [0.81, 0.7], {"hw_cost": 0.5}, peers, ["hw_cost"], 0.1) == []
    # A tie is not "clearly better", even at margin 0: equals never stop each other.
    assert dominators(2, [0.5, 0.9], {"hw_cost": 0.5}, peers, ["hw_cost"], 0.0) == []
    # A peer whose curve is shorter than the epoch (still running, or stopped earlier) says nothing.
    assert dominators(3, [0.1, 0.1, 0.1], {"hw_cost": 0.5}, [peer(3, 0.3, [0.6, 0.7])], ["hw_cost"], 0.1) == []
    # With several cost objectives a peer must be no higher in every one.
    mixed = [Peer(5, {"flops": 1.0, "params": 9.0}, (0.99,))]
    assert dominators(1, [0.1], {"flops": 2.0, "params": 5.0}, mixed, ["flops", "params"], 0.0) == []
    assert dominators(1, [0.1], {"flops": 2.0, "params": 5.0}, mixed, ["flops"], 0.0)


def test_rungs_follow_successive_halving_and_stay_before_the_last_epoch():
    assert rung_epochs(EarlyStop(), 20) == [3, 7]
    assert rung_epochs(EarlyStop(), 9) == [1, 3]
    assert rung_epochs(EarlyStop(), 1) == []
    assert rung_epochs(EarlyStop(rungs=[10, 2, 2, 30]), 20) == [2, 10]


def test_peers_leave_out_the_trial_itself_over_budget_ones_and_curves_of_another_fidelity():
    def frozen(n, status, curve):
        return optuna.trial.create_trial(values=[0.5, 0.5], user_attrs={"status": status, "curve": curve,
                                                                         "cost": {"hw_cost": 0.5}})
    ts = [frozen(0, "trained", [0.5] * 4), frozen(1, "over_budget", [0.5] * 4), frozen(2, "trained", [0.5] * 9),
          frozen(3, "pruned", [0.5, 0.6])]
    for i, t in enumerate(ts):
        t.number = i
    assert [p.number for p in peers_of(ts, exclude=0, epochs=4)] == [3]
    # One architecture is one peer (reused or re-stopped copies do not count twice), and never
    # a peer of a trial of the same architecture.
    same = [frozen(0, "trained", [0.5] * 4), frozen(1, "reused", [0.5] * 4), frozen(2, "pruned", [0.5, 0.6])]
    for i, t in enumerate(same):
        t.number = i
        t.user_attrs["spec_hash"] = "a" if i < 2 else "b"
    assert [(p.number, p.spec_hash) for p in peers_of(same, exclude=9)] == [(0, "a"), (2, "b")]
    assert [p.spec_hash for p in peers_of(same, exclude=9, spec_hash="a")] == ["b"]


# ------------------------------------------------------------------------------- the study settings


@pytest.mark.parametrize("fields, needle", [
    ({"pruner": "median"}, "use pruner 'pareto'"),
    ({"pruner": "pareto", "objectives": ["flops", "params"]}, "needs accuracy among the objectives"),
    ({"pruner": "pareto", "early_stop": {"margin": 2}}, "early_stop.margin"),
    ({"pruner": "pareto", "early_stop": {"rungs": [0]}}, "early_stop.rungs"),
    ({"pruner": "pareto", "early_stop": {"patience": 3}}, "early_stop.patience: unknown field"),
    ({"pruner": "pareto", "early_stop": {"rungs": [8]}}, "early_stop.rungs: need epochs from 1 to 7"),
    ({"pruner": "pareto", "early_stop": {"rungs": []}}, "early_stop.rungs: need epochs from 1 to 7"),
    ({"early_stop": {"margin": 0.05}}, "apply to pruner 'pareto' only"),
])
def test_bad_early_stopping_settings_name_the_field(fields, needle):
    with pytest.raises(NasError, match="") as e:
        make_spec(name="s", space="plain", budget="params<=20k", **fields)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_pareto_is_accepted_in_multi_objective_studies_and_on_the_cli(tmp_path, capsys):
    spec = make_spec(name="s", space="plain", budget="params<=20k", pruner="pareto", early_stop={"margin": 0.05})
    assert spec.objectives == ["accuracy", "hw_cost"] and spec.early_stop.margin == 0.05
    url = f"sqlite:///{tmp_path}/nas.db"
    with pytest.raises(SystemExit) as e:
        main(["study", "create", "s", "--space", "plain", "--budget", "params<=20k", "--pruner", "pareto",
              "--es-rungs", "2,x", "--storage", url])
    assert e.value.code == 2 and "--es-rungs: expected a comma list of epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["study", "create", "s", "--space", "plain", "--budget", "params<=20k", "--pruner", "pareto",
              "--es-rungs", "2,5", "--es-margin", "0.05", "--storage", url])
    assert e.value.code in (0, None)
    store = Store(url)
    try:
        from nas.search import get_study_spec

        assert get_study_spec("s", store).early_stop == EarlyStop(rungs=[2, 5], margin=0.05)
    finally:
        store.close()


# ------------------------------------------------------------------------------- real searches


def study(url: str, name: str = "es", **fields) -> Store:
    base = {"name": name, "space": "plain", "data": "digits", "budget": "params<=20k", "space_options": TINY,
            "device": "cpu", "seed": 0, "pruner": "pareto", "trials": 6,
            "fidelity": {"epochs": 4, "train_fraction": 0.3}, "early_stop": {"rungs": [2], "margin": 0.0}}
    store = Store(url)
    create_study(make_spec(**{**base, **fields}), store)
    return store


def test_a_dominated_trial_is_stopped_at_its_rung_and_recorded_pruned(storage_url):
    store = study(storage_url)
    try:
        best = add_known_result(store, "es", epochs=4, accuracy=1.0, hw_cost=0.0)  # perfect and free
        run_study("es", store)
        trials = trials_of(storage_url, "es")
        fkey = make_spec(name="es", space="plain", budget="params<=20k", space_options=TINY, device="cpu",
                         pruner="pareto", fidelity={"epochs": 4, "train_fraction": 0.3},
                         early_stop={"rungs": [2], "margin": 0.0}).fidelity_key
        finished = [t for t in trials if t.state.is_finished()]
        counted = [t for t in finished if t.state == TrialState.PRUNED or t.user_attrs.get("status") != "over_budget"]
        assert len(counted) == 6  # the target: networks within the budget (trained, reused, stopped)
        stopped = [t for t in trials if t.state == TrialState.PRUNED]
        assert stopped, [(t.state.name, t.user_attrs.get("status")) for t in trials]
        for t in stopped:
            a = t.user_attrs
            assert a["status"] == "pruned" and a["epochs_run"] == 2 and len(a["curve"]) == 2
            assert a["stopped_by"]["trial"] == best and a["stopped_by"]["epoch"] == 2
            assert a["val_accuracy"] == a["curve"][-1] and "train_seconds" not in a
            # Partial training is never stored as an evaluation to reuse.
            assert store.get_evaluation(a["spec_hash"], fkey) is None
            assert store.get_artifact(weights_key(a["spec_hash"], fkey)) is None
        # Everything within the budget was stopped (nothing beats a perfect free network), and
        # over-budget ones were rejected before training as always.
        assert {t.user_attrs["status"] for t in trials if t.state == TrialState.COMPLETE} <= {"over_budget", "trained"}
        assert all(t.user_attrs["status"] == "over_budget" for t in trials
                   if t.state == TrialState.COMPLETE and t.number != best)
        # Stopped trials are not on the front.
        assert {r["trial"] for r in pareto_rows("es", store, with_test=False)} == {best}
    finally:
        store.close()


def test_an_architecture_stopped_before_is_stopped_again_without_training(sqlite_url, monkeypatch):
    import nas.search._objective as objective_module

    trained: list[str] = []  # the architectures handed to the trainer, in order
    real = objective_module.train_spec

    def counting(arch, *args, **kwargs):
        trained.append(arch.hash)
        return real(arch, *args, **kwargs)

    monkeypatch.setattr(objective_module, "train_spec", counting)
    store = study(sqlite_url, trials=3)
    try:
        add_known_result(store, "es", epochs=4)
        params = {"stem_width": 8, "s0_depth": 1, "s0_width": 8, "s0_kernel": 3, "s0_rank": 1.0, "s1_depth": 1,
                  "s1_width": 16, "s1_kernel": 3, "s1_rank": 1.0, "s2_depth": 1, "s2_width": 32, "s2_kernel": 3,
                  "s2_rank": 1.0, "head_hidden": 0}
        study_ = optuna.load_study(study_name="es", storage=store.optuna)
        study_.enqueue_trial(params)
        study_.enqueue_trial(params)
        run_study("es", store)
        first, second = [t for t in trials_of(sqlite_url, "es") if t.params == params]
        assert first.state == second.state == TrialState.PRUNED
        assert second.user_attrs["stopped_by"]["same_as"] == first.number
        assert second.user_attrs["curve"] == first.user_attrs["curve"]
        assert trained.count(first.user_attrs["spec_hash"]) == 1  # the second was never trained
    finally:
        store.close()


def test_a_costlier_known_result_stops_nothing(sqlite_url):
    store = study(sqlite_url, trials=5)
    try:
        known = add_known_result(store, "es", epochs=4, accuracy=1.0, hw_cost=50.0)  # perfect, far too costly
        run_study("es", store)
        trials = trials_of(sqlite_url, "es")
        stopped = [t for t in trials if t.state == TrialState.PRUNED]
        # Trials may stop each other (margin 0), but the costlier perfect result stops none of them.
        assert all(known not in t.user_attrs["stopped_by"]["dominators"] for t in stopped)
        for t in stopped:  # and every stop names a real cheaper-or-equal trial that was better by then
            by = next(p for p in trials if p.number == t.user_attrs["stopped_by"]["trial"])
            assert by.user_attrs["cost"]["hw_cost"] <= t.user_attrs["cost"]["hw_cost"]
            assert best_by(by.user_attrs["curve"], 2) >= best_by(t.user_attrs["curve"], 2)  # None: not validated
        trained = [t for t in trials if t.user_attrs.get("status") == "trained"]
        assert trained and all(t.user_attrs["epochs_run"] == 4 for t in trained)
        # The curve of every trained trial is recorded: it is what later trials are compared with.
        assert all(len(t.user_attrs["curve"]) == 4 for t in trained)
    finally:
        store.close()
