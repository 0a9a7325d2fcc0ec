"""Fine-tuning a supernet study's members from their inherited weights (issue 30, item 3).

A study on a supernet ranks subnets by *supernet accuracy*. ``nas study finetune`` takes chosen
members (by default the study's Pareto front), extracts each one's exact weights from the
supernet, recalibrates its BatchNorm statistics and trains it for ``epochs`` epochs with the
study's training loop (:func:`objectives.train_spec`), data, batch size, learning rate and seed.

Each result is stored the way a trained network is:

- an **evaluation** (``Store.put_evaluation``) of the architecture at the *fine-tuning fidelity*,
  the study's fidelity with ``epochs`` set, the ``supernet`` entry replaced by
  ``finetuned_from`` (the weights it started from); its weights go in the same transaction under
  :func:`nas._artifacts.weights_key`. Another study on the same supernet and data that fine-tunes
  the same architecture for as many epochs reuses it;
- a **trial** of the study (added, as Optuna's ``add_trial`` does for known results) with status
  ``finetuned``, the member's cost and constraint values, the fine-tuned accuracy as its
  objective value, and the attributes ``accuracy_source`` ("finetuned from supernet S, E
  epochs"), ``fidelity_key`` (where its evaluation and weights are), ``finetuned_from`` (the
  member's trial, the supernet, its supernet accuracy) and the training's ``epochs_run``,
  ``curve`` and ``train_seconds``.

So ``nas pareto`` ranks the fine-tuned accuracy (a fine-tuned trial stands for its architecture
in place of the supernet-evaluated one, :func:`nas.search.front_trials`), labelled per row;
``nas export --trial M`` and ``nas refine`` take the fine-tuned trial like a trained one. Added
trials do not count towards the study's target of evaluated networks.

The same member fine-tuned again for the same epochs is not trained or added again (its trial is
named); an evaluation stored by an interrupted run is reused. Every member is stored as soon as
it is trained: Ctrl-C loses at most the member in training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage import Store

from .._artifacts import serialize_state, weights_key
from .._errors import NasError
from ._objective import CONSTRAINTS_KEY, objective_values
from ._pareto import front_trials
from ._record import Status, record_of
from ._spec import StudySpec, fidelity_key_of
from ._studies import get_study_spec

__all__ = ["finetune_fidelity", "finetune_study", "finetuned_source"]


def finetune_fidelity(study_spec: StudySpec, epochs: int) -> dict[str, Any]:
    """What a member's fine-tuned accuracy depends on besides its architecture: the study's
    fidelity with ``epochs`` set, started from supernet ``study_spec.supernet``'s weights."""
    d = study_spec.fidelity_dict()
    d.pop("supernet", None)
    d["epochs"] = epochs
    d["finetuned_from"] = study_spec.supernet
    return d


def finetuned_source(supernet: str | None, epochs: int) -> str:
    """The ``accuracy_source`` of a member fine-tuned from ``supernet``'s weights for ``epochs``."""
    return f"finetuned from supernet {supernet} ({epochs} epoch{'s' if epochs != 1 else ''})"


def _trials(name: str, store: Store) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)


def _members(name: str, study_spec: StudySpec, trials: list[FrozenTrial], numbers: Sequence[int] | None
             ) -> list[FrozenTrial]:
    """The trials to fine-tune: the numbered ones (each evaluated within the budget) or the front."""
    by_number = {t.number: t for t in trials}
    evaluated = [t for t in trials if record_of(t).evaluated]
    if numbers is None:
        front = front_trials(study_spec, evaluated)
        if not front:
            raise NasError(f"study {name!r} has no evaluated subnet within its budget yet; run it first "
                           f"('nas study run {name}')")
        return sorted(front, key=lambda t: t.number)
    ok = [t.number for t in evaluated]
    hint = f"trials that can: {', '.join(map(str, ok[:12]))}{' ...' if len(ok) > 12 else ''}" if ok else \
        f"none yet ('nas study run {name}' first)"
    out = []
    for n in dict.fromkeys(numbers):
        t = by_number.get(n)
        if t is None:
            raise NasError(f"study {name!r} has no trial {n}; {hint}", field="trial")
        r = record_of(t)
        if not r.evaluated:
            why = "is over the budget" if r.over_budget else \
                f"was not evaluated (state {t.state.name.lower()}{', status ' + r.status if r.status else ''})"
            raise NasError(f"trial {n} {why}; fine-tuning takes subnets evaluated within the budget; {hint}",
                           field="trial")
        out.append(t)
    return out


