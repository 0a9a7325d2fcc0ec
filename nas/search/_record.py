"""The trial record: what a lightnas trial stores on its Optuna trial, typed, in one place.

Optuna keeps a trial's extra facts as free-form user attributes; lightnas writes a fixed set of
them (the trial objective writes, everything else reads). :class:`TrialRecord` is that set with
its types (as Optuna's ``FrozenTrial`` is for the trial itself), and :class:`Status` names the
values of ``status``, so no module reads raw attribute keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

__all__ = ["Status", "TrialRecord", "record_of", "status_of"]


class Status:
    """Values of a trial's ``status``: what happened to its architecture."""

    OVER_BUDGET = "over_budget"  #: rejected over the budget before training (does not count)
    TRAINED = "trained"  #: trained at the study's fidelity
    REUSED = "reused"  #: the same architecture was trained before at this fidelity
    PRUNED = "pruned"  #: stopped early (its partial curve is kept)
    FAILED = "failed"  #: training failed (a non-finite loss); ``fail_reason`` says why

    #: Evaluated within the budget with a final accuracy: the candidates of the Pareto front.
    EVALUATED = (TRAINED, REUSED)


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

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        a = trial.user_attrs
        return cls(trial.number, trial.state, a.get("status"), a.get("spec_hash"), dict(a.get("cost") or {}),
                   a.get("val_accuracy"), a.get("epochs_run"), a.get("train_seconds"), list(a.get("curve") or []),
                   dict(a.get("violations") or {}), a.get("fail_reason"), dict(a.get("stopped_by") or {}),
                   dict(a.get("inherited_from") or {}), a.get("worker"), a.get("warm_start"), a.get("fp32_accuracy"))

    @property
    def evaluated(self) -> bool:
        """Complete, within the budget, with a final accuracy (a Pareto-front candidate)."""
        return self.state == TrialState.COMPLETE and self.status in Status.EVALUATED and self.spec_hash is not None

    @property
    def over_budget(self) -> bool:
        return self.status == Status.OVER_BUDGET


def record_of(trial: FrozenTrial) -> TrialRecord:
    """The :class:`TrialRecord` of an Optuna trial."""
    return TrialRecord.of(trial)


def status_of(trial: FrozenTrial) -> str | None:
    """A trial's :class:`Status` value (None while it runs); cheaper than a whole record."""
    return trial.user_attrs.get("status")  # type: ignore[no-any-return]
