"""Studies on a supernet fitted to their budget within the supernet's space (issue 30, item 3).

A tight budget narrows the supernet's space to a sub-space (lower depth cap, smaller width, rank,
kernel and hidden choices; TinyNAS's rule) whose architectures are all subnets of the supernet;
``--no-fit-space`` keeps the supernet's space; a budget no subnet reaches is refused in one line.
"""

from __future__ import annotations

import json
import random

import optuna
import pytest
import torch
from conftest import nas_cli

from nas.search import load_supernet
from objectives import USABLE_SHARE, assess, fit_subspace, parse_budget, sample_within
from search_spaces import SuperNet, get_space
from storage import Store

torch.set_num_threads(1)

#: A tiny plain space with room to narrow: depth 1-2, two widths, ranks (kernels and hidden fixed).
OPTIONS = ["--option", "max_depth=2", "--option", "widths=(8,16)", "--option", "kernels=(3,)", "--option",
           "hidden=(0,)"]
#: Of the supernet's space 2.6 % lies within it (its minimum is 1.49k parameters).
TIGHT = "params<=3k"
#: What the narrowing may change: never width_mult, stem_stride, stages (those are not subnets).
NARROWED = {"max_depth", "widths", "stem_widths", "width_mults", "hidden", "kernels", "expansions", "rank_ratios"}


