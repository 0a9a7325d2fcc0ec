"""Pareto queries: the feasible front of accuracy against cost, filtered by limits.

Only trials that were evaluated (trained or reused) and meet the budget are candidates; a
``where`` expression (``"flops<=1M accuracy>=0.95"``, the budget language with lower bounds)
narrows them *before* the front is computed, so the answer is "the front under these limits".
One row per architecture (a spec reached again by reuse appears once, at its first trial).
Test accuracy is measured for front members only, once, and stored.

With ``include_refined``, the candidates of ``nas refine`` (pruned, fused, low-rank networks and
the retrained baselines, see ``nas.refine``) join the same front with their validation
accuracy and cost, on the study's objectives (``hw_cost`` with the study's budget), if they
meet the budget. Their rows carry ``source`` (``"refined 12/prune/1"``: parent trial, method,
step; trial rows say ``"trial 12"``) and ``refined`` (the candidate's id, for ``nas export
--refined``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from sqlalchemy.exc import SQLAlchemyError

from objectives import BudgetError, evaluate, parse_conditions
from storage import Store, error_line

from .._artifacts import load_arch, load_network, weights_key
from .._errors import NasError
from ._record import Status, record_of
from ._spec import StudySpec, trial_fidelity_key
from ._studies import get_study_spec

__all__ = ["dominates", "front_trials", "minimized", "pareto_mask", "pareto_rows", "past_drop", "refined_points",
           "where_filter"]

#: Rows compared at once by :func:`pareto_mask` (bounds its memory at ~CHUNK x n x objectives bytes).
_CHUNK = 256


def minimized(study_spec: StudySpec, values: Sequence[float]) -> list[float]:
    """A study's objective values, all turned into 'smaller is better' (what :func:`pareto_mask` takes)."""
    return [-v if d == "maximize" else v for v, d in zip(values, study_spec.directions, strict=True)]


