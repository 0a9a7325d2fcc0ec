"""Zero-cost proxies in a study: scores cached in the store, and proxy-guided sampling.

**Scores.** :class:`ProxyScorer` scores architectures on one fixed mini-batch of a study's
training split (``objectives.score_arch``) and caches every score in ``lightnas_proxy_scores`` by
architecture hash and *input key*: the hash of what the score depends on besides the
architecture (input shape, classes, data source, splits, batch size, seed, proxy version).

**Proxy-guided sampling** (``--proxy NAME``, ``vote`` for the vote of Abdelfattah et al.).
:class:`ProxySampler` wraps the study's sampler. When a trial starts (``before_trial``) it draws
``proxy_candidates`` architectures *from the wrapped sampler itself* (the first as it would
answer the trial: its relative sample, its independent sample for the other parameters; the
others from its independent sample, which is TPE's univariate model, GP's and NSGA-II's random
draw, so that a deterministic relative sample does not give the same candidate K times), keeps those
within the budget (the analytic cost makes that free), scores them, and answers the trial with
the best-scoring one *among those no costlier than the sampler's own answer* (the first
candidate) on every cost objective of the study; the trial then trains that network like any
other. The sampler decides where on the cost axis to look, the proxy only picks a network
expected to be more accurate at no more cost there. A pick of the best score over all candidates
(the first version) chose the costly end of each set -- a proxy's score grows with capacity --
and left the front's cheap end unexplored: on the real MNIST files it ended below random search
(BENCHMARKS section 11). How this keeps the sampler honest:

* no hidden trials: the candidates that lose are never trials and never get a value; the one
  that wins is an ordinary trial whose parameters are exactly the network trained, and the wrapped
  sampler learns from it as from any trial (its ``after_trial`` is called as usual). The choice is
  recorded on the trial (user attribute ``proxy_pick``: proxy, candidates, their cost objectives,
  the eligible ones, their scores, the one chosen).
* reproducible: the candidates come from the wrapped sampler's seeded random state, the scores
  from a network initialised under the study's seed on a batch fixed by the study's seed.
* distributed: the wrapper is made by :func:`nas.search.make_sampler` wherever a sampler is made
  (a ``nas worker`` on PostgreSQL, the Ray driver's searcher), it only uses Optuna's sampler
  interface, and the scores it computes go to the shared store, so a worker never scores an
  architecture another one scored.
* trials with fixed parameters (a warm start, a retried trial) are left alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ._spec import StudySpec

if TYPE_CHECKING:
    from objectives import Dataset, ProxyBatch
    from search_spaces import ArchSpec, SearchSpace
    from storage import Store

__all__ = ["PROXY_VERSION", "ProxySampler", "ProxyScorer", "proxy_input_key", "study_correlations"]

#: Bumped when a proxy's formula changes, so cached scores of the old formula are not reused.
PROXY_VERSION = 1
#: Draws per wanted candidate before giving up on finding enough within the budget (a fitted space has
#: at least objectives.USABLE_SHARE of its architectures within it).
_DRAWS_PER_CANDIDATE = 16


def proxy_input_key(info: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:24]


class ProxyScorer:
    """Scores architectures of a study (or of any data) with zero-cost proxies, through the cache.

    Args:
        data: the dataset (the batch is drawn from its training split).
        store: the store holding the cache (``None``: no cache).
        source: what the data are (``StudySpec.fidelity_dict`` of a study), part of the input key.
        seed: seed of the batch and of the networks' initial weights.
        batch_size: examples in the batch.
        threads: torch threads while scoring (``None``: unchanged; one by default, see
            :func:`objectives.score_model`).
    """

    def __init__(self, data: Dataset, store: Store | None, source: dict[str, Any], *, seed: int = 0,
                 batch_size: int = 64, threads: int | None = 1) -> None:
        from objectives import proxy_batch

        self.data, self.store, self.seed, self.threads = data, store, seed, threads
        self.batch: ProxyBatch = proxy_batch(data.x_train, data.y_train, data.num_classes, batch_size=batch_size,
                                             seed=seed)
        self.input_info = {"source": source, "input_shape": list(data.input_shape), "classes": data.num_classes,
                           "batch_size": batch_size, "seed": seed, "version": PROXY_VERSION}
        self.input_key = proxy_input_key(self.input_info)

    @classmethod
    def for_study(cls, study_spec: StudySpec, data: Dataset, store: Store | None, *,
                  threads: int | None = 1) -> ProxyScorer:
        src = {k: v for k, v in study_spec.fidelity_dict().items() if k in ("data", "val_fraction", "train_fraction",
                                                                           "input_size", "seed")}
        return cls(data, store, src, seed=study_spec.seed, threads=threads)

    def scores(self, arch: ArchSpec, names: Sequence[str]) -> dict[str, float]:
        """The proxies ``names`` of ``arch`` (``vote`` is not one: see :func:`objectives.vote_scores`)."""
        from objectives import score_arch

        from .._artifacts import save_arch

        cached = self.store.get_proxy_scores(arch.hash, self.input_key) if self.store is not None else {}
        missing = [n for n in names if n not in cached]
        if missing:
            t0 = time.perf_counter()
            new = score_arch(arch, self.batch, missing, seed=self.seed, threads=self.threads)
            if self.store is not None:
                save_arch(self.store, arch)
                self.store.put_proxy_scores(arch.hash, self.input_key, self.input_info, new,
                                            seconds=time.perf_counter() - t0)
            cached = {**cached, **new}
        return {n: cached[n] for n in names}

    def rank(self, archs: Sequence[ArchSpec], proxy: str) -> list[float]:
        """One value per architecture, higher is better: the proxy's score, or the vote."""
        from objectives import VOTE, VOTE_MEMBERS, vote_scores

        if proxy == VOTE:
            return vote_scores([self.scores(a, VOTE_MEMBERS) for a in archs])
        return [self.scores(a, [proxy])[proxy] for a in archs]


