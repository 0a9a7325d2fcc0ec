"""Warm starts: seed a study with known good architectures so that its search does not start blind.

Two sources (``nas study create ... --enqueue FILE`` / ``--warm-start STUDY``, or the API's
``enqueue`` and ``warm_start`` fields):

* ``ArchSpec`` JSON files (a spec as ``nas export`` writes it in ``spec.json``): mapped back to
  the study space's parameters (:meth:`search_spaces.SearchSpace.params_of`), so the sampler
  sees an ordinary trial of its space.
* the Pareto front of another study (a similar dataset, say): its members' *parameters* are
  enqueued when the spaces match, so the space adapts them to this study's input (strides,
  stem); otherwise their specs are mapped as above.

Enqueued trials run first (Optuna's ``enqueue_trial``), with ``user_attrs["warm_start"]``
naming the source. A given spec must fit the study (its space and options, its budget), else
the command fails with the reason and writes nothing; front members of another study that do
not fit (another family, widths outside the options, over this budget) or are already in the
study are skipped with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search_spaces import ArchSpec, SpaceError, SpecError
from storage import Store

from .._artifacts import load_arch
from .._errors import NasError
from ._spec import StudySpec
from ._studies import get_study_spec, study_data

__all__ = ["WarmStart", "arch_from_doc", "cheapest_anchors", "enqueue_planned", "plan_warm_start", "read_spec_file",
           "warm_start"]


@dataclass
class WarmStart:
    """What :func:`warm_start` did: enqueued ``(source, params)``, skipped ``(source, reason)``."""

    enqueued: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_spec_file(path: str | Path, field: str = "enqueue") -> ArchSpec:
    """An ``ArchSpec`` from a JSON file (``spec.json`` of ``nas export``); NasError about ``field`` (the
    argument that named the file) with one line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise NasError(f"cannot read {path} ({e.strerror})", field=field) from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise NasError(f"{path} is not JSON (expected an ArchSpec, e.g. spec.json of 'nas export')",
                       field=field) from None
    try:
        return arch_from_doc(doc)
    except NasError as e:
        raise NasError(f"{path} is {e}", field=field) from None


