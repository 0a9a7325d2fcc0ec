"""Zero-cost proxies (issue 18): what each score must be, the cache, and proxy-guided search."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from conftest import nas_cli
from torch import nn

from nas import NasError
from nas.search import PROXY_NAMES, ProxyScorer, create_study, make_sampler, make_spec, resolve_sampler
from nas.workers import run_study
from objectives import (
    PROXIES,
    VOTE,
    ProxyBatch,
    ProxyError,
    estimate_cost,
    load_dataset,
    proxy_batch,
    score_arch,
    score_model,
    vote_scores,
)
from search_spaces import build_model, get_space, sample_spec
from storage import Store

DATA_FREE = ("synflow", "params", "flops")
LEARNED = ("synflow", "naswot", "jacob_cov", "grad_norm", "snip")
TINY = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0, 0.5)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def batch(digits):
    return proxy_batch(digits.x_train, digits.y_train, digits.num_classes, batch_size=32, seed=0)


def archs(space: str, n: int, input_shape=(1, 8, 8)):
    sp = get_space(space, input_shape=input_shape)
    return [sample_spec(sp, s) for s in range(n)]


def test_the_names_the_cli_accepts_are_the_proxies_there_are():
    assert list(PROXY_NAMES) == [*PROXIES, VOTE]


@pytest.mark.parametrize("space", ["plain", "resnet", "mobilenetv2"])
def test_every_proxy_gives_a_finite_deterministic_score_on_every_space(space, batch):
    for arch in archs(space, 2):
        first = score_arch(arch, batch, list(PROXIES))
        assert all(math.isfinite(v) for v in first.values()), first
        assert score_arch(arch, batch, list(PROXIES)) == first  # same seed, same batch: same score


def test_data_free_scores_do_not_depend_on_the_batch(digits, batch):
    """SynFlow uses an all-ones input (Tanaka et al. 2020): the data never enter it."""
    other = proxy_batch(digits.x_val, digits.y_val, digits.num_classes, batch_size=17, seed=5)
    noise = ProxyBatch(torch.randn_like(batch.x) * 10, batch.y, batch.num_classes)
    for arch in archs("resnet", 2):
        want = score_arch(arch, batch, DATA_FREE)
        assert score_arch(arch, other, DATA_FREE) == want
        assert score_arch(arch, noise, DATA_FREE) == want
        # the data-dependent ones do see the batch
        assert score_arch(arch, other, ["naswot"]) != score_arch(arch, batch, ["naswot"])


def _deaf(arch, batch):
    """The network of ``arch`` with a zero stem: its output no longer depends on its input."""
    torch.manual_seed(0)
    model = build_model(arch, batch.input_shape, batch.num_classes)
    with torch.no_grad():
        for m in model.stem.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
    x = batch.x[:4]
    model.eval()
    out = model(x)
    assert torch.allclose(out, out[:1].expand_as(out))  # the premise: one output for every input
    return model


@pytest.mark.parametrize("space", ["plain", "resnet", "mobilenetv2"])
def test_a_network_that_ignores_its_input_scores_lowest(space, batch):
    nets = archs(space, 3)
    deaf = score_model(_deaf(nets[0], batch), batch, LEARNED)
    for arch in nets:
        scores = score_arch(arch, batch, LEARNED)
        for name in LEARNED:
            assert deaf[name] < scores[name], (name, deaf[name], scores[name])
    # the kernel of identical codes is singular, the Jacobians have no correlation: no score at all
    assert deaf["naswot"] == -math.inf and deaf["jacob_cov"] == -math.inf


def test_naswot_is_the_log_determinant_of_the_hamming_kernel():
    """Mellor et al. 2021, eq. 2, computed the slow way: K[i, j] = N_A - Hamming(c_i, c_j)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3))
    x = torch.randn(6, 1, 3, 4)
    b = ProxyBatch(x, torch.zeros(6, dtype=torch.long), 3)
    with torch.no_grad():
        h1 = net[2](net[1](net[0](x)))
        h2 = net[4](net[3](h1))
    codes = torch.cat([h1 > 0, h2 > 0], dim=1)
    n_a = codes.shape[1]
    k = torch.tensor([[n_a - int((codes[i] != codes[j]).sum()) for j in range(6)] for i in range(6)],
                     dtype=torch.float64)
    want = float(torch.logdet(k))
    assert score_model(net, b, ["naswot"])["naswot"] == pytest.approx(want, rel=1e-9)