def finetune_study(name: str, store: Store, *, epochs: int, trials: Sequence[int] | None = None,
                   threads: int | None = 1,
                   on_member: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Fine-tune members of study ``name`` (on a supernet) for ``epochs`` epochs from their inherited
    weights and store each as an evaluation and a ``finetuned`` trial (see the module docstring).

    ``trials``: the members' trial numbers; None: the study's Pareto front. Returns one dict per
    member: ``trial`` (the member), ``spec_hash``, ``finetuned_trial``, ``supernet_accuracy``,
    ``accuracy``, ``seconds`` and ``done``: ``trained``, ``reused`` (an evaluation another run
    stored) or ``kept`` (this study has that fine-tune already). ``on_member(dict)`` after each.

    Raises:
        NasError: unknown study, a study not on a supernet, ``epochs`` outside 1..10000, an unknown
            trial or one not evaluated within the budget, an empty front, the supernet missing.
    """
    from objectives import TrainingError, num_threads, recalibrate_bn, train_spec

    from .._artifacts import load_arch

    study_spec = get_study_spec(name, store)
    if study_spec.supernet is None:
        raise NasError(f"study {name!r} is not on a supernet (its trials are trained stand-alone); "
                       "accepted: a study created with --supernet NAME")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
        raise NasError(f"got {epochs}; accepted: 1 to 10000 fine-tuning epochs", field="epochs")
    all_trials = _trials(name, store)
    members = _members(name, study_spec, all_trials, trials)
    fidelity = finetune_fidelity(study_spec, epochs)
    fkey = fidelity_key_of(fidelity)
    source = finetuned_source(study_spec.supernet, epochs)
    done_here = {(t.user_attrs.get("spec_hash"), t.user_attrs.get("fidelity_key")): t.number for t in all_trials
                 if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == Status.FINETUNED}
    context: dict[str, Any] = {}

    def loaded() -> tuple[Any, Any]:
        """The supernet and the study's data, loaded once, when a member needs training."""
        if not context:
            from ._supernet import load_supernet

            context["net"], context["record"] = load_supernet(store, str(study_spec.supernet))
            context["data"] = study_spec.load_data()
        return context["net"], context["data"]

    out: list[dict[str, Any]] = []
    for t in members:
        r = record_of(t)
        h = str(r.spec_hash)
        origin = r.val_accuracy
        if r.status == Status.FINETUNED:  # a fine-tuned member of the front: from its own origin's numbers
            origin = t.user_attrs.get("finetuned_from", {}).get("supernet_accuracy")
            base = t.user_attrs.get("finetuned_from", {}).get("trial", t.number)
        else:
            base = t.number
        entry: dict[str, Any] = {"trial": base, "spec_hash": h, "supernet_accuracy": origin, "epochs": epochs}
        if (h, fkey) in done_here:
            kept = done_here[(h, fkey)]
            ft = next(x for x in all_trials if x.number == kept)
            entry.update(done="kept", finetuned_trial=kept, accuracy=record_of(ft).val_accuracy, seconds=0.0)
            out.append(entry)
            if on_member is not None:
                on_member(entry)
            continue
        t0 = time.perf_counter()
        ev = store.get_evaluation(h, fkey)
        if ev is None:
            net, data = loaded()
            arch = load_arch(store, h)
            config = study_spec.train_config(threads=threads, epochs=epochs)
            with num_threads(threads):
                inherited = recalibrate_bn(net.extract(arch), data.x_train, batches=context["record"].spec.bn_batches)
            state = {k: v.detach().clone() for k, v in inherited.state_dict().items()}

            def start(model: Any, state: dict[str, Any] = state) -> None:  # the inherited, recalibrated weights
                model.load_state_dict(state)

            try:
                result = train_spec(arch, data, config, init=start)
            except TrainingError as e:
                raise NasError(f"trial {base} ({h[:12]}): fine-tuning diverged ({e.reason}); accepted: a lower "
                               "learning rate (a study's --lr) or fewer epochs") from None
            assert result.state_dict is not None
            key = weights_key(h, fkey)
            ev = store.put_evaluation(h, fkey, fidelity, val_accuracy=result.val_accuracy, cost=r.cost,
                                      seconds=result.seconds, epochs_run=result.epochs_run,
                                      curve=list(result.curve), artifact_key=key,
                                      artifact=serialize_state(result.state_dict))
            entry["done"] = "trained"
        else:
            entry["done"] = "reused"
        number = _add_trial(name, store, study_spec, t, r.cost, {
            "status": Status.FINETUNED, "spec_hash": h, "cost": r.cost, "val_accuracy": ev.val_accuracy,
            "epochs_run": ev.epochs_run, "curve": json.loads(ev.curve_json or "[]"),
            "train_seconds": round(time.perf_counter() - t0, 3) if entry["done"] == "trained" else 0.0,
            "accuracy_source": source, "fidelity_key": fkey,
            "finetuned_from": {"trial": base, "supernet": study_spec.supernet, "epochs": epochs,
                               "supernet_accuracy": origin}})
        done_here[(h, fkey)] = number
        entry.update(finetuned_trial=number, accuracy=ev.val_accuracy, seconds=round(time.perf_counter() - t0, 3))
        out.append(entry)
        if on_member is not None:
            on_member(entry)
    return out


def _add_trial(name: str, store: Store, study_spec: StudySpec, member: FrozenTrial, cost: dict[str, float],
               attrs: dict[str, Any]) -> int:
    """Add a finished trial of the fine-tuned member: its objective values and constraints; returns its number."""
    values = objective_values(study_spec, float(attrs["val_accuracy"]), cost)
    system = {k: v for k, v in member.system_attrs.items()
              if k == CONSTRAINTS_KEY or k.startswith(f"{CONSTRAINTS_KEY}:")}  # both forms (see _objective)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, values=values, params={}, distributions={},
                                      user_attrs=attrs, system_attrs=system)
    storage = store.optuna
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(name), template_trial=trial)
    return int(storage.get_trial_number_from_id(trial_id))