def arch_from_doc(doc: Any) -> ArchSpec:
    """An ``ArchSpec`` from a parsed JSON document: the spec itself, or the API's
    ``export?format=json``, which holds it under ``spec``.

    Raises:
        NasError: ``not an ArchSpec (<why>)``.
    """
    if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
        doc = doc["spec"]
    try:
        return ArchSpec.from_dict(doc)
    except (SpecError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise NasError(f"not an ArchSpec ({e})") from None


def plan_warm_start(study_spec: StudySpec, store: Store | None, input_shape: tuple[int, int, int], num_classes: int, *,
                    specs: Sequence[tuple[str, ArchSpec]] = (), from_study: str | None = None,
                    limit: int = 20) -> WarmStart:
    """What :func:`warm_start` would enqueue into a study of ``study_spec`` (which need not exist yet)
    whose networks take ``input_shape`` and ``num_classes``.

    ``specs`` are ``(source, ArchSpec)`` pairs given by the user: each must fit the study (its
    space, its budget), else :class:`NasError`. Members of ``from_study``'s front that do not fit
    are skipped with the reason (another dataset or budget makes that normal). ``store`` None is a
    database that does not exist yet (no study in it).

    Raises:
        NasError: a given spec that is not in the study's space or is over its budget; an
            unknown ``from_study``.
    """
    from ._pareto import pareto_rows

    space = study_spec.search_space(input_shape)
    budget = study_spec.budget_obj()
    known: set[str] = set()
    queued: set[str] = set()
    if store is not None and study_spec.name in optuna.get_all_study_names(store.optuna):
        trials = optuna.load_study(study_name=study_spec.name, storage=store.optuna).get_trials(deepcopy=False)
        known = {str(t.user_attrs["spec_hash"]) for t in trials if t.user_attrs.get("spec_hash")}
        queued = {json.dumps(t.system_attrs.get("fixed_params") or t.params, sort_keys=True) for t in trials
                  if t.state == optuna.trial.TrialState.WAITING}
    out = WarmStart()

    candidates: list[tuple[str, dict[str, Any] | None, ArchSpec | None, bool]] = [(src, None, s, True)
                                                                                  for src, s in specs]
    if from_study is not None:
        if store is None:
            raise NasError(f"unknown study {from_study!r}; the database does not exist yet", field="warm_start",
                           argument=False)
        if store.get_study(from_study) is None:
            raise NasError(f"unknown study {from_study!r}; studies here: "
                           f"{', '.join(r.name for r in store.list_studies()) or 'none'}", field="warm_start",
                           argument=False)
        other: StudySpec = get_study_spec(from_study, store)
        rows = sorted(pareto_rows(from_study, store, with_test=False), key=lambda r: -r["accuracy"])[:limit]
        trials_of = {t.number: t for t in optuna.load_study(study_name=from_study, storage=store.optuna)
                     .get_trials(deepcopy=False)}
        for r in rows:
            t = trials_of[r["trial"]]
            src = f"{from_study} trial {t.number}"
            if other.space == study_spec.space:
                candidates.append((src, dict(t.params), None, False))
            else:
                try:
                    arch = load_arch(store, t.user_attrs["spec_hash"])
                except NasError:
                    arch = None
                candidates.append((src, None, arch, False))

    for src, params, arch, strict in candidates:
        reason = None
        try:
            if params is None:
                if arch is None:
                    raise SpaceError("its architecture is not stored")
                params = space.params_of(arch)
            arch = space.check_params(params)
        except SpaceError as e:
            reason = str(e)
        if reason is None and arch is not None and budget is not None:
            over = budget.violations(study_spec.cost(arch, input_shape, num_classes))
            if over:
                reason = f"over the budget {study_spec.budget} ({', '.join(sorted(over))})"
        if reason is None and arch is not None and params is not None:
            key = json.dumps(params, sort_keys=True)
            if arch.hash in known or key in queued:
                reason = f"architecture {arch.short_hash} is already in the study"
            else:
                known.add(arch.hash)
                queued.add(key)
                out.enqueued.append((src, params))
                continue
        if strict:
            raise NasError(str(reason), field=src, argument=False)  # the spec's place: enqueue[0], a file
        out.skipped.append((src, str(reason)))
    return out


def cheapest_anchors(info: dict[str, Any]) -> list[tuple[str, ArchSpec]]:
    """The space's cheapest architecture per budgeted resource (found exactly at creation, see
    :func:`nas.search.plan_study`; ``info`` is the plan's), once each: queued first, they anchor
    the front's low-cost end, which a sampler drawn towards accuracy may never reach on its own."""
    cheapest = (info.get("feasibility") or {}).get("cheapest") or {}
    out: list[tuple[str, ArchSpec]] = []
    seen: set[str] = set()
    for resource, arch_json in cheapest.items():
        arch = ArchSpec.from_json(arch_json)
        if arch.hash not in seen:
            seen.add(arch.hash)
            out.append((f"the space's cheapest by {resource}", arch))
    return out


def enqueue_planned(name: str, store: Store, plan: WarmStart) -> None:
    """Enqueue the planned trials into study ``name`` (``user_attrs["warm_start"]`` = source)."""
    study = optuna.load_study(study_name=name, storage=store.optuna)
    for src, params in plan.enqueued:
        study.enqueue_trial(params, user_attrs={"warm_start": src})


def warm_start(name: str, store: Store, *, specs: Sequence[tuple[str, ArchSpec]] = (),
               from_study: str | None = None, limit: int = 20) -> WarmStart:
    """Enqueue ``specs`` and (``from_study``) the front of another study into existing study ``name``.

    See :func:`plan_warm_start`; nothing is enqueued when it raises.
    """
    study_spec = get_study_spec(name, store)
    shape = study_data(study_spec, store)
    plan = plan_warm_start(study_spec, store, shape.input_shape, shape.num_classes, specs=specs,
                           from_study=from_study, limit=limit)
    enqueue_planned(name, store, plan)
    return plan