@pytest.fixture(scope="module")
def supernet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding supernet 'sn' of the tiny plain space above, trained 1 epoch."""
    url = f"sqlite:///{tmp_path_factory.mktemp('supernet_fit') / 'nas.db'}"
    code, _, err = nas_cli("supernet", "train", "sn", "--space", "plain", *OPTIONS, "--epochs", "1", "--threads", "1",
                           "--quiet", "--storage", url)
    assert code == 0, err
    return url


def _show(kind: str, name: str, url: str) -> dict:
    code, out, err = nas_cli(kind, "show", name, "--format", "json", "--storage", url)
    assert code == 0, err
    return json.loads(out)


def _state(url: str) -> tuple[dict[str, bytes], list[str]]:
    store = Store(url)
    try:
        artifacts = {k: store.get_artifact(k) or b"" for k in store.artifact_keys("")}
        studies = sorted(s.study_name for s in optuna.get_all_study_summaries(store.optuna))
    finally:
        store.close()
    return artifacts, studies


def _subnets_extract_exactly(net: SuperNet, space_name: str, options: dict, n: int = 40) -> int:
    """Every one of ``n`` archs drawn from the (sub-)space extracts from ``net`` and computes what the
    supernet computes with it active; the number drawn."""
    space = get_space(space_name, input_shape=net.input_shape, **options)
    archs = sample_within(space, None, net.num_classes, n, seed=1, tries_per_arch=20)
    x = torch.randn(4, *net.input_shape, generator=torch.Generator().manual_seed(0))
    net.eval()
    for arch in archs:
        assert net.contains(arch), arch
        alone = net.extract(arch).eval()
        net.set_active(arch)
        with torch.no_grad():
            assert torch.allclose(alone(x), net(x), atol=1e-5)
    return len(archs)


def test_a_tight_budget_fits_a_sub_space_whose_archs_are_subnets_and_the_study_runs_within_it(
        supernet: str) -> None:
    full = _show("supernet", "sn", supernet)["space_options"]
    code, out, err = nas_cli("study", "create", "tight", "--supernet", "sn", "--budget", TIGHT, "--trials", "4",
                             "--sampler", "random", "--storage", supernet)
    assert code == 0, err
    assert "space fitted to the budget within supernet sn's space" in out
    doc = _show("study", "tight", supernet)
    spec, fit = doc["spec"], doc["fit"]
    options = spec["space_options"]
    assert spec["supernet"] == "sn" and spec["fit_space"] is True and options == fit["options"]
    assert fit["options_before"] == full and fit["within"] == "supernet sn" and fit["kept"] == {}
    assert fit["share_before"] < USABLE_SHARE <= fit["share_after"]
    assert doc["feasibility"]["share_within_budget"] >= USABLE_SHARE  # measured again on the narrowed space
    assert options != full and set(fit["scaled"]) <= NARROWED
    assert {k for k in full if options[k] != full[k]} == set(fit["scaled"])
    assert options["max_depth"] <= full["max_depth"] and set(options["widths"]) <= set(full["widths"])
    assert set(options["rank_ratios"]) <= set(full["rank_ratios"])
    store = Store(supernet)
    try:
        net, _ = load_supernet(store, "sn")
    finally:
        store.close()
    assert _subnets_extract_exactly(net, "plain", options) >= 5
    # runs to its target; every trial drawn from the sub-space, the evaluated ones within the budget
    code, out, err = nas_cli("study", "run", "tight", "--quiet", "--storage", supernet)
    assert code == 0, err
    assert "4/4 within budget (4 evaluated on the supernet)" in out
    sub = get_space("plain", input_shape=(1, 8, 8), **options)
    store = Store(supernet)
    try:
        trials = optuna.load_study(study_name="tight", storage=store.optuna).get_trials(deepcopy=False)
    finally:
        store.close()
    evaluated = [t for t in trials if t.user_attrs.get("status") == "supernet"]
    assert len(evaluated) == 4
    for t in trials:
        sub.check_params(t.params)  # raises for a parameter outside the sub-space
    for t in evaluated:
        assert t.user_attrs["cost"]["params"] <= 3000
        assert t.user_attrs["accuracy_source"] == "supernet sn"


def test_no_fit_space_keeps_the_supernets_space(supernet: str) -> None:
    full = _show("supernet", "sn", supernet)["space_options"]
    code, out, err = nas_cli("study", "create", "whole", "--supernet", "sn", "--budget", TIGHT, "--no-fit-space",
                             "--trials", "2", "--storage", supernet)
    assert code == 0, err
    assert "fitted" not in out
    doc = _show("study", "whole", supernet)
    assert doc["spec"]["space_options"] == full and doc["spec"]["fit_space"] is False and doc["fit"] is None
    assert doc["feasibility"]["share_within_budget"] < USABLE_SHARE


def test_a_budget_no_subnet_reaches_is_refused_in_one_line_writing_nothing(supernet: str) -> None:
    before = _state(supernet)
    code, out, err = nas_cli("study", "create", "never", "--supernet", "sn", "--budget", "params<=1k",
                             "--storage", supernet)
    assert code == 2 and out == "" and err.startswith("error: budget: ") and err.count("\n") == 1, err
    assert "params<=1k is below what space 'plain'" in err and "supernet 'sn' needs 1.49k" in err
    assert "width_mult" not in err and "--no-fit-space" not in err  # no scaled variant: a sub-space is no smaller
    assert _state(supernet) == before


def test_a_stored_study_may_hold_a_sub_space_of_its_supernets_not_another_space(supernet: str, tmp_path) -> None:
    config = tmp_path / "study.toml"
    config.write_text('name = "cfg_ok"\nspace = "plain"\nbudget = "params<=6k"\nfit_space = false\n'
                      '[space_options]\nmax_depth = 1\nwidths = [8]\nkernels = [3]\nhidden = [0]\n')
    code, _, err = nas_cli("study", "create", "--config", str(config), "--supernet", "sn", "--trials", "1",
                           "--storage", supernet)
    assert code == 0, err
    # checked as given, before fitting (which could narrow 32 away)
    config.write_text('name = "cfg_bad"\nspace = "plain"\nbudget = "params<=3k"\n'
                      '[space_options]\nmax_depth = 1\nwidths = [8, 32]\nkernels = [3]\nhidden = [0]\n')
    before = _state(supernet)
    code, _, err = nas_cli("study", "create", "--config", str(config), "--supernet", "sn", "--storage", supernet)
    assert code == 2 and err.count("\n") == 1 and "space_options: got " in err, err
    assert "not a sub-space of supernet 'sn'" in err and "widths [8, 32] is not within [8, 16]" in err
    assert _state(supernet) == before


@pytest.mark.parametrize(("space", "options", "shape", "budget"), [
    ("plain", {"max_depth": 2, "widths": (8, 16), "kernels": (3, 5), "hidden": (0, 32)}, (1, 8, 8), "params<=4k"),
    ("resnet", {"max_depth": 2}, (1, 8, 8), "params<=20k"),
    ("mobilenetv2", {"stages": 3, "max_depth": 2}, (1, 8, 8), "flops<=150k"),
])
def test_fitted_sub_spaces_of_each_space_hold_only_subnets(space: str, options: dict, shape: tuple, budget: str
                                                           ) -> None:
    whole = get_space(space, input_shape=shape, **options)
    b = parse_budget(budget)
    assert assess(whole, b, 10, samples=300).share < USABLE_SHARE
    fit = fit_subspace(space, shape, options, b, 10)
    assert fit.scaled and set(fit.scaled) <= NARROWED and fit.share_after >= USABLE_SHARE > fit.share_before
    assert fit.input_size is None and fit.options_before is not None
    for k, (old, new) in fit.scaled.items():  # truncated to the smaller choices, never grown
        if k == "max_depth":
            assert whole.options.min_depth <= new < old  # type: ignore[attr-defined]
        else:
            assert set(new) < set(old) and max(new) <= sorted(set(old))[len(set(new)) - 1]
    net = SuperNet.from_space(whole, shape, 10)
    random.seed(0)
    assert _subnets_extract_exactly(net, space, fit.options, n=15) >= 5