def _vector(study_spec: StudySpec, t: FrozenTrial) -> list[float]:
    assert t.values is not None
    return minimized(study_spec, t.values)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_mask(vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Which rows of ``vectors`` (n x objectives, every objective minimised) no other row
    dominates: the one Pareto filter of the project, vectorised (numpy, in chunks of rows so a
    study of 10,000 trials needs megabytes, not gigabytes). Equal rows do not dominate each
    other, so both stay.

    Example:
        >>> pareto_mask([[1, 2], [2, 1], [2, 2], [1, 2]]).tolist()
        [True, True, False, True]
    """
    v = np.asarray(vectors, dtype=float)
    if v.size == 0:
        return np.zeros(len(v), dtype=bool)
    v = v.reshape(len(v), -1)
    keep = np.ones(len(v), dtype=bool)
    for lo in range(0, len(v), _CHUNK):
        block = v[lo:lo + _CHUNK]  # candidates
        # others[j] dominates block[i]: no worse everywhere and better somewhere.
        no_worse = np.all(v[None, :, :] <= block[:, None, :], axis=2)
        better = np.any(v[None, :, :] < block[:, None, :], axis=2)
        keep[lo:lo + _CHUNK] = ~np.any(no_worse & better, axis=1)
    return keep


def _evaluated(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """One evaluated trial per architecture: its first, or its last fine-tuned one (``nas study
    finetune``: trained further than the supernet-evaluated trial, it stands for the architecture)."""
    chosen: dict[str, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        r = record_of(t)
        if r.evaluated and (r.spec_hash not in chosen or r.status == Status.FINETUNED):
            chosen[str(r.spec_hash)] = t
    return sorted(chosen.values(), key=lambda t: t.number)


def front_trials(study_spec: StudySpec, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Non-dominated evaluated, feasible trials (one per architecture)."""
    cands = _evaluated(trials)
    keep = pareto_mask([_vector(study_spec, t) for t in cands])
    return [t for t, k in zip(cands, keep, strict=True) if k]


def _metrics(t: FrozenTrial) -> dict[str, float]:
    r = record_of(t)
    return {**r.cost, "accuracy": r.val_accuracy if r.val_accuracy is not None else 0.0}


def where_filter(where: str | None) -> Any:
    if not where:
        return lambda m: True
    try:
        conds = parse_conditions(where, extra=("accuracy", "hw_cost"))
    except BudgetError as e:
        raise NasError.of(e, "where") from None
    return lambda m: all(c.holds(m[c.name]) for c in conds if c.name in m)


def test_accuracy(name: str, store: Store, study_spec: StudySpec, spec_hash: str, data: Any = None,
                  fidelity_key: str | None = None) -> float | None:
    """Test accuracy of a trained architecture at the study's fidelity (or ``fidelity_key``: a
    fine-tuned member's), measured once, stored."""
    fidelity_key = fidelity_key or study_spec.fidelity_key
    ev = store.get_evaluation(spec_hash, fidelity_key)
    if ev is None:
        return None
    if ev.test_accuracy is not None:
        return ev.test_accuracy
    if data is None:
        data = study_spec.load_data()
    model = load_network(store, load_arch(store, spec_hash), weights_key(spec_hash, fidelity_key),
                         data.input_shape, data.num_classes)
    if model is None:
        return None
    acc = evaluate(model, data.x_test, data.y_test)
    try:
        store.set_test_accuracy(spec_hash, fidelity_key, acc)
    except SQLAlchemyError as e:  # a read-only database: the measurement is shown, not kept
        if "readonly" not in error_line(e).replace(" ", "").replace("-", "").lower():
            raise
    return acc


def past_drop(r: Any) -> bool:
    """Whether refinement candidate ``r`` (a stored row) is further below the pruned model's
    accuracy than its run's ``max_drop`` allowed: the fusion step that stopped the run, or a
    low-rank step that fell below the floor. Stored as evidence of where the method stops; not
    offered as a candidate unless asked for."""
    if r.method not in ("fuse", "low_rank"):
        return False
    try:
        reference = json.loads(r.detail_json or "{}").get("reference")
        max_drop = json.loads(r.settings_json or "{}").get("max_drop")
    except ValueError:
        return False
    if not isinstance(reference, (int, float)) or not isinstance(max_drop, (int, float)):
        return False
    return bool(r.val_accuracy < reference - max_drop)


def refined_points(name: str, store: Store, study_spec: StudySpec,
                   trials: dict[int, FrozenTrial] | None = None, *,
                   past: bool = False) -> list[tuple[Any, dict[str, float]]]:
    """``(refinement row, metrics)`` of every stored refinement candidate of study ``name`` that
    meets its budget; ``metrics`` holds the cost totals, ``hw_cost`` under the study's budget and
    ``accuracy``. Candidates whose parent trial no longer has the architecture they started from
    (a study deleted and created again under the same name) are left out, and so are candidates
    past their run's ``max_drop`` (:func:`past_drop`) unless ``past``."""
    if trials is None:
        study = optuna.load_study(study_name=name, storage=store.optuna)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    budget = study_spec.budget_obj()
    out = []
    for r in store.get_refinements(name):
        t = trials.get(r.parent_trial)
        if t is None or record_of(t).spec_hash != r.parent_spec_hash or (not past and past_drop(r)):
            continue
        m = json.loads(r.cost_json)
        if budget is not None:
            if budget.violations(m):
                continue
            m["hw_cost"] = budget.hw_cost(m)
        m["accuracy"] = r.val_accuracy
        out.append((r, m))
    return out


def _front_indices(study_spec: StudySpec, metrics: Sequence[dict[str, float]]) -> list[int]:
    pairs = list(zip(study_spec.objectives, study_spec.directions, strict=True))
    keep = pareto_mask([[-m[o] if d == "maximize" else m[o] for o, d in pairs] for m in metrics])
    return [i for i, k in enumerate(keep) if k]


_ROW_COSTS = ("hw_cost", "flops", "params", "peak_activation_bytes", "mem_traffic_bytes", "latency_ms", "energy_uj",
              "ram_bytes", "flash_bytes", "macs")


def pareto_rows(name: str, store: Store, *, where: str | None = None, with_test: bool = True,
                include_refined: bool = False, measure_test: bool = True,
                past_drop: bool = False, deploy: bool = False) -> list[dict[str, Any]]:
    """The feasible Pareto front of study ``name`` under ``where``, sorted by the first cost.

    With ``include_refined``, refinement candidates compete on the same front (see the module
    docstring) and every row has ``source`` and ``refined``. ``with_test`` adds test accuracy,
    measured once and stored (``measure_test``) or only as stored (None if never measured:
    what the read-only HTTP API does). Refined candidates past their run's ``max_drop`` compete
    only with ``past_drop``.

    ``deploy`` adds what deployment needs (``nas pareto --deploy``, the web page's front table):
    ``int8_accuracy`` (the int8 network's validation accuracy in a ``precision`` int8 study, else None:
    measured at export), ``fp32_accuracy``, ``int8_drop``, and ``ram_bytes`` / ``flash_bytes`` of the int8
    artifact in TFLM (the study's costs when its profile has a device runtime, else predicted here).
    """
    study_spec = get_study_spec(name, store)
    keep = where_filter(where)
    study = optuna.load_study(study_name=name, storage=store.optuna)
    all_trials = study.get_trials(deepcopy=False)
    trials = [t for t in _evaluated(all_trials) if keep(_metrics(t))]
    refined: list[tuple[Any, dict[str, float]]] = []
    if include_refined:
        by_number = {t.number: t for t in all_trials}
        refined = [(r, m) for r, m in refined_points(name, store, study_spec, by_number, past=past_drop)
                   if keep(m)]
        points: list[tuple[FrozenTrial | None, Any, dict[str, float]]] = (
            [(t, None, _metrics(t)) for t in trials] + [(None, r, m) for r, m in refined])
        chosen = [points[i] for i in _front_indices(study_spec, [p[2] for p in points])]
    else:
        chosen = [(t, None, _metrics(t)) for t in front_trials(study_spec, trials)]
    data = study_spec.load_data() if with_test and measure_test and any(t is not None for t, _, _ in chosen) else None
    rows = []
    for t, r, m in chosen:
        row: dict[str, Any]
        if t is not None:
            h = str(record_of(t).spec_hash)
            row = {"trial": t.number, "spec_hash": h[:12], "accuracy": m["accuracy"]}
            fp32 = record_of(t).fp32_accuracy
            if fp32 is not None:  # a precision int8 study: accuracy is the int8 network's
                row.update(fp32_accuracy=fp32, int8_drop=fp32 - m["accuracy"])
            source = t.user_attrs.get("accuracy_source")
            if isinstance(source, str):  # a supernet study's: supernet or fine-tuned accuracy, said per row
                row["accuracy_source"] = source
            if include_refined:
                row = {"source": f"trial {t.number}", "refined": None, **row}
            fkey = trial_fidelity_key(study_spec, t)
            if with_test and measure_test:
                row["test_accuracy"] = test_accuracy(name, store, study_spec, h, data, fkey)
            elif with_test:
                ev = store.get_evaluation(h, fkey)
                row["test_accuracy"] = ev.test_accuracy if ev is not None else None
        else:
            row = {"source": f"refined {r.parent_trial}/{r.method}/{r.step}", "refined": r.id, "trial": r.parent_trial,
                   "spec_hash": r.spec_hash[:12], "accuracy": m["accuracy"]}
            if with_test:
                row["test_accuracy"] = r.test_accuracy
        for k in _ROW_COSTS:
            if k in m:
                row[k] = m[k]
        row["cost"] = {k: v for k, v in m.items() if k != "accuracy"}
        if deploy:
            _deploy_fields(row, store, study_spec, h if t is not None else r.spec_hash)
        rows.append(row)
    first_cost = next((o for o in study_spec.objectives if o != "accuracy"), "flops")
    rows.sort(key=lambda r: (r["cost"].get(first_cost, 0.0), -r["accuracy"]))
    return rows



def _deploy_fields(row: dict[str, Any], store: Store, study_spec: StudySpec, spec_hash: str) -> None:
    from objectives import flash_bytes, ram_bytes

    from ._studies import study_data

    int8 = "fp32_accuracy" in row
    row["int8_accuracy"] = row["accuracy"] if int8 else None
    row.setdefault("fp32_accuracy", row["accuracy"])
    row.setdefault("int8_drop", None)
    if "ram_bytes" not in row or "flash_bytes" not in row:
        shape = study_data(study_spec, store)
        arch = load_arch(store, spec_hash)
        row["ram_bytes"] = float(ram_bytes(arch, shape.input_shape, shape.num_classes))
        row["flash_bytes"] = float(flash_bytes(arch, shape.input_shape, shape.num_classes))
    for k in ("macs", "latency_ms"):
        row.setdefault(k, row["cost"].get(k))