def test_synflow_of_a_linear_chain_is_its_path_count():
    """With every weight 1, R = 1^T W2 W1 1 counts the paths, and sum theta dR/dtheta = layers x R."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.fill_(-1.0)  # signs are dropped: |theta|
    b = ProxyBatch(torch.randn(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), 2)
    assert score_model(net, b, ["synflow"])["synflow"] == pytest.approx(2 * (4 * 3 * 2))


def test_params_and_flops_are_the_cost_models(batch):
    for arch in archs("mobilenetv2", 2):
        scores = score_arch(arch, batch, ["params", "flops"])
        model = build_model(arch, batch.input_shape, batch.num_classes)
        assert scores["params"] == sum(p.numel() for p in model.parameters())
        assert scores["flops"] == estimate_cost(arch, batch.input_shape, batch.num_classes).totals["flops"]


def test_the_vote_elects_the_network_every_member_prefers():
    scores = [{"synflow": 1.0, "jacob_cov": -5.0, "snip": 0.1},
              {"synflow": 3.0, "jacob_cov": -1.0, "snip": 0.9},   # best on all three
              {"synflow": 2.0, "jacob_cov": -math.inf, "snip": 0.5}]
    votes = vote_scores(scores)
    assert max(range(3), key=votes.__getitem__) == 1
    assert votes[1] == 3.0  # top rank of three on every member


def test_an_unknown_proxy_is_refused_with_the_accepted_names(batch):
    with pytest.raises(ProxyError, match="unknown proxy 'zen'; accepted: synflow, naswot"):
        score_arch(archs("plain", 1)[0], batch, ["zen"])
    with pytest.raises(NasError, match=r"^proxy: unknown proxy 'zen'; accepted: synflow, .*vote$"):
        make_spec(name="s", space="plain", proxy="zen")
    with pytest.raises(NasError, match="proxy_candidates applies with a proxy only"):
        make_spec(name="s", space="plain", budget="params<=50k", proxy_candidates=3)


def test_scores_are_cached_per_architecture_and_input_shape(tmp_path, digits):
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    spec = make_spec(name="c", space="plain", data="digits", budget="params<=50k")
    arch = archs("plain", 1)[0]
    scorer = ProxyScorer.for_study(spec, digits, store)
    first = scorer.scores(arch, ["synflow", "naswot"])
    assert store.get_proxy_scores(arch.hash, scorer.input_key) == first
    # a second scorer (another worker) reads the stored scores: a value stored there is what it answers
    other = archs("plain", 2)[1]
    store.put_proxy_scores(other.hash, scorer.input_key, scorer.input_info, {"synflow": 123.0})
    assert ProxyScorer.for_study(spec, digits, store).scores(other, ["synflow"]) == {"synflow": 123.0}
    # another input shape is another key: scored anew
    bigger = ProxyScorer.for_study(spec, digits.resized(12), store)
    assert bigger.input_key != scorer.input_key
    assert bigger.scores(other, ["synflow"])["synflow"] != 123.0
    store.close()


def test_auto_runs_tpe_and_gp_is_a_choice():
    small = make_spec(name="s", space="plain", budget="params<=50k", trials=40)
    assert small.sampler == "auto" and resolve_sampler(small) == "tpe"
    assert isinstance(make_sampler(small), optuna.samplers.TPESampler)
    assert resolve_sampler(make_spec(name="s", space="plain", budget="params<=50k", trials=500)) == "tpe"
    gp = make_spec(name="s", space="plain", budget="params<=50k", trials=40, sampler="gp")
    assert resolve_sampler(gp) == "gp" and isinstance(make_sampler(gp), optuna.samplers.GPSampler)


def _study(store, name, **kw):
    fields = dict(name=name, space="plain", data="digits", budget="params<=6k", trials=6, seed=0,
                  space_options=TINY, fidelity={"epochs": 1, "batch_size": 64}, device="cpu")
    fields.update(kw)
    create_study(make_spec(**fields), store)
    run_study(name, store)
    return optuna.load_study(study_name=name, storage=store.optuna).trials


def test_gp_sampler_runs_a_constrained_study_past_its_random_start(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'gp.db'}")
    trials = _study(store, "gp", sampler="gp", trials=7)  # 4 random start-up trials, then the GP
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len([t for t in done if t.user_attrs["status"] != "over_budget"]) >= 7
    assert all(t.constraints for t in done)  # the GP's constraint models have their data
    store.close()


def test_proxy_guided_search_trains_the_candidate_the_proxy_picked_and_is_reproducible(tmp_path):
    runs = []
    for i in range(2):
        store = Store(f"sqlite:///{tmp_path / f'p{i}.db'}")
        trials = _study(store, "p", sampler="tpe", proxy="synflow", proxy_candidates=4, trials=5)
        picks = [t for t in trials if "proxy_pick" in t.user_attrs]
        assert len(picks) >= 4
        for t in picks:
            pick = t.user_attrs["proxy_pick"]
            # the trial's own parameters are the network the proxy chose: the best scored of the
            # candidates no costlier than the sampler's own answer (the first), at the cost it trained at
            assert t.user_attrs["spec_hash"] == pick["spec_hash"]
            costs, chosen = pick["costs"], pick["chosen"]
            assert 1 <= pick["candidates"] == len(costs) <= 4
            assert pick["eligible"] == [i for i, c in enumerate(costs) if all(map(float.__le__, c, costs[0]))]
            assert pick["scores"][chosen] == max(pick["scores"][i] for i in pick["eligible"])
            assert all(s is None for i, s in enumerate(pick["scores"]) if i not in pick["eligible"])
            assert t.values[1:] == pytest.approx(costs[chosen])
        assert any(len(t.user_attrs["proxy_pick"]["eligible"]) > 1 for t in picks)  # the proxy had a choice
        # no hidden trials: every trial of the study is one that was trained (or rejected over budget)
        assert {t.user_attrs["status"] for t in trials} <= {"trained", "reused", "over_budget"}
        runs.append([t.user_attrs["spec_hash"] for t in trials])
        store.close()
    assert runs[0] == runs[1]  # seeded: the same study twice makes the same choices


def test_nas_proxies_scores_a_space_and_ranks_a_trained_study(tmp_path, capsys):
    import json

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    code, out, err = nas_cli("proxies", "--space", "resnet", "--n", "3", "--proxies", "synflow,vote",
                             "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and all(set(r) == {"arch", "synflow", "vote"} for r in rows)
    assert sorted(r["vote"] for r in rows) != [rows[0]["vote"]] * 3  # the vote ranks them

    store = Store(url, mode="create")
    create_study(make_spec(name="t", space="plain", data="digits", budget="params<=20k", trials=4, seed=0,
                           sampler="random", fidelity={"epochs": 1}, device="cpu"), store)
    run_study("t", store)
    store.close()
    code, out, err = nas_cli("proxies", "--study", "t", "--proxies", "synflow,params,vote", "--format", "json",
                             "--storage", url)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["proxy"] for r in rows] == ["synflow", "params", "vote"]
    assert all(r["networks"] >= 3 and (r["spearman"] is None or -1 <= r["spearman"] <= 1) for r in rows)
    store = Store(url)
    with store.session() as s:
        from sqlalchemy import func, select

        from storage import ProxyScoreRow
        assert s.scalar(select(func.count()).select_from(ProxyScoreRow)) >= 3 * rows[0]["networks"]  # cached
    store.close()


@pytest.mark.parametrize("args, needle", [
    (["proxies", "--space", "resnet", "--proxies", "zen"], "--proxies: unknown proxy 'zen'; accepted: synflow"),
    (["proxies"], "give --study NAME"),
    (["proxies", "--space", "plain", "--study", "x"], "not both"),
    (["proxies", "--space", "plain", "--budget", "flops<=1"], "no architecture of space 'plain' drawn within"),
    (["study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--proxy", "zen"],
     "proxy: unknown proxy 'zen'; accepted:"),
])
def test_bad_proxy_input_is_one_line_and_exit_2(args, needle, capsys, tmp_path):
    code, _, err = nas_cli(*args, *(["--storage", f"sqlite:///{tmp_path / 'n.db'}"]
                                            if args[0] == "study" else []))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "n.db").exists()  # nothing written


def test_a_proxy_sampler_survives_pickling_as_ray_tune_saves_its_searcher(tmp_path, digits):
    import pickle

    url = f"sqlite:///{tmp_path / 'k.db'}"
    store = Store(url)
    spec = make_spec(name="k", space="plain", data="digits", budget="params<=6k", space_options=TINY, seed=0,
                     proxy="params", proxy_candidates=3)
    create_study(spec, store)
    sampler = make_sampler(spec, store=store, data=digits)
    again = pickle.loads(pickle.dumps(sampler))
    study = optuna.load_study(study_name="k", storage=store.optuna, sampler=again)
    trial = study.ask()
    arch = get_space("plain", input_shape=digits.input_shape, **spec.space_options).suggest(trial)
    assert store.optuna.get_trial(trial._trial_id).user_attrs["proxy_pick"]["spec_hash"] == arch.hash
    assert store.get_proxy_scores(arch.hash, again._setup()[0].input_key)  # the cache, reopened from the URL
    store.close()
