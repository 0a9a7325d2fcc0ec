"""Warm starts (``--enqueue``, ``--warm-start``, ``nas study enqueue``, the API's fields) and weight
inheritance (network morphism): real studies on real data."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from conftest import nas_cli, trials_of
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from nas.search import create_study, make_spec
from nas.serve import ApiSettings, create_app
from nas.workers import run_study
from objectives import estimate_cost
from search_spaces import ArchSpec, build_model, get_space, inherit_weights, overlap, sample_spec, spec_state_shapes
from storage import Store

TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0, 32)}
BASE = {"space": "plain", "data": "digits", "budget": "params<=20k", "space_options": TINY, "device": "cpu",
        "seed": 0, "fidelity": {"epochs": 2, "train_fraction": 0.3}}


def searched(url: str, name: str = "src", trials: int = 6, **fields) -> None:
    store = Store(url)
    try:
        create_study(make_spec(name=name, **{**BASE, "trials": trials, **fields}), store)
        run_study(name, store)
    finally:
        store.close()


def front_specs(url: str, name: str) -> list[str]:
    from nas.search import pareto_rows

    store = Store(url)
    try:
        rows = pareto_rows(name, store, with_test=False)
        return [store.get_architecture(_full(store, name, r["trial"])) for r in rows]
    finally:
        store.close()


def _full(store: Store, name: str, number: int) -> str:
    return optuna.load_study(study_name=name, storage=store.optuna).trials[number].user_attrs["spec_hash"]


# ------------------------------------------------------------------------------- warm starts


def test_an_exported_spec_is_evaluated_first_in_a_new_study(sqlite_url, tmp_path, capsys):
    searched(sqlite_url)
    arch_json = front_specs(sqlite_url, "src")[0]
    path = tmp_path / "spec.json"
    path.write_text(arch_json)
    code, out, err = nas_cli("study", "create", "dst", "--space", "plain", "--budget", "params<=20k",
                         "--option", f"widths={list(TINY['widths'])}", "--option", "max_depth=1", "--option",
                         "kernels=[3]", "--option", "hidden=[0, 32]", "--epochs", "2", "--trials", "2",
                         "--enqueue", str(path), "--storage", sqlite_url)
    assert code == 0, err
    assert "warm start: 1 architecture(s) queued to run first" in out
    store = Store(sqlite_url)
    try:
        run_study("dst", store)
    finally:
        store.close()
    first = min(trials_of(sqlite_url, "dst"), key=lambda t: t.number)
    assert first.user_attrs["warm_start"] == str(path)
    assert first.user_attrs["spec_hash"] == ArchSpec.from_json(arch_json).hash
    assert first.state == TrialState.COMPLETE and first.user_attrs["status"] in ("trained", "reused")


def test_front_members_outside_this_studys_options_are_skipped_not_fatal(sqlite_url, capsys):
    searched(sqlite_url, trials=6, space_options={**TINY, "widths": (16,), "max_depth": 2, "min_depth": 2})
    code, out, err = nas_cli("study", "create", "dst", "--space", "plain", "--budget", "params<=20k",
                         "--option", "widths=[8]", "--option", "max_depth=1", "--option", "kernels=[3]",
                         "--option", "hidden=[0, 32]", "--warm-start", "src", "--storage", sqlite_url)
    assert code == 0, err
    assert "warm start: 0 architecture(s) queued" in out and "parameters outside space 'plain'" in out
    assert "s0_depth=2" in out and "s0_width=16" in out


@pytest.mark.parametrize("doc, needle", [
    ("not json", "is not JSON"),
    ("deep", "not in space 'plain'"),  # a depth beyond the study's max_depth (an integer range)
    ('{"stem": 3}', "is not an ArchSpec"),
    (None, "is not in space 'plain'"),  # a real spec, but wider than the study's options
    ("over", "over the budget params<="),
    ("unreachable", "params<=100 is below what space 'plain' on input 1x8x8 can reach"),
])
def test_an_enqueued_spec_that_does_not_fit_fails_in_one_line_and_writes_nothing(sqlite_url, tmp_path, capsys,
                                                                                   doc, needle):
    path = tmp_path / "spec.json"
    budget = "params<=20k"
    if doc is None:
        doc = sample_spec(get_space("plain", input_shape=(1, 8, 8), widths=(64,)), 0).to_json()
    elif doc == "deep":
        deep = get_space("plain", input_shape=(1, 8, 8), **{**TINY, "min_depth": 3, "max_depth": 3})
        doc = sample_spec(deep, 0).to_json()
    elif doc in ("over", "unreachable"):  # a spec of the space, one parameter over the budget
        arch = sample_spec(get_space("plain", input_shape=(1, 8, 8), **TINY), 1)
        params = int(estimate_cost(arch, (1, 8, 8), 10)["params"])
        # ... or a budget no network of the space reaches: refused before the spec is looked at.
        doc, budget = arch.to_json(), (f"params<={params - 1}" if doc == "over" else "params<=100")
    path.write_text(doc)
    code, _out, err = nas_cli("study", "create", "dst", "--space", "plain", "--budget", budget, "--no-fit-space",
                          "--option", "widths=[8, 16]", "--option", "max_depth=1", "--option", "kernels=[3]",
                          "--option", "hidden=[0, 32]", "--enqueue", str(path), "--storage", sqlite_url)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    store = Store(sqlite_url)
    try:
        assert store.get_study("dst") is None and "dst" not in optuna.get_all_study_names(store.optuna)
    finally:
        store.close()


def test_the_front_of_another_study_seeds_a_study_on_other_data(sqlite_url, tmp_path, capsys):
    searched(sqlite_url, trials=8)
    # Another dataset of another input size (16x16, 4 classes) in the npz format.
    rng = np.random.default_rng(0)
    x = rng.random((200, 16, 16), dtype=np.float32)
    y = (x[:, :8].mean(axis=(1, 2)) > x[:, 8:].mean(axis=(1, 2))).astype(np.int64) + 2 * (x[:, :, :8].mean(
        axis=(1, 2)) > x[:, :, 8:].mean(axis=(1, 2)))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    code, out, err = nas_cli("study", "create", "dst", "--space", "plain", "--data", f"npz:{tmp_path}/d.npz",
                         "--budget", "params<=20k", "--option", "widths=[8, 16]", "--option", "max_depth=1",
                         "--option", "kernels=[3]", "--option", "hidden=[0, 32]", "--warm-start", "src",
                         "--epochs", "2", "--trials", "3", "--storage", sqlite_url)
    assert code == 0, err
    n_front = len(front_specs(sqlite_url, "src"))
    store = Store(sqlite_url)
    try:
        dst = optuna.load_study(study_name="dst", storage=store.optuna)
        waiting = dst.get_trials(states=(TrialState.WAITING,))
        src_front = {_full(store, "src", int(t.user_attrs["warm_start"].split()[-1])) for t in waiting}
    finally:
        store.close()
    assert 1 <= len(waiting) <= n_front and f"warm start: {len(waiting)} architecture(s)" in out
    assert all(t.user_attrs["warm_start"].startswith("src trial ") for t in waiting)
    assert len(src_front) == len(waiting)
    # The same command for an existing study enqueues nothing twice.
    code, out, err = nas_cli("study", "enqueue", "dst", "--from", "src", "--storage", sqlite_url)
    assert code == 0 and "0 architecture(s) queued" in out and "already in the study" in out, out + err


def test_the_api_takes_a_warm_start_on_creation(sqlite_url):
    searched(sqlite_url)
    token = "t" * 24
    app = create_app(ApiSettings(storage=sqlite_url, tokens=(token,)))
    auth = {"Authorization": f"Bearer {token}"}
    arch = json.loads(front_specs(sqlite_url, "src")[0])
    body = {"name": "dst", **BASE, "space_options": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in TINY.items()}}
    with TestClient(app) as c:
        bad = c.post("/studies", json={**body, "enqueue": [{"stem": 1}]}, headers=auth)
        assert bad.status_code == 422 and bad.json()["field"] == "enqueue"
        unknown = c.post("/studies", json={**body, "warm_start": "nope"}, headers=auth)
        assert unknown.status_code == 422 and unknown.json()["field"] == "warm_start"
        assert c.get("/studies/dst").status_code == 404  # nothing was written
        r = c.post("/studies", json={**body, "enqueue": [arch], "warm_start": "src"}, headers=auth)
        assert r.status_code == 201, r.text
        ws = r.json()["warm_start"]
        assert ws["enqueued"][0] == "enqueue[0]"
        assert any("already in the study" in s["reason"] for s in ws["skipped"])  # the same network from src


# ------------------------------------------------------------------------------- weight inheritance


def test_inheriting_from_the_same_architecture_reproduces_the_parent():
    spec = sample_spec(get_space("resnet", input_shape=(1, 8, 8)), 4)
    torch.manual_seed(0)
    parent = build_model(spec, (1, 8, 8), 10).eval()
    for m in parent.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    torch.manual_seed(1)
    child = build_model(spec, (1, 8, 8), 10).eval()
    share = inherit_weights(child, parent.state_dict(), spec, spec)
    assert share == 1.0
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(child(x), parent(x))
    shapes = spec_state_shapes(spec, (1, 8, 8), 10)
    assert overlap(spec, shapes, spec, shapes) == 1.0


def test_a_wider_deeper_child_gets_the_parents_slices_in_place():
    space = get_space("plain", input_shape=(1, 8, 8), widths=(8, 16), kernels=(3, 5), max_depth=2, hidden=(0,),
                      rank_ratios=(1.0,))
    small = space.suggest(optuna.trial.FixedTrial({"stem_width": 8, "s0_depth": 1, "s0_width": 8, "s0_kernel": 3,
                                                   "s0_rank": 1.0, "s1_depth": 1, "s1_width": 16, "s1_kernel": 3,
                                                   "s1_rank": 1.0, "s2_depth": 1, "s2_width": 32, "s2_kernel": 3,
                                                   "s2_rank": 1.0, "head_hidden": 0}))
    big = space.suggest(optuna.trial.FixedTrial({"stem_width": 16, "s0_depth": 2, "s0_width": 16, "s0_kernel": 5,
                                                 "s0_rank": 1.0, "s1_depth": 1, "s1_width": 32, "s1_kernel": 3,
                                                 "s1_rank": 1.0, "s2_depth": 1, "s2_width": 32, "s2_kernel": 3,
                                                 "s2_rank": 1.0, "head_hidden": 0}))
    parent = build_model(small, (1, 8, 8), 10).state_dict()
    child = build_model(big, (1, 8, 8), 10)
    before = {k: v.clone() for k, v in child.state_dict().items()}
    share = inherit_weights(child, parent, big, small)
    after = child.state_dict()
    assert 0 < share < 1
    # Stage 1's block is block 1 of the parent but block 2 of the (deeper) child: matched by place.
    assert torch.equal(after["blocks.2.conv1.conv.reduce.weight"][:16, :8], parent["blocks.1.conv1.conv.reduce.weight"])
    # A 3x3 parent kernel sits in the middle of the child's 5x5 one; the rim keeps its initialisation.
    w = after["blocks.0.conv1.conv.reduce.weight"]
    assert torch.equal(w[:8, :8, 1:4, 1:4], parent["blocks.0.conv1.conv.reduce.weight"])
    assert torch.equal(w[:8, :8, 0], before["blocks.0.conv1.conv.reduce.weight"][:8, :8, 0])
    # The child's second stage-0 block has no counterpart: untouched.
    assert torch.equal(after["blocks.1.conv1.conv.reduce.weight"], before["blocks.1.conv1.conv.reduce.weight"])
    shapes = spec_state_shapes
    assert overlap(big, shapes(big, (1, 8, 8), 10), small, shapes(small, (1, 8, 8), 10)) == pytest.approx(share)


def test_full_rank_and_low_rank_convolutions_do_not_pass_weights():
    def spec(rank: float) -> ArchSpec:
        space = get_space("plain", input_shape=(1, 8, 8), widths=(8,), kernels=(3,), max_depth=1, hidden=(0,),
                          rank_ratios=(rank,))
        return sample_spec(space, 0)

    dense, low = spec(1.0), spec(0.5)
    child = build_model(dense, (1, 8, 8), 10)
    before = child.state_dict()["blocks.0.conv1.conv.reduce.weight"].clone()
    inherit_weights(child, build_model(low, (1, 8, 8), 10).state_dict(), dense, low)
    assert torch.equal(child.state_dict()["blocks.0.conv1.conv.reduce.weight"], before)
    shapes = spec_state_shapes
    assert overlap(dense, shapes(dense, (1, 8, 8), 10), low, shapes(low, (1, 8, 8), 10)) < 0.5


def test_a_study_with_inheritance_starts_networks_from_stored_parents(sqlite_url):
    searched(sqlite_url, name="inh", trials=6, inherit_weights=True)
    trials = trials_of(sqlite_url, "inh")
    trained = sorted((t for t in trials if t.user_attrs.get("status") == "trained"), key=lambda t: t.number)
    assert len(trained) >= 2
    assert "inherited_from" not in trained[0].user_attrs  # nothing to inherit from yet
    later = [t for t in trained[1:] if "inherited_from" in t.user_attrs]
    assert later, "later networks should find a parent"
    numbers = {t.number for t in trained}
    for t in later:
        src = t.user_attrs["inherited_from"]
        assert src["trial"] in numbers and src["trial"] < t.number and 0.2 <= src["overlap"] <= 1.0
    # Its evaluations are kept apart from training from scratch (another fidelity key).
    a = make_spec(name="x", **BASE, inherit_weights=True).fidelity_key
    assert a != make_spec(name="x", **BASE).fidelity_key
