"""Budget-first studies as a user meets them: refusals before anything is written, fitted spaces
that workers use, targets that count networks within the budget, and old databases upgraded."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import nas_here
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from nas import NasError
from nas.search import create_study, get_study_spec, list_studies, make_spec, plan_study, study_info
from nas.serve import ApiSettings, create_app
from nas.workers import progress, run_study, work
from objectives import estimate_cost
from search_spaces import ArchSpec, get_space
from storage import Store

ASSET = Path(__file__).parent / "assets" / "legacy_v3.db"


def spec(name: str, **kw):
    fields = dict(name=name, space="resnet", data="digits", trials=3, seed=0, device="cpu",
                  fidelity={"epochs": 1, "batch_size": 64})
    fields.update(kw)
    return make_spec(**fields)


def test_a_budget_no_architecture_reaches_is_refused_before_anything_is_written(store):
    with pytest.raises(NasError) as e:
        create_study(spec("tiny", budget="peak_mem<=64B"), store)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("budget: peak_activation_bytes<=64B is below what space 'resnet' on input 1x8x8 can reach")
    assert "cheapest architecture needs 4.25KiB as given, 384B scaled down (max_depth=1 stem_stride=2" in msg
    assert "budgets that fit: peak_activation_bytes<=384B or more" in msg
    assert list_studies(store) == [] and optuna.get_all_study_names(store.optuna) == []


def test_the_refusal_names_the_minimum_and_what_would_fit():
    with pytest.raises(NasError) as e:
        plan_study(spec("p", space="plain", budget="params<=900", fit_space=False))
    msg = str(e.value)
    # The exact minimum of the space as given, a fitted variant that reaches the budget, and
    # other spaces that do.
    minimum = get_space("plain", input_shape=(1, 8, 8))
    from objectives import space_minimum

    value, _ = space_minimum(minimum, 10, "rpi4", ["params"])["params"]
    assert f"needs {value / 1e3:.4g}k" in msg
    assert "drop --no-fit-space" in msg and "space 'mobilenetv2'" in msg
    # The budget the message advises is accepted (rounded up, parsed back exactly): at the very
    # minimum, with a warning that almost nothing of the space fits.
    advised = msg.split("budgets that fit: ")[1].split(" or more")[0]
    plan = plan_study(spec("p", space="plain", budget=advised, fit_space=False))
    assert plan.info["feasibility"]["minimum"]["params"] == value and plan.warnings


def test_advised_limits_round_up_and_parse_back_exactly():
    from objectives import format_amount, parse_budget

    for name, value in [("params", 8155), ("params", 12344), ("flops", 70272), ("peak_activation_bytes", 184321),
                        ("latency_ms", 0.123456), ("mem_traffic_bytes", 1023)]:
        text = format_amount(name, value, up=True)
        limit = parse_budget(f"{name}<={text}").limits[name]
        assert value <= limit <= value * 1.001 + 1, (name, value, text, limit)


def test_a_share_under_one_percent_is_created_with_a_warning():
    plan = plan_study(spec("w", budget="flops<=300k", fit_space=False))
    assert plan.study_spec.space_options == {}
    share = plan.info["feasibility"]["share_within_budget"]
    assert 0 < share < 0.01 and plan.info["feasibility"]["samples"] >= 2000
    assert len(plan.warnings) == 1 and f"{share:.2%}" in plan.warnings[0] and "flops=70.27k" in plan.warnings[0]


def test_the_fitted_space_is_stored_and_every_counted_network_is_within_the_budget(store):
    made = create_study(spec("fit", budget="flops<=300k", trials=4), store)
    fit = made.info["fit"]
    assert fit["scaled"] and fit["kept"] == {}
    stored = get_study_spec("fit", store)
    assert stored.space_options == made.study_spec.space_options == fit["options"]  # resumes use the same space
    assert study_info("fit", store)["feasibility"]["share_within_budget"] >= 0.15
    p = run_study("fit", store)
    assert p.finished == 4 and p.target == 4
    trials = optuna.load_study(study_name="fit", storage=store.optuna).get_trials()
    fitted = get_space("resnet", input_shape=(1, 8, 8), **stored.space_options)
    counted = [t for t in trials if t.user_attrs.get("status") in ("trained", "reused")]
    assert len(counted) == 4
    for t in counted:
        arch = ArchSpec.from_json(store.get_architecture(t.user_attrs["spec_hash"]))
        assert fitted.params_of(arch) == t.params
        assert estimate_cost(arch, (1, 8, 8), 10)["flops"] <= 300e3
    rejected = [t for t in trials if t.user_attrs.get("status") == "over_budget"]
    assert p.rejected == len(rejected) and all(t.state == TrialState.COMPLETE for t in rejected)
    assert all(t.system_attrs["constraints:flops"] > 0 for t in rejected)  # samplers learn from them


def test_a_user_option_is_kept_and_said_so():
    plan = plan_study(spec("k", budget="flops<=300k", space_options={"max_depth": 3}))
    fit = plan.info["fit"]
    assert plan.study_spec.space_options["max_depth"] == 3 and "max_depth" not in fit["scaled"]
    from nas.search import describe_plan

    lines = describe_plan(plan)
    assert "kept as you gave them: max_depth=3" in lines[0] and "space fitted to the budget" in lines[0]


def test_a_long_streak_of_rejections_stops_with_one_line(store):
    create_study(spec("streak", budget="flops<=300k", fit_space=False, sampler="random", trials=50), store)
    with pytest.raises(NasError) as e:
        work("streak", store.url, rejection_streak=6)
    msg = str(e.value)
    assert "\n" not in msg and "6 samples of 'streak' in a row were over the budget flops<=300k" in msg
    assert "of space 'resnet' lies within it" in msg
    p = progress("streak", store)
    assert p.rejected >= 6 and p.finished < 50


def test_a_database_written_before_budget_first_counting_is_upgraded(tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(ASSET, db)
    url = f"sqlite:///{db}"
    store = Store(url)
    try:
        # 4 converted the targets; 5 added lightnas_devices and the proxy cache; 6 lightnas_claims
        assert store.schema_version == 6
        # done1 had met its target of 8 with 8 over-budget samples: met still (0 of 0).
        # part1 had 6 of 12 finished, 1 of them within budget: 6 left, now 6 networks left.
        assert store.get_study("done1").target_trials == 0
        assert store.get_study("part1").target_trials == 7
        assert study_info("part1", store)["target_converted"] == {
            "schema": 4, "old_target": 12, "old_finished": 6, "counted": 1, "new_target": 7}
        before = len(optuna.load_study(study_name="done1", storage=store.optuna).get_trials())
        assert run_study("done1", store).finished == 0  # nothing to do: no worker starts training
        assert len(optuna.load_study(study_name="done1", storage=store.optuna).get_trials()) == before
        p = run_study("part1", store, trials=2)
        assert p.finished == 2 and p.trained >= 1
    finally:
        store.close()
    show = nas_here("study", "show", "part1", "--storage", url, cwd=tmp_path)
    assert "target converted on upgrade" in show.stdout and "2/2 within budget" in show.stdout


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cli_create_prints_the_figures_and_refuses_with_exit_2_leaving_the_database_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    r = nas_here("study", "create", "ok", "--space", "plain", "--data", "digits", "--budget", "flops<=300k",
            "--storage", url, cwd=tmp_path)
    assert "the space's minimum is flops" in r.stdout and "lies within the budget (2000 samples)" in r.stdout
    before = _md5(tmp_path / "c.db")
    bad = nas_here("study", "create", "no", "--space", "plain", "--data", "digits", "--budget", "params<=100",
              "--storage", url, cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "params<=100 is below what space 'plain'" in lines[0]
    (tmp_path / "s.toml").write_text('name = "toml"\nspace = "resnet"\nbudget = "peak_mem<=64B"\n')
    bad = nas_here("study", "create", "--config", str(tmp_path / "s.toml"), "--storage", url, cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "peak_activation_bytes<=64B is below" in bad.stderr
    assert _md5(tmp_path / "c.db") == before
    show = json.loads(nas_here("study", "show", "ok", "--format", "json", "--storage", url, cwd=tmp_path).stdout)
    assert show["feasibility"]["minimum"]["flops"] > 0 and 0 < show["feasibility"]["share_within_budget"] <= 1
    assert show["within_budget"] == 0 and show["rejected"] == 0


def test_api_refuses_an_impossible_budget_with_422_and_shows_the_figures(sqlite_url):
    token = "w-" + "a" * 30
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(ApiSettings(storage=sqlite_url, tokens=(token,)))) as c:
        r = c.post("/studies", json={"name": "x", "space": "resnet", "budget": "peak_mem<=64B"}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "budget"
        assert "cheapest architecture needs" in r.json()["message"]
        assert c.get("/studies").json()["studies"] == []
        r = c.post("/studies", json={"name": "y", "space": "resnet", "budget": "flops<=300k", "target": 0},
                   headers=auth)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["fit"]["scaled"] and 0 < body["feasibility"]["minimum"]["flops"] < 300e3
        view = c.get("/studies/y").json()
        assert view["feasibility"] == body["feasibility"] and view["rejected"] == 0


def test_fitting_may_resize_the_inputs_only_when_allowed(store, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "big.npz"
    np.savez(path, x_train=rng.integers(0, 255, (240, 96, 96, 3), dtype=np.uint8), y_train=np.arange(240) % 4)
    budget = "peak_mem<=64KiB flops<=2M"
    with pytest.raises(NasError, match="allow smaller inputs \\(--fit-resolution"):
        plan_study(spec("r", space="mobilenetv2", data=f"npz:{path}", budget=budget))
    made = create_study(spec("r", space="mobilenetv2", data=f"npz:{path}", budget=budget, fit_resolution=True,
                             trials=1), store)
    size = made.study_spec.input_size
    assert size is not None and size < 96 and made.info["fit"]["scaled"]["input_size"] == [96, size]
    stored = get_study_spec("r", store)
    assert stored.input_size == size and stored.load_data().input_shape == (3, size, size)
    assert run_study("r", store).finished == 1
    trial = next(t for t in optuna.load_study(study_name="r", storage=store.optuna).get_trials()
                 if t.user_attrs.get("status") == "trained")
    arch = ArchSpec.from_json(store.get_architecture(trial.user_attrs["spec_hash"]))
    assert estimate_cost(arch, (3, size, size), 4)["peak_activation_bytes"] <= 64 * 1024