class _Snapshot:
    """A study whose trials are read once: a sampler answering many draws for one trial sees the
    same trials every time, without a database read per parameter (TPE with ``constant_liar``
    reads them afresh on every call). Everything else is the study's."""

    def __init__(self, study: Study) -> None:
        self._study = study
        self._trials = study._get_trials(deepcopy=False, use_cache=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return [copy.deepcopy(t) for t in trials] if deepcopy else trials

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


class _DrawTrial:
    """A define-by-run trial answered by a sampler for ``trial`` without creating a trial: the
    sampler's relative sample where it has one, its independent sample elsewhere."""

    def __init__(self, sampler: BaseSampler, study: Study, trial: FrozenTrial, *, relative: bool) -> None:
        self.sampler, self.study, self.trial = sampler, study, trial
        space = sampler.infer_relative_search_space(study, trial) if relative else {}
        self.relative = sampler.sample_relative(study, trial, space) if space else {}
        self.space = space
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _ask(self, name: str, dist: BaseDistribution) -> Any:
        rel = self.space.get(name)
        if name in self.relative and rel is not None and rel == dist:
            value = self.relative[name]
        else:
            value = self.sampler.sample_independent(self.study, self.trial, name, dist)
        self.params[name], self.distributions[name] = value, dist
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._ask(name, CategoricalDistribution(list(choices)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._ask(name, IntDistribution(low, high, step=step, log=log)))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float:
        return float(self._ask(name, FloatDistribution(low, high, step=step, log=log)))


class ProxySampler(BaseSampler):
    """The study's sampler, answering each trial with the best-scoring of several of its own
    candidates within the budget (see the module docstring).

    Args:
        base: the study's sampler (TPE, NSGA-II, GP, random).
        study_spec: the study (space, budget, proxy, number of candidates, seed).
        store: the store (the score cache; ``None``: no cache).
        data: the study's dataset when the caller has it loaded (otherwise loaded on first use).
        threads: torch threads while scoring (one by default, see :func:`objectives.score_model`).
    """

    def __init__(self, base: BaseSampler, study_spec: StudySpec, store: Store | None = None, *,
                 data: Dataset | None = None, threads: int | None = 1) -> None:
        if study_spec.proxy is None:
            raise ValueError("ProxySampler needs a study with a proxy")
        self.base, self.study_spec, self.store, self.threads = base, study_spec, store, threads
        self.proxy: str = study_spec.proxy
        self.k = study_spec.proxy_candidates
        self._data = data
        self._scorer: ProxyScorer | None = None
        self._space: SearchSpace | None = None
        self._chosen: dict[int, tuple[dict[str, Any], dict[str, BaseDistribution]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its searcher (and this sampler with it): no store connection, no data;
        # both come back on first use from the URL and the study spec.
        url = self.store.url if self.store is not None else self.__dict__.get("_store_url")
        return {**self.__dict__, "store": None, "_store_url": url, "_data": None, "_scorer": None, "_space": None,
                "_chosen": {}}

    def _setup(self) -> tuple[ProxyScorer, SearchSpace]:
        if self.store is None and self.__dict__.get("_store_url"):
            from storage import Store

            self.store = Store(self.__dict__["_store_url"], mode="existing")
        if self._scorer is None or self._space is None:
            data = self._data if self._data is not None else self.study_spec.load_data()
            self._scorer = ProxyScorer.for_study(self.study_spec, data, self.store, threads=self.threads)
            self._space = self.study_spec.search_space(data.input_shape)
        return self._scorer, self._space

    def _costs(self, arch: ArchSpec) -> list[float] | None:
        """The study's cost objectives of ``arch`` (``[]``: accuracy is its only objective), or
        None when it is over the budget."""
        scorer, _ = self._setup()
        cost = self.study_spec.cost(arch, scorer.data.input_shape, scorer.data.num_classes)
        budget = self.study_spec.budget_obj()
        if budget is not None and budget.violations(cost):
            return None
        return [float(cost[o]) for o in self.study_spec.objectives if o != "accuracy"]

    # ------------------------------------------------------------------ the sampler interface
    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)
        if trial.system_attrs.get("fixed_params"):  # a warm start or a retried trial: its parameters stand
            return
        scorer, space = self._setup()
        draws: list[tuple[ArchSpec, dict[str, Any], dict[str, BaseDistribution]]] = []
        costs: list[list[float]] = []
        seen: set[str] = set()
        snapshot: Any = _Snapshot(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "independent sampling" notes of TPE/GP: expected here
            for i in range(self.k * _DRAWS_PER_CANDIDATE):
                draw = _DrawTrial(self.base, snapshot, trial, relative=i == 0)
                arch = space.suggest(draw)
                if arch.hash in seen:
                    continue
                seen.add(arch.hash)
                cost = self._costs(arch)
                if cost is None:  # over the budget
                    continue
                draws.append((arch, draw.params, draw.distributions))
                costs.append(cost)
                if len(draws) >= self.k:
                    break
        if not draws:  # nothing within the budget: the wrapped sampler answers, the budget rejects it
            return
        # Eligible: no costlier than the sampler's own answer (the first candidate) on any cost objective.
        eligible = [i for i, c in enumerate(costs) if all(x <= y for x, y in zip(c, costs[0], strict=True))]
        values = scorer.rank([draws[i][0] for i in eligible], self.proxy)
        best = eligible[max(range(len(eligible)), key=lambda j: (values[j], -j))]
        arch, params, dists = draws[best]
        self._chosen[trial._trial_id] = (params, dists)
        scores: list[float | None] = [None] * len(draws)  # the ineligible are not scored
        for i, v in zip(eligible, values, strict=True):
            scores[i] = v if math.isfinite(v) else None
        study._storage.set_trial_user_attr(trial._trial_id, "proxy_pick", {
            "proxy": self.proxy, "candidates": len(draws), "costs": costs, "eligible": eligible, "chosen": best,
            "scores": scores, "spec_hash": arch.hash})

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        chosen = self._chosen.get(trial._trial_id)
        if chosen is not None:
            return dict(chosen[1])
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        chosen = self._chosen.get(trial._trial_id)
        if chosen is not None:
            return {k: v for k, v in chosen[0].items() if k in search_space}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._chosen.pop(trial._trial_id, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def study_correlations(name: str, store: Store, proxies: Sequence[str], *,
                       threads: int | None = 1) -> tuple[list[dict[str, Any]], int]:
    """Each proxy's rank correlation (Spearman rho, Kendall tau) with validation accuracy over the
    networks a study trained (one per architecture; over-budget, failed and stopped trials left
    out), scored on the study's data and cached in ``store``. Returns the rows and the number of
    networks.

    Raises:
        NasError: unknown study, or fewer than 3 trained networks to rank.
    """
    from scipy.stats import kendalltau, spearmanr

    from objectives import VOTE, VOTE_MEMBERS, vote_scores

    from .._artifacts import load_arch
    from .._errors import NasError
    from ._record import Status, record_of
    from ._studies import get_study_spec

    study_spec = get_study_spec(name, store)
    by_hash: dict[str, float] = {}
    for t in optuna.load_study(study_name=name, storage=store.optuna).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)):
        r = record_of(t)
        if r.status in (Status.TRAINED, Status.REUSED) and r.spec_hash and r.val_accuracy is not None:
            by_hash.setdefault(r.spec_hash, float(r.val_accuracy))
    if len(by_hash) < 3:
        raise NasError(f"study {name!r} has {len(by_hash)} trained network(s); rank correlations need at least 3 "
                       f"(run it further with 'nas study run {name}')")
    scorer = ProxyScorer.for_study(study_spec, study_spec.load_data(), store, threads=threads)
    hashes = sorted(by_hash)
    accs = [by_hash[h] for h in hashes]
    need = sorted(set(proxies) - {VOTE} | (set(VOTE_MEMBERS) if VOTE in proxies else set()),
                  key=[*VOTE_MEMBERS, *proxies].index)
    scores = [scorer.scores(load_arch(store, h), need) for h in hashes]
    rows = []
    for p in proxies:
        xs = vote_scores(scores) if p == VOTE else [s[p] for s in scores]
        xs = [x if math.isfinite(x) else -1e300 for x in xs]  # a failed score ranks last
        rho, tau = spearmanr(xs, accs).statistic, kendalltau(xs, accs).statistic
        rows.append({"proxy": p, "networks": len(hashes), "spearman": _num(rho), "kendall": _num(tau)})
    return rows, len(hashes)


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None  # constant scores or accuracies: no correlation to speak of
