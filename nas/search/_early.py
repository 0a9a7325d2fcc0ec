"""Pareto-aware early stopping: stop a trial whose learning curve is dominated at the same epoch.

Optuna's pruners and Ray Tune's schedulers rank trials on one metric, so neither works in a
multi-objective (accuracy vs cost) study. Here cost is known before training (the cost model),
and the rule compares like with like:

    At a rung epoch ``e``, trial ``t`` (cost ``c_t``, best validation accuracy up to epoch ``e``,
    ``a_t(e)``) is stopped when at least ``min_dominators`` other trials of the study with *no
    higher cost* in every cost objective (``c_p <= c_t``) had reached ``a_p(e) >= a_t(e) + margin``
    by that same epoch.

"Best up to epoch e" (a running maximum) rather than the accuracy at epoch ``e`` itself: at a
high learning rate and a small validation split the curves of the first epochs jump by tens of
points from one epoch to the next, and a single bad epoch must not end a trial.

Such a trial ends on the front only if its curve later overtakes a cheaper network's by more
than it already trails it; ``margin`` says how clear "clearly better" must be. That does happen,
and early stopping can cost some final hypervolume for the epochs it saves: BENCHMARKS.md
section 6 measures both. In a study whose only objective is accuracy there is no cost to
compare, and every peer qualifies. A cheaper network is never stopped by a costlier one,
whatever their curves. Rungs follow successive halving: by default ``E/9`` and ``E/3`` of the
fidelity's ``E`` epochs (reduction factor 3), rounded up. The defaults (margin 0.1, those rungs,
one dominator) were chosen on a pilot replay of finished digits searches; the benchmark replays
the rule on other seeds (BENCHMARKS.md section 6, ``bench/bench_anchors.py``).

With ``inherit_weights`` a child starts from a trained parent, so its early epochs are not
like a network trained from scratch; the rule still compares them at equal epochs.

Peers are the study's trials that trained at the same fidelity: complete ones (their whole
curve), pruned ones (their partial curve) and running ones (the curve up to their last rung, as
recorded at each rung). A stopped trial is recorded PRUNED with its partial curve and
``stopped_by`` (the dominating trial, the epoch and both accuracies). The rule is a pure
function (:func:`dominators`) so benchmarks can replay it on finished searches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from .._fields import EARLY_STOP, declare
from ._record import record_of

__all__ = ["EarlyStop", "Peer", "best_by", "dominators", "peers_of", "rung_epochs"]


class EarlyStop(BaseModel):
    """Settings of the ``pareto`` pruner (``nas study create --pruner pareto``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    rungs: list[int] | None = declare(EARLY_STOP["rungs"])
    margin: float = declare(EARLY_STOP["margin"], ge=0.0, le=1.0)
    min_dominators: int = declare(EARLY_STOP["min_dominators"], ge=1, le=1000)

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if any(isinstance(r, bool) or r < 1 for r in v):
            raise ValueError(f"rungs are epochs >= 1, got {v}")
        return sorted(set(v))


def rung_epochs(settings: EarlyStop, epochs: int) -> list[int]:
    """The epochs (1-based, before the last) at which a trial of ``epochs`` epochs is checked."""
    wanted = settings.rungs if settings.rungs is not None else [math.ceil(epochs / 9), math.ceil(epochs / 3)]
    return sorted({r for r in wanted if 1 <= r < epochs})


@dataclass(frozen=True)
class Peer:
    """What the rule needs of another trial: its number, cost and validation curve so far."""

    number: int
    cost: dict[str, float]
    curve: tuple[float | None, ...]
    spec_hash: str = ""


def best_by(curve: Sequence[float | None], epoch: int) -> float:
    """The best validation accuracy of ``curve`` up to ``epoch`` (1-based; epochs that were not
    validated, ``None``, are skipped; -inf when none was)."""
    return max((v for v in curve[:epoch] if v is not None), default=-math.inf)


def dominators(epoch: int, curve: Sequence[float | None], cost: dict[str, float], peers: Iterable[Peer],
               cost_objectives: Sequence[str], margin: float) -> list[tuple[Peer, float]]:
    """Peers of no higher cost (every objective in ``cost_objectives``) whose best validation
    accuracy by ``epoch`` was at least that of ``curve`` plus ``margin``, with that accuracy,
    best first."""
    own = best_by(curve, epoch)
    out = []
    for p in peers:
        if len(p.curve) < epoch:
            continue
        if any(p.cost.get(o, math.inf) > cost.get(o, math.inf) for o in cost_objectives):
            continue
        theirs = best_by(p.curve, epoch)
        # Clearly better: by the margin, and never by a tie (margin 0 must not let equals stop each other).
        if theirs >= own + margin - 1e-12 and theirs > own:
            out.append((p, theirs))
    return sorted(out, key=lambda x: (-x[1], x[0].number))


def peers_of(trials: Iterable[Any], exclude: int, epochs: int | None = None, spec_hash: str | None = None
             ) -> list[Peer]:
    """:class:`Peer` views of Optuna trials that recorded a curve (``user_attrs["curve"]``) and a cost,
    one per architecture (the longest curve), leaving out trial ``exclude``, the architecture
    ``spec_hash`` itself, and (with ``epochs``) curves longer than the fidelity's. A re-drawn,
    reused or re-stopped architecture is one peer, not several."""
    best: dict[str, Peer] = {}
    for t in trials:
        r = record_of(t)
        curve, cost = r.curve, r.cost
        h = str(r.spec_hash or f"trial-{t.number}")
        if t.number == exclude or not curve or not cost or r.over_budget or h == spec_hash:
            continue
        if epochs is not None and len(curve) > epochs:
            continue
        p = Peer(t.number, {k: float(v) for k, v in cost.items()},
                 tuple(None if x is None else float(x) for x in curve), h)
        if h not in best or len(p.curve) > len(best[h].curve):
            best[h] = p
    return sorted(best.values(), key=lambda p: p.number)
