"""The trial record: what a lightnas trial stores on its Optuna trial, typed, in one place.

Optuna keeps a trial's extra facts as free-form user attributes; lightnas writes a fixed set of
them (the trial objective writes, everything else reads). :class:`TrialRecord` is that set with
its types (as Optuna's ``FrozenTrial`` is for the trial itself), and :class:`Status` names the
values of ``status``, so no module reads raw attribute keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

__all__ = ["Status", "TrialRecord", "damaged_trials", "record_of", "status_of"]


class Status:
    """Values of a trial's ``status``: what happened to its architecture."""

    OVER_BUDGET = "over_budget"  #: rejected over the budget before training (does not count)
    TRAINED = "trained"  #: trained at the study's fidelity
    REUSED = "reused"  #: the same architecture was trained before at this fidelity
    PRUNED = "pruned"  #: stopped early (its partial curve is kept)
    FAILED = "failed"  #: training failed (a non-finite loss); ``fail_reason`` says why
    #: evaluated with a supernet's weights (``accuracy_source`` names it): supernet accuracy, not stand-alone
    SUPERNET = "supernet"
    #: a supernet study's member trained further from its inherited weights (``nas study finetune``): an added
    #: trial whose ``fidelity_key`` names its evaluation; it stands for its architecture on the front and
    #: does not count towards the target
    FINETUNED = "finetuned"

    #: Evaluated within the budget with a final accuracy: the candidates of the Pareto front.
    EVALUATED = (TRAINED, REUSED, SUPERNET, FINETUNED)


@dataclass(frozen=True)
class TrialRecord:
    """The lightnas facts of one trial (absent ones are None or empty).

    Attributes:
        number: the Optuna trial number; ``state`` its Optuna state.
        status: a :class:`Status` value, None while it runs (or when the trial never got that far).
        spec_hash: the architecture's hash (its spec is stored under it).
        cost: cost totals, ``hw_cost`` included when the study has a budget.
        val_accuracy: validation accuracy (of the last epoch run for a pruned trial).
        epochs_run, train_seconds, curve: training facts (``curve`` per epoch, ``None`` where an epoch
            was not validated).
        violations: resource -> relative excess, for an over-budget trial.
        fail_reason: why the trial failed; stopped_by: the peer that stopped it early.
        inherited_from: the parent whose weights it started from; worker: who ran it.
        warm_start: the source that enqueued it (a file, another study's trial).
        fp32_accuracy: in a ``precision`` int8 study, the float network's validation accuracy
            (``val_accuracy`` is then the int8 network's).
    """

    number: int
    state: TrialState
    status: str | None = None
    spec_hash: str | None = None
    cost: dict[str, float] = field(default_factory=dict)
    val_accuracy: float | None = None
    epochs_run: int | None = None
    train_seconds: float | None = None
    curve: list[float | None] = field(default_factory=list)
    violations: dict[str, float] = field(default_factory=dict)
    fail_reason: str | None = None
    stopped_by: dict[str, Any] = field(default_factory=dict)
    inherited_from: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    warm_start: str | None = None
    fp32_accuracy: float | None = None

    #: What is wrong with the stored attributes (a damaged row, an attribute another program wrote):
    #: one phrase per attribute that could not be read as its type; empty for a sound record.
    damaged: tuple[str, ...] = ()

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        a = trial.user_attrs
        bad: list[str] = []
        status = _text(a, "status", bad)
        return cls(trial.number, trial.state, status, _text(a, "spec_hash", bad), _costs(a, "cost", bad),
                   _real(a, "val_accuracy", bad), _integer(a, "epochs_run", bad), _real(a, "train_seconds", bad),
                   _curve(a, bad), _costs(a, "violations", bad), _text(a, "fail_reason", bad),
                   _mapping(a, "stopped_by", bad), _mapping(a, "inherited_from", bad), _text(a, "worker", bad),
                   _text(a, "warm_start", bad), _real(a, "fp32_accuracy", bad), tuple(bad))

    @property
    def evaluated(self) -> bool:
        """Complete, within the budget, with a final accuracy (a Pareto-front candidate); a trial whose
        stored attributes are damaged is none (see :func:`damaged_trials`)."""
        return self.state == TrialState.COMPLETE and self.status in Status.EVALUATED and self.spec_hash is not None \
            and not self.damaged

    @property
    def over_budget(self) -> bool:
        return self.status == Status.OVER_BUDGET


def record_of(trial: FrozenTrial) -> TrialRecord:
    """The :class:`TrialRecord` of an Optuna trial."""
    return TrialRecord.of(trial)


def status_of(trial: FrozenTrial) -> str | None:
    """A trial's :class:`Status` value (None while it runs); cheaper than a whole record."""
    status = trial.user_attrs.get("status")
    return status if isinstance(status, str) else None


def damaged_trials(trials: list[FrozenTrial]) -> list[tuple[int, str]]:
    """``(trial number, what is wrong)`` of the trials whose stored attributes cannot be read as
    lightnas wrote them (a damaged database row, or another program's writing): listed by the
    commands that read them, which show the other trials and leave these out of the front."""
    out = []
    for t in trials:
        r = record_of(t)
        if r.damaged:
            out.append((t.number, "; ".join(r.damaged)))
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(a: dict[str, Any], key: str, bad: list[str]) -> str | None:
    v = a.get(key)
    if v is None or isinstance(v, str):
        return v
    bad.append(f"its {key} attribute is {_shown(v)} (accepted: text)")
    return None


def _real(a: dict[str, Any], key: str, bad: list[str]) -> float | None:
    v = a.get(key)
    if v is None or _finite(v):
        return v
    bad.append(f"its {key} attribute is {_shown(v)} (accepted: a finite number)")
    return None


def _integer(a: dict[str, Any], key: str, bad: list[str]) -> int | None:
    v = a.get(key)
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    bad.append(f"its {key} attribute is {_shown(v)} (accepted: an integer)")
    return None


def _mapping(a: dict[str, Any], key: str, bad: list[str]) -> dict[str, Any]:
    v = a.get(key)
    if v is None or isinstance(v, dict):
        return dict(v or {})
    bad.append(f"its {key} attribute is {_shown(v)} (accepted: a mapping)")
    return {}


def _costs(a: dict[str, Any], key: str, bad: list[str]) -> dict[str, float]:
    """A mapping of resource name to finite number (``cost``, ``violations``)."""
    v = a.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        bad.append(f"its {key} attribute is {_shown(v)} (accepted: a mapping of resource to number)")
        return {}
    wrong = {k: x for k, x in v.items() if not _finite(x)}
    if wrong:
        k, x = next(iter(wrong.items()))
        bad.append(f"its {key} attribute has {key}[{k!r}] = {_shown(x)}"
                   f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''} (accepted: finite numbers)")
    return {k: x for k, x in v.items() if k not in wrong}


def _curve(a: dict[str, Any], bad: list[str]) -> list[float | None]:
    v = a.get("curve")
    if v is None:
        return []
    if not isinstance(v, list) or not all(x is None or _finite(x) for x in v):
        bad.append(f"its curve attribute is {_shown(v)} (accepted: a list of accuracies)")
        return []
    return list(v)
