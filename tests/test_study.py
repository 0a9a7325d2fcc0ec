"""Budgeted multi-objective search persisted in SQL, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState
from sqlalchemy import func, select

from nas import NasError, export_trial
from nas.search import (
    create_study,
    delete_study,
    dominates,
    get_study_spec,
    list_studies,
    make_spec,
    pareto_mask,
    pareto_rows,
)
from nas.workers import run_study
from storage import ArtifactRow, EvaluationRow, Store

# A deliberately small space (few distinct architectures, so reuse happens) that trains in ~1 s.
TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0, 0.5)}


def tiny_spec(name: str = "s", **kw) -> object:
    fields = dict(name=name, space="plain", data="digits", budget="params<=6k", trials=6, seed=0,
                  space_options=TINY, fidelity={"epochs": 2, "batch_size": 64}, device="cpu")
    fields.update(kw)
    return make_spec(**fields)


def count(store: Store, row: type) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(row))


def test_spec_round_trips_through_the_database(store):
    spec = tiny_spec("round", objectives=["accuracy", "flops", "peak_mem"], sampler="nsga2")
    create_study(spec, store)
    assert get_study_spec("round", store) == spec
    study = optuna.load_study(study_name="round", storage=store.optuna)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.user_attrs["lightnas_spec"]["objectives"] == ["accuracy", "flops", "peak_activation_bytes"]
    assert [e.study_spec.name for e in list_studies(store) if e.study_spec] == ["round"]


def test_existing_name_is_refused_and_nothing_changes(store):
    create_study(tiny_spec("dup"), store)
    with pytest.raises(NasError, match="already exists"):
        create_study(tiny_spec("dup", seed=5), store)
    assert get_study_spec("dup", store).seed == 0


@pytest.mark.parametrize("fields, needle", [
    ({"space": "vgg"}, "accepted: mobilenetv2, plain, resnet"),
    ({"sampler": "cmaes"}, "accepted: auto, tpe, nsga2, gp, random"),
    ({"objectives": ["accuracy", "beauty"]}, "accepted: accuracy, hw_cost"),
    ({"budget": "flops<=lots"}, "not a number"),
    ({"budget": "", "objectives": ["accuracy", "hw_cost"]}, "needs a budget"),
    ({"name": "bad name!"}, "name"),
    ({"cost_device": "pdp11"}, "accepted: "),
    ({"fidelity": {"epochs": 0}}, "fidelity.epochs"),
    ({"fidelity": {"lr": float("inf")}}, "fidelity.lr: Input should be a finite number"),
    ({"fidelity": {"lr": float("nan")}}, "fidelity.lr: Input should be a finite number"),
    ({"budget_weights": {"params": float("inf")}}, "budget_weights.params: Input should be a finite number"),
    ({"space_options": {"width_mult": float("inf")}}, "space_options: space options must be JSON values (finite"),
    ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
])
def test_bad_study_specs_give_one_line(fields, needle):
    with pytest.raises(NasError) as e:
        tiny_spec(**fields)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_largest_seed_gives_every_worker_a_valid_sampler_seed():
    from nas.search import make_sampler

    spec = tiny_spec("big", seed=2**32 - 1)
    for worker in (0, 1, 99_999):  # seed + worker past 2**32 - 1 used to make every worker skip the study
        study = optuna.create_study(sampler=make_sampler(spec, worker))
        assert 0 <= study.ask().suggest_int("x", 0, 9) <= 9


def test_unreadable_data_writes_nothing(store, tmp_path):
    with pytest.raises(NasError, match="data: "):
        create_study(tiny_spec("nodata", data=f"idx:{tmp_path}/missing"), store)
    with pytest.raises(NasError, match="space_options"):
        create_study(tiny_spec("badopt", space_options={"max_depth": 0}), store)
    assert list_studies(store) == []
    assert optuna.get_all_study_names(store.optuna) == []


def test_run_reaches_target_rejects_over_budget_and_reuses(store):
    create_study(tiny_spec("run", trials=10), store)
    run_study("run", store)
    trials = optuna.load_study(study_name="run", storage=store.optuna).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.number for t in trials}) == len(trials)
    statuses = {t.user_attrs["status"] for t in complete}
    over = [t for t in complete if t.user_attrs["status"] == "over_budget"]
    evaluated = [t for t in complete if t.user_attrs["status"] in ("trained", "reused")]
    assert len(evaluated) == 10  # the target counts networks within the budget; rejections are extra
    assert over and evaluated, statuses  # params<=6k splits this space
    for t in over:
        assert t.values[0] == 0.0 and "train_seconds" not in t.user_attrs
        assert t.user_attrs["cost"]["params"] > 6000
        assert t.system_attrs["constraints:params"] > 0
    for t in evaluated:
        assert t.system_attrs["constraints:params"] <= 0
        assert 0.1 < t.values[0] <= 1.0
    # 4 distinct architectures at most in this space: identical ones are never trained twice.
    hashes = {t.user_attrs["spec_hash"] for t in evaluated}
    trained = [t for t in evaluated if t.user_attrs["status"] == "trained"]
    assert len(trained) == len(hashes)
    assert count(store, EvaluationRow) == len(hashes)
    assert count(store, ArtifactRow) == len(hashes)
    reused = [t for t in evaluated if t.user_attrs["status"] == "reused"]
    for t in reused:
        first = next(x for x in trained if x.user_attrs["spec_hash"] == t.user_attrs["spec_hash"])
        assert t.values == first.values


def test_rerun_resumes_to_the_new_target_without_touching_old_trials(store):
    create_study(tiny_spec("resume", trials=3), store)
    run_study("resume", store)
    study = optuna.load_study(study_name="resume", storage=store.optuna)
    before = {t.number: (t.values, t.params) for t in study.get_trials()}
    run_study("resume", store)  # already at target: nothing happens
    assert {t.number: (t.values, t.params) for t in study.get_trials()} == before
    run_study("resume", store, trials=6)
    after = study.get_trials()
    assert sum(t.user_attrs.get("status") in ("trained", "reused") for t in after) == 6
    assert {t.number: (t.values, t.params) for t in after if t.number in before} == before
    assert store.get_study("resume").target_trials == 6


def test_training_failures_are_recorded_and_the_worker_goes_on(store):
    # lr 1e6 makes every trained network diverge (NaN loss): each failure is recorded with its
    # reason and the worker goes on (over-budget samples between them do not end the streak),
    # until failures in a row say the study itself is broken.
    from nas.workers import work

    create_study(tiny_spec("nan", trials=4, budget="params<=12k", fidelity={"epochs": 1, "lr": 1e6}), store)
    with pytest.raises(NasError, match="3 trials of 'nan' failed in a row"):
        work("nan", store.url, max_consecutive_failures=3)
    trials = optuna.load_study(study_name="nan", storage=store.optuna).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 3
    assert all("non-finite loss" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.user_attrs["status"] == "over_budget" for t in complete)
    assert count(store, EvaluationRow) == 0  # nothing wrong was stored as an evaluation


def test_a_study_whose_every_trial_fails_stops_with_the_reason(store):
    from nas.workers import work

    create_study(tiny_spec("allnan", trials=3, budget="params<=1M", fidelity={"epochs": 1, "lr": 1e6}), store)
    with pytest.raises(NasError, match="4 trials of 'allnan' failed in a row, last: non-finite loss"):
        work("allnan", store.url, max_consecutive_failures=4)
    states = [t.state for t in optuna.load_study(study_name="allnan", storage=store.optuna).get_trials()]
    assert states == [TrialState.FAIL] * 4


def test_two_worker_processes_share_one_study(store):
    create_study(tiny_spec("pair", trials=8), store)
    p = run_study("pair", store, workers=2)
    trials = optuna.load_study(study_name="pair", storage=store.optuna).get_trials()
    assert p.complete == sum(t.state == TrialState.COMPLETE for t in trials)
    assert p.finished == 8  # networks within budget: never more than the target, on two workers too
    assert len({t.number for t in trials}) == len(trials)


def test_pareto_front_is_feasible_nondominated_and_filterable(store):
    create_study(tiny_spec("front", trials=8, budget="params<=20k", objectives=["accuracy", "params"]), store)
    run_study("front", store)
    rows = pareto_rows("front", store)
    assert rows
    vecs = [(-r["accuracy"], r["params"]) for r in rows]
    assert not any(dominates(a, b) for a in vecs for b in vecs)
    assert all(r["params"] <= 20_000 for r in rows)
    assert all(0.0 < r["test_accuracy"] <= 1.0 for r in rows)
    assert len({r["spec_hash"] for r in rows}) == len(rows)
    with store.session() as s:
        stored = s.scalars(select(EvaluationRow.test_accuracy).where(EvaluationRow.test_accuracy.is_not(None))).all()
    assert len(stored) >= len(rows)  # measured once and kept
    smallest = min(r["params"] for r in rows)
    narrowed = pareto_rows("front", store, where=f"params<={smallest}")
    assert [r["params"] for r in narrowed] == [smallest]
    assert pareto_rows("front", store, where="accuracy>=1.01") == []
    with pytest.raises(NasError, match="^where: ") as bad:
        pareto_rows("front", store, where="flops<<3")
    assert bad.value.field == "where" and "--where" not in str(bad.value)


def test_export_writes_spec_weights_and_checked_onnx(store, tmp_path):
    create_study(tiny_spec("exp", trials=4, budget="params<=50k"), store)
    run_study("exp", store)
    row = pareto_rows("exp", store, with_test=False)[0]
    info = export_trial("exp", row["trial"], tmp_path / "out", store)
    assert info["onnx_max_abs_diff"] < 1e-4
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["model.json", "model.onnx", "spec.json", "weights.pt"]
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["input_shape"] == [1, 8, 8] and meta["cost"]["totals"]["params"] > 0
    with pytest.raises(NasError, match="no trial 999"):
        export_trial("exp", 999, tmp_path / "x", store)


def test_delete_removes_the_study_only(store):
    create_study(tiny_spec("gone", trials=2), store)
    run_study("gone", store)
    n_eval = count(store, EvaluationRow)
    delete_study("gone", store)
    assert list_studies(store) == [] and "gone" not in optuna.get_all_study_names(store.optuna)
    assert count(store, EvaluationRow) == n_eval  # kept for reuse by other studies
    with pytest.raises(NasError, match="unknown study 'gone'"):
        get_study_spec("gone", store)


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 2)), max_size=40))
@settings(max_examples=60, deadline=None)
def test_the_one_pareto_filter_keeps_exactly_the_undominated(points: list[tuple[int, int, int]]) -> None:
    """Small integer grids make ties and duplicates common: equal rows both stay, dominated ones go."""
    keep = pareto_mask(points).tolist()
    assert keep == [not any(dominates(q, p) for q in points) for p in points]
