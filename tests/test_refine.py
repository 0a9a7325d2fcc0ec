"""Refinement (docs/methods.md section 2) as a user runs it: threshold search, lineage, resume, Pareto, export, CLI."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from conftest import NAS, nas_cli
from sqlalchemy import create_engine, inspect, text

from nas import NasError, export_refined
from nas.refine import RefineSettings, make_settings, parent_trials, refine_trial, threshold_search
from nas.search import create_study, dominates, make_spec, pareto_rows, past_drop
from nas.workers import run_study
from objectives import estimate_cost, evaluate, load_dataset
from search_spaces import ArchSpec, build_model
from storage import SCHEMA_VERSION, ArchitectureRow, Base, Meta, RefinementRow, Store, StudyRow

# ------------------------------------------------------------------------------- threshold search

ALL_PASS = [0.75, 0.6875, 0.640625, 0.60546875, 0.5791015625, 0.559326171875, 0.54449462890625,
            0.5333709716796875, 0.525028228759765625]
ALL_FAIL = [0.75, 0.875, 0.9375, 0.96875, 0.984375]


def scripted(rule):
    seen: list[float] = []

    def accuracy_at(pc: float) -> float:
        seen.append(pc)
        return rule(pc)
    return accuracy_at, seen


@pytest.mark.parametrize("rule, visited, threshold", [
    (lambda pc: 0.95, ALL_PASS, ALL_PASS[-1]),
    (lambda pc: 0.50, ALL_FAIL, None),
    (lambda pc: 0.95 if pc >= 0.62 else 0.80, [0.75, 0.6875, 0.640625, 0.60546875, 0.623046875], 0.623046875),
])
def test_threshold_search_visits_the_thresholds_the_algorithm_defines(rule, visited, threshold):
    fn, seen = scripted(rule)
    res = threshold_search(fn, target=0.9)
    assert seen == visited  # exact: every value is a dyadic fraction
    assert [pc for pc, _ in res.visited] == visited
    assert res.threshold == threshold
    # It stops at the 0.03 gap, not before: the gap before the last attempt was still >= 0.03.
    assert res.upper - res.lower < 0.03


def test_threshold_search_step_rule_by_hand():
    # Pu=1, Pl=0.5, Pc=0.75 passes -> Pu=0.75, Pc = 0.75 - (0.75-0.5)/4 = 0.6875; it fails ->
    # Pl=0.6875, Pc = 0.6875 + (0.75-0.6875)/2 = 0.71875; it passes -> Pu=0.71875, gap 0.03125 >= 0.03,
    # Pc = 0.71875 - 0.03125/4 = 0.7109375; it fails -> Pl=0.7109375, gap 0.0078125 < 0.03: stop.
    answers = iter([0.95, 0.80, 0.95, 0.80])
    fn, seen = scripted(lambda pc: next(answers))
    res = threshold_search(fn, target=0.9)
    assert seen == [0.75, 0.6875, 0.71875, 0.7109375]
    assert (res.threshold, res.upper, res.lower) == (0.71875, 0.71875, 0.7109375)


# ------------------------------------------------------------------------------- a tiny study

SPACE = {"min_depth": 2, "max_depth": 2, "widths": [8, 32], "stem_widths": [8], "block_types": ["basic"],
         "rank_ratios": [1.0]}
SMALL = {"stem_width": 8, "block": "basic", "s0_depth": 2, "s0_width": 8, "s0_rank": 1.0, "s1_depth": 2,
         "s1_width": 16, "s1_rank": 1.0, "s2_depth": 2, "s2_width": 32, "s2_rank": 1.0}
BIG = {**SMALL, "s0_width": 32, "s1_width": 64, "s2_width": 128}  # 689k parameters: over the budget
FAST = RefineSettings(epochs=3, finetune_epochs=2, iterations=2, long_every=2)
LOW_RANK = RefineSettings(**{**FAST.model_dump(), "low_rank": "params<=12k"})


def tiny_study(store: Store, name: str = "t") -> None:
    spec = make_spec(name=name, space="resnet", data="digits", budget="params<=60k", trials=2, seed=0,
                     space_options=SPACE, fidelity={"epochs": 1, "batch_size": 64}, device="cpu")
    create_study(spec, store)
    study = optuna.load_study(study_name=name, storage=store.optuna)
    study.enqueue_trial(SMALL)
    study.enqueue_trial(BIG)
    run_study(name, store)


def refine(store: Store, name: str = "t", trial: int = 0, settings: RefineSettings = FAST, **kw):
    return refine_trial(name, trial, store, settings, threads=1, **kw)


@pytest.fixture(scope="module")
def refined_db(tmp_path_factory):
    """A SQLite database with the tiny study and one finished refinement of trial 0."""
    url = f"sqlite:///{tmp_path_factory.mktemp('refined')}/nas.db"
    store = Store(url)
    tiny_study(store)
    rows = refine(store)
    store.close()
    return url, [r.id for r in rows]


def load(store: Store, row, data) -> torch.nn.Module:
    arch = ArchSpec.from_json(store.get_architecture(row.spec_hash))
    model = build_model(arch, data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(io.BytesIO(store.get_artifact(row.artifact_key)), weights_only=True))
    return model.eval()


def test_every_candidate_is_stored_with_its_lineage(storage_url):
    store = Store(storage_url)
    tiny_study(store)
    events = []
    rows = refine(store, settings=LOW_RANK, on_event=events.append)
    trial = optuna.load_study(study_name="t", storage=store.optuna).trials[0]
    store.close()

    store = Store(storage_url)  # read back through a new connection
    assert store.schema_version == SCHEMA_VERSION == 6
    stored = store.get_refinements("t", parent_trial=0)
    assert [r.id for r in stored] == [r.id for r in rows]
    methods = [r.method for r in stored]
    assert methods[:3] == ["baseline", "prune", "prune"] and set(methods[3:-1]) == {"fuse"}
    assert methods[-1] == "low_rank"
    assert [r.step for r in stored] == list(range(len(stored)))
    assert [r.parent_step for r in stored[:-1]] == [None] + list(range(len(stored) - 2))
    data = load_dataset("digits", seed=0)
    flops = []
    for r in stored:
        assert r.study == "t" and r.parent_trial == 0 and r.parent_spec_hash == trial.user_attrs["spec_hash"]
        settings = json.loads(r.settings_json)
        assert settings["finetune_epochs"] == 2 and settings["iterations"] == 2 and settings["data"] == "digits"
        assert settings["low_rank"] == "params<=12k"
        assert (settings["short_epochs"], settings["long_epochs"]) == (1, 2)
        arch = ArchSpec.from_json(store.get_architecture(r.spec_hash))
        cost = json.loads(r.cost_json)
        assert cost["flops"] == estimate_cost(arch, data.input_shape, data.num_classes)["flops"]
        assert cost["depth"] == arch.depth and 0 < cost["hw_cost"] < 1  # within params<=60k
        assert 0.0 < r.val_accuracy <= 1.0 and r.test_accuracy is not None
        # The stored weights are the candidate: they reproduce its accuracy.
        assert evaluate(load(store, r, data), data.x_val, data.y_val) == pytest.approx(r.val_accuracy)
        flops.append(cost["flops"])
    # Pruning never adds cost; fusion removes whole blocks.
    assert flops[2] <= flops[1] <= flops[0] and flops[-2] < flops[2]
    fused = [json.loads(r.detail_json) for r in stored if r.method == "fuse"]
    assert fused[0]["removals"] == 2 and len(fused[0]["removed"]) == 2
    # LightLayers: lower rank ratios on the most compressed candidate within the allowed drop.
    low = json.loads(stored[-1].detail_json)
    base = next(r for r in stored if r.step == stored[-1].parent_step)
    assert base.method == "fuse" and low["base_step"] == base.step and low["rank_ratios"]
    assert json.loads(stored[-1].cost_json)["params"] < json.loads(base.cost_json)["params"]
    assert low["budget_met"] == (json.loads(stored[-1].cost_json)["params"] <= 12_000)
    assert [e.kind for e in events].count("candidate") == len(stored)
    store.close()


def test_a_rerun_after_ctrl_c_continues_from_the_last_stored_step(tmp_path):
    whole = Store(f"sqlite:///{tmp_path}/whole.db")
    tiny_study(whole)
    want = [(r.step, r.method, r.spec_hash, r.val_accuracy) for r in refine(whole)]
    whole.close()

    store = Store(f"sqlite:///{tmp_path}/cut.db")
    tiny_study(store)

    def ctrl_c_after_two(e):
        if e.kind == "candidate" and e.row.step == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        refine(store, on_event=ctrl_c_after_two)
    assert [r.step for r in store.get_refinements("t")] == [0, 1]
    events = []
    rows = refine(store, on_event=events.append)
    assert events[0].kind == "resumed" and "after stored step 1 (prune)" in events[0].message
    assert not any("baseline" in e.message or "prune 1/" in e.message for e in events)
    assert [(r.step, r.method, r.spec_hash, r.val_accuracy) for r in rows] == want
    # Once everything is stored, a rerun trains nothing and stores nothing.
    events.clear()
    again = refine(store, on_event=events.append)
    assert [r.id for r in again] == [r.id for r in rows]
    assert {e.kind for e in events} <= {"resumed", "done", "note"}
    # Other settings are another run, beside this one.
    other = RefineSettings(**{**FAST.model_dump(), "margin": 0.05})
    cut = []

    def stop_at_baseline(e):
        if e.kind == "candidate":
            cut.append(e.row)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        refine(store, settings=other, on_event=stop_at_baseline)
    assert cut[0].settings_hash != rows[0].settings_hash
    assert len(store.get_refinements("t", parent_trial=0)) == len(rows) + 1
    store.close()




def test_cli_refine_prints_every_step_and_resumes_after_a_real_ctrl_c(refined_db, tmp_path, user_env):
    """`nas refine` as a process: a line per step (threshold tried with its accuracy, block fused,
    candidate stored), SIGINT (Ctrl-C) mid-run ends it (a shell's 130) keeping what is stored, and the same
    command continues from the last stored step to the same candidates as an uninterrupted run."""
    url = f"sqlite:///{tmp_path}/nas.db"
    store = Store(url)
    tiny_study(store)
    store.close()
    cmd = [NAS, "refine", "t", "--trial", "0", "--epochs", "3", "--finetune-epochs", "2", "--iterations", "2",
           "--long-every", "2", "--threads", "1", "--format", "json", "--storage", url]
    env = {**user_env, "COLUMNS": "200"}
    # As from a terminal: a runner that ignores SIGINT (a background job) would pass that on to the child.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # the first threshold tried: the baseline is stored, pruning is under way
        seen.append(line)
        if "Pc=" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[1]
    err = "".join(seen) + rest
    assert proc.returncode == -signal.SIGINT, err  # after its message, ended by the SIGINT (nas.cli.entry)
    assert "trial 0: baseline: training 3 epochs" in err and "interrupted:" in err, err
    assert any(line.startswith("trial 0: prune 1/2 Pc=") and "accuracy" in line for line in seen), err
    store = Store(url)
    kept = [r.step for r in store.get_refinements("t")]
    store.close()
    assert kept and kept[0] == 0 and len(kept) < len(refined_db[1])
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming after stored step {kept[-1]}" in again.stderr
    assert "baseline: training" not in again.stderr
    assert "Pc=" in again.stderr and "fuse: removed blocks." in again.stderr, again.stderr
    done = Store(refined_db[0])
    stored = done.get_refinements("t", parent_trial=0)
    done.close()
    want = [(r.step, r.method, r.spec_hash) for r in stored if r.settings_hash == stored[0].settings_hash]
    store = Store(url)
    assert [(r.step, r.method, r.spec_hash) for r in store.get_refinements("t")] == want
    store.close()
    assert [r["source"].split(" (")[0] for r in json.loads(again.stdout)] == [
        f"refined 0/{m}/{s}" for s, m, _ in want]


def test_the_baseline_can_reuse_the_searchs_weights(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/reuse.db")
    tiny_study(store)
    trial = optuna.load_study(study_name="t", storage=store.optuna).trials[0]
    got = []

    def stop(e):
        if e.kind == "candidate":
            got.append(e.row)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        refine(store, settings=RefineSettings(**{**FAST.model_dump(), "reuse_weights": True}), on_event=stop)
    assert got[0].method == "baseline" and json.loads(got[0].detail_json)["weights"].startswith("weights/")
    assert got[0].val_accuracy == trial.user_attrs["val_accuracy"]  # the same weights, the same validation split
    store.close()


def test_refined_candidates_join_the_pareto_front_marked(refined_db):
    url, ids = refined_db
    store = Store(url)
    plain = pareto_rows("t", store)
    assert plain and all("source" not in r for r in plain)
    front = pareto_rows("t", store, include_refined=True)
    sources = [r["source"] for r in front]
    assert any(s.startswith("refined 0/") for s in sources), sources
    refs = {r.id: r for r in store.get_refinements("t")}
    for row in front:
        if row["refined"] is None:
            assert row["source"] == f"trial {row['trial']}"
        else:
            r = refs[row["refined"]]
            assert row["source"] == f"refined 0/{r.method}/{r.step}" and row["accuracy"] == r.val_accuracy
            assert row["params"] <= 60_000
    # Non-dominated among every trial and candidate, on the study's objectives (accuracy, hw_cost).
    offered = [r for r in refs.values() if not past_drop(r)]  # the step past --max-drop is not offered
    cands = [(r.val_accuracy, json.loads(r.cost_json)["hw_cost"]) for r in offered]
    cands += [(t.values[0], t.values[1]) for t in optuna.load_study(study_name="t", storage=store.optuna).trials
              if t.user_attrs.get("status") == "trained"]
    for row in front:
        assert not any(dominates((-a, c), (-row["accuracy"], row["hw_cost"])) for a, c in cands)
    # The cheapest refined candidate offered is cheaper than any trial: it must be on the front;
    # with past_drop, so is the cheapest stored one.
    cheapest = min(offered, key=lambda r: json.loads(r.cost_json)["hw_cost"])
    assert cheapest.id in {r["refined"] for r in front}
    every = min(refs.values(), key=lambda r: json.loads(r.cost_json)["hw_cost"])
    assert every.id in {r["refined"] for r in pareto_rows("t", store, include_refined=True, past_drop=True)}
    assert pareto_rows("t", store, include_refined=True, where="accuracy>=2") == []
    store.close()


def test_export_a_refined_candidate(refined_db, tmp_path):
    url, ids = refined_db
    store = Store(url)
    info = export_refined("t", ids[-1], tmp_path / "out", store)
    assert info["onnx_max_abs_diff"] < 1e-3
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["lineage"]["method"] == "fuse" and meta["lineage"]["parent_trial"] == 0
    assert meta["lineage"]["settings"]["iterations"] == 2
    spec = ArchSpec.from_json((tmp_path / "out" / "spec.json").read_text())
    assert spec.hash == store.get_refinement(ids[-1]).spec_hash
    with pytest.raises(NasError, match="has no refined candidate 999; its candidates: "):
        export_refined("t", 999, tmp_path / "x", store)
    store.close()


def test_cli_refine_pareto_export(refined_db, capsys, tmp_path):
    url, ids = refined_db
    # The run is stored: the same command resumes, trains nothing and lists the candidates.
    code, out, err = nas_cli("refine", "t", "--trial", "0", "--epochs", "3", "--finetune-epochs", "2",
                             "--iterations", "2", "--long-every", "2", "--threads", "1", "--quiet",
                             "--format", "json", "--storage", url)
    assert code == 0, err
    listed = json.loads(out)
    assert [r["refined"] for r in listed] == ids
    assert listed[0]["source"] == "refined 0/baseline/0" and listed[-1]["source"].startswith("refined 0/fuse/")
    code, out, err = nas_cli("pareto", "t", "--include-refined", "--format", "json", "--storage", url)
    assert code == 0 and any(r["refined"] in ids for r in json.loads(out))
    code, out, err = nas_cli("pareto", "t", "--include-refined", "--format", "csv", "--storage", url)
    assert out.splitlines()[0].startswith("source,refined,trial,")
    code, out, err = nas_cli("export", "t", "--refined", str(ids[-1]), "--to", str(tmp_path / "e"),
                             "--formats", "json", "--storage", url)
    assert code == 0 and (tmp_path / "e" / "spec.json").exists()


@pytest.mark.parametrize("args, needle", [
    ([], "give exactly one of --trial N (refine one trial) or --pareto"),
    (["--trial", "0", "--pareto"], "give exactly one of --trial N (refine one trial) or --pareto"),
    (["--trial", "7"], "study 't' has no trial 7; trials that can: 0"),
    (["--trial", "1"], "trial 1 is over the budget (params +"),
    (["--trial", "0", "--margin", "2"], "margin: "),
    (["--trial", "0", "--low-rank", "params<=lots"], "low_rank: params: 'lots' is not a number"),
])
def test_cli_refine_bad_input_is_one_line_exit_2(refined_db, capsys, args, needle):
    url, _ = refined_db
    code, out, err = nas_cli("refine", "t", *args, "--storage", url)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_cli_export_needs_trial_or_refined(refined_db, capsys, tmp_path):
    url, _ = refined_db
    for args in ([], ["--trial", "0", "--refined", "1"]):
        code, _, err = nas_cli("export", "t", *args, "--to", str(tmp_path), "--storage", url)
        assert code == 2 and "give exactly one of --trial N (a trial) or --refined ID" in err


def test_parent_trials_of_the_front(refined_db):
    store = Store(refined_db[0])
    assert parent_trials("t", store, pareto=True) == [0]
    with pytest.raises(NasError, match="give exactly one"):
        parent_trials("t", store)
    store.close()
    with pytest.raises(NasError, match="alpha"):
        make_settings(alpha=1.5)


# ------------------------------------------------------------------------------- schema

def test_a_version_1_database_is_upgraded_and_keeps_its_data(storage_url):
    engine = create_engine(storage_url)
    later = (RefinementRow.__tablename__, "lightnas_jobs", "lightnas_devices", "lightnas_proxy_scores",
             "lightnas_claims")
    v1 = [t for name, t in Base.metadata.tables.items() if name not in later]
    Base.metadata.create_all(engine, tables=v1)
    with engine.begin() as conn:
        conn.execute(Meta.__table__.insert().values(key="schema_version", value="1"))
        conn.execute(StudyRow.__table__.insert().values(name="old", spec_json="{}", target_trials=3))
        conn.execute(ArchitectureRow.__table__.insert().values(spec_hash="a" * 64, family="plain", spec_json="{}"))
    assert not set(later) & set(inspect(engine).get_table_names())
    engine.dispose()

    store = Store(storage_url)
    assert store.schema_version == SCHEMA_VERSION == 6
    assert store.get_study("old").target_trials == 3  # no trials: nothing counted, 3 left
    assert set(later) <= set(inspect(store.engine).get_table_names())
    kw = dict(study="old", parent_trial=0, parent_spec_hash="a" * 64, settings_hash="k", parent_step=None,
              method="baseline", spec_hash="a" * 64, settings={"x": 1}, detail={}, val_accuracy=0.5,
              test_accuracy=None, cost={"flops": 1.0}, artifact_key="refined/x", seconds=0.1)
    first = store.put_refinement(step=0, **kw)
    again = store.put_refinement(step=0, **{**kw, "val_accuracy": 0.9})  # the same step twice: the first wins
    assert again.id == first.id and again.val_accuracy == 0.5
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM lightnas_refinements")).scalar() == 1
    assert json.loads(store.get_refinement(first.id).settings_json) == {"x": 1}
    store.close()


def test_candidates_past_the_allowed_drop_are_stored_but_not_offered(refined_db, capsys, tmp_path):
    """A fusion step that lost more than --max-drop ends the run and is stored as evidence, but is not
    offered beside the others (the Pareto front with refined candidates, the refine table, job
    candidates) unless asked for."""

    from sqlalchemy import update

    from nas.search import get_study_spec, refined_points
    from nas.workers import candidate_info

    src = refined_db[0].removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if Path(src + suffix).exists():
            shutil.copy(src + suffix, tmp_path / f"nas.db{suffix}")
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(url)
    fuse = [r for r in store.get_refinements("t") if r.method == "fuse"][-1]
    reference = json.loads(fuse.detail_json)["reference"]
    max_drop = json.loads(fuse.settings_json)["max_drop"]
    with store.session() as s:  # the step that went past the drop, as a run stores it
        s.execute(update(RefinementRow).where(RefinementRow.id == fuse.id)
                  .values(val_accuracy=reference - max_drop - 0.05))
        s.commit()
    fuse = next(r for r in store.get_refinements("t") if r.id == fuse.id)
    assert past_drop(fuse) and candidate_info(fuse)["past_drop"] is True
    study_spec = get_study_spec("t", store)
    assert fuse.id not in [r.id for r, _ in refined_points("t", store, study_spec)]
    assert fuse.id in [r.id for r, _ in refined_points("t", store, study_spec, past=True)]
    store.close()
    code, out, err = nas_cli("pareto", "t", "--include-refined", "--format", "json", "--storage", url)
    assert code == 0 and fuse.id not in [r["refined"] for r in json.loads(out)]
    code, out, err = nas_cli("refine", "t", "--trial", "0", "--epochs", "3", "--finetune-epochs", "2",
                             "--iterations", "2", "--long-every", "2", "--threads", "1", "--quiet",
                             "--format", "json", "--storage", url)
    assert code == 0, err
    marked = {r["refined"]: r["source"] for r in json.loads(out)}
    assert marked[fuse.id].endswith("(past max-drop)") and "--past-drop" in err
    assert sum(s.endswith("(past max-drop)") for s in marked.values()) == 1
