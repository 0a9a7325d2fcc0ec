"""Creating a study, top to bottom, in one place: budget first, then the warm start, then one write.

:func:`create_study` is the only way a study comes to exist (the CLI, a ``--config`` file, the
API and the demo all call it; the CLI calls its two halves, :func:`prepare_study` before the
database is opened and :func:`store_study` after, so a refused study creates no database file):

1. the data are read once: their input shape, class count and normalisation are stored with the
   study, so later readers (the API, export, warm starts) never load the dataset to learn them;
2. :func:`plan_study`: the exact minimum of every budgeted resource over the space and its share
   within the budget; a space too large for the budget is fitted to it (TinyNAS; on a supernet, to
   a sub-space of the supernet's, :func:`objectives.fit_subspace`); a budget no architecture
   reaches is refused with what would fit;
3. the warm start (``enqueue`` files, another study's front, the space's cheapest architectures)
   is checked against the fitted space and the budget;
4. the Optuna study and the lightnas record are written, the warm start is enqueued and only
   then is the target set, so no worker starts a trial of its own first. All or nothing: if any
   write fails, what was written is deleted and the same request again works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from objectives import format_amount
from search_spaces import ArchSpec, SpaceError, get_space, list_spaces
from storage import Store

from .._errors import NasError
from ._spec import StudySpec
from ._studies import check_name_free, delete_study
from ._warm import WarmStart, cheapest_anchors, enqueue_planned, plan_warm_start

if TYPE_CHECKING:
    from objectives import Dataset

__all__ = ["StudyPlan", "create_study", "describe_plan", "plan_study", "prepare_study", "store_study"]


@dataclass
class StudyPlan:
    """What creating a study will store: the spec with the space fitted to the budget, and the
    budget-first figures (``info``: ``feasibility`` of the space used, ``fit`` when it was
    scaled, ``feasibility_as_given`` then, ``data``: the input shape, classes and normalisation
    the study trains on). ``warnings`` are lines for the user; ``warm`` is what was enqueued."""

    study_spec: StudySpec
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warm: WarmStart | None = None


def _options_text(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "as given"


def _load(study_spec: StudySpec) -> Dataset:
    from objectives import DataError

    try:
        return study_spec.load_data()
    except DataError as e:
        raise NasError(str(e), field="data", argument=False) from None


def _data_info(data: Dataset, shape: tuple[int, int, int]) -> dict[str, Any]:
    return {"input_shape": list(shape), "num_classes": int(data.num_classes), "mean": list(data.mean),
            "std": list(data.std)}


def plan_study(study_spec: StudySpec, data: Dataset | None = None) -> StudyPlan:
    """Budget first, before anything is written or trained: the exact minimum of every budgeted
    resource over the space and its share within the budget (:mod:`objectives.cost._feasibility`);
    the space fitted to the budget when too little of it fits (``study_spec.fit_space``); a budget no
    architecture reaches is refused.

    Raises:
        NasError: data unreadable, bad space options, or a budget below what the space (fitted
            or not) can reach; the message names the resource, the minimum and what would fit.
    """
    from objectives import USABLE_SHARE, WARN_SHARE, assess, fit_space, fit_subspace, resized_shape, smaller_inputs

    profile = study_spec.cost_profile()  # the study's database's profile first, resolved once
    if data is None:
        data = _load(study_spec)
    shape, classes = data.input_shape, data.num_classes
    try:
        space = get_space(study_spec.space, input_shape=shape, **study_spec.space_options)
    except SpaceError as e:
        raise NasError(str(e), field="space_options", argument=False) from None
    budget = study_spec.budget_obj()
    if budget is None:
        return StudyPlan(study_spec, {"data": _data_info(data, shape)})
    where = f"space {study_spec.space!r} on input {'x'.join(map(str, shape))}"
    given = assess(space, budget, classes, profile, seed=study_spec.seed)
    plan = StudyPlan(study_spec, {"feasibility": given.to_dict()})
    final = given
    resolutions = smaller_inputs(shape) if study_spec.fit_resolution and study_spec.input_size is None else []
    on_supernet = study_spec.supernet is not None
    # On a supernet the space is narrowed to a sub-space (its architectures are all subnets), which never
    # reaches below the whole space's minimum: a budget below it is refused as it is.
    if study_spec.fit_space and (given.share < USABLE_SHARE or given.below) and not (on_supernet and given.below):
        if on_supernet:
            fit = fit_subspace(study_spec.space, shape, study_spec.space_options, budget, classes, profile,
                               seed=study_spec.seed)
        else:
            fit = fit_space(study_spec.space, shape, study_spec.space_options, budget, classes, profile,
                            seed=study_spec.seed, resolutions=resolutions)
        if fit.scaled:
            fshape = shape if fit.input_size is None else resized_shape(shape, fit.input_size)
            final = assess(get_space(study_spec.space, input_shape=fshape, **fit.options), budget, classes,
                           profile, seed=study_spec.seed)
            if not final.below and (given.below or final.share >= given.share):
                update: dict[str, Any] = {"space_options": fit.options}
                if fit.input_size is not None:
                    update["input_size"] = fit.input_size
                plan.study_spec = study_spec.model_copy(update=update)
                plan.info = {"feasibility": final.to_dict(), "feasibility_as_given": given.to_dict(),
                             "fit": fit.to_dict()}
                if on_supernet:
                    plan.info["fit"]["within"] = f"supernet {study_spec.supernet}"
            else:
                final = given
    if final.below:
        raise NasError(_refusal(study_spec, shape, classes, budget, final.below, resolutions), field="budget",
                       argument=False)
    fitted = plan.study_spec.input_size
    plan.info["data"] = _data_info(data, resized_shape(shape, fitted) if fitted and fitted != study_spec.input_size
                                   else shape)
    if final.share < WARN_SHARE:
        plan.warnings.append(
            f"warning: only {final.share:.2%} of {where} lies within the budget {study_spec.budget} "
            f"({final.samples} samples); most samples will be rejected before training. Loosen the budget "
            f"(minimum: {', '.join(f'{k}={format_amount(k, v)}' for k, v in final.minima.items())})"
            + ("" if study_spec.fit_space else " or drop --no-fit-space"))
    return plan


def _refusal(study_spec: StudySpec, shape: tuple[int, int, int], classes: int, budget: Any, below: dict[str, float],
             resolutions: list[int]) -> str:
    """One line: the first budgeted resource no architecture reaches, the space's minimum (and,
    when fitting was on, the minimum of its smallest scaled variant) and what would fit."""
    from objectives import most_scaled, resized_shape, smaller_inputs, space_minimum

    resource, minimum = next(iter(below.items()))
    limit = budget.limits[resource]
    profile = study_spec.cost_profile()

    def reach(space_name: str, input_shape: tuple[int, int, int], options: dict[str, Any]) -> float:
        space = get_space(space_name, input_shape=input_shape, **options)
        return space_minimum(space, classes, profile, [resource])[resource][0]

    where = f"space {study_spec.space!r} on input {'x'.join(map(str, shape))}"
    if study_spec.supernet is not None:  # its subnets are all there is: no scaled variant, no other space
        return (f"{resource}<={format_amount(resource, limit)} is below what {where} can reach: the cheapest "
                f"subnet of supernet {study_spec.supernet!r} needs {format_amount(resource, minimum)}; budgets that "
                f"fit: {resource}<={format_amount(resource, minimum, up=True)} or more")
    small = most_scaled(study_spec.space, shape, study_spec.space_options)
    small_min = reach(study_spec.space, shape, small) if small != study_spec.space_options else minimum
    needs = f"its cheapest architecture needs {format_amount(resource, minimum)}"
    if study_spec.fit_space and small_min < minimum:
        needs += f" as given, {format_amount(resource, small_min)} scaled down ({_options_text(small)})"
    reachable = min(minimum, small_min) if study_spec.fit_space else minimum
    advice = f"budgets that fit: {resource}<={format_amount(resource, reachable, up=True)} or more"
    if not study_spec.fit_space and small_min <= limit:
        advice += (f"; or let lightnas fit the space (drop --no-fit-space: {_options_text(small)} reaches "
                   f"{format_amount(resource, small_min)})")
    others = []
    for other in list_spaces():
        if other != study_spec.space:
            osmall = most_scaled(other, shape, {})
            omin = reach(other, shape, osmall)
            if omin <= limit:
                others.append(f"{other!r} ({_options_text(osmall)}: {format_amount(resource, omin)})")
    if others:
        advice += "; or space " + ", ".join(others)
    if not resolutions and study_spec.input_size is None and smaller_inputs(shape):
        side = min(smaller_inputs(shape))
        sshape = resized_shape(shape, side)
        smin = reach(study_spec.space, sshape, most_scaled(study_spec.space, sshape, study_spec.space_options))
        if smin <= limit:
            advice += (f"; or allow smaller inputs (--fit-resolution: at {side} px the space reaches "
                       f"{format_amount(resource, smin)})")
    return f"{resource}<={format_amount(resource, limit)} is below what {where} can reach: {needs}; {advice}"


def describe_plan(plan: StudyPlan) -> list[str]:
    """Lines for the user: the space's minimum and share within the budget, what fitting did."""
    feas = plan.info.get("feasibility")
    if not feas:
        return []
    minima = ", ".join(f"{k} {format_amount(k, v)}" for k, v in feas["minimum"].items())
    lines = []
    fit = plan.info.get("fit")
    if fit:
        before = plan.info["feasibility_as_given"]["share_within_budget"]
        scaled = ", ".join(f"{k} {'auto' if a is None else a} -> {b}" for k, (a, b) in fit["scaled"].items())
        kept = f"; kept as you gave them: {_options_text(fit['kept'])}" if fit["kept"] else ""
        if fit.get("within"):
            lines.append(f"space fitted to the budget within {fit['within']}'s space (TinyNAS, a sub-space: its "
                         f"architectures are all subnets): {scaled} ({before:.1%} of the supernet's space was within "
                         "the budget)")
        else:
            lines.append(f"space fitted to the budget (TinyNAS): {scaled}{kept} "
                         f"({before:.1%} of the space as given was within the budget)")
        if fit.get("input_size"):
            lines.append(f"inputs are resized to a short side of {fit['input_size']} px (--fit-resolution)")
    lines.append(f"budget {plan.study_spec.budget}: the space's minimum is {minima}; "
                 f"{feas['share_within_budget']:.1%} of it lies within the budget ({feas['samples']} samples)")
    return lines + plan.warnings


def prepare_study(study_spec: StudySpec, store: Store | None, *,
                  enqueue: Sequence[tuple[str, ArchSpec]] = (), warm_start: str | None = None,
                  anchors: bool = False) -> StudyPlan:
    """Everything :func:`create_study` checks, reading the database and writing nothing.

    ``store`` None stands for a database that does not exist yet (it holds no study, no device
    profile, no warm-start source): the caller opens, and so creates, it only once the plan is
    good (:func:`store_study`), so a refused study leaves no new database file behind.

    Raises:
        NasError: as :func:`create_study`.
    """
    if store is not None:
        check_name_free(study_spec.name, store)
        study_spec = study_spec.with_profiles(store.device_profiles())
    if study_spec.supernet is not None:  # its space is the supernet's or, fitted to the budget, a sub-space of it
        from ._supernet import require_supernet

        require_supernet(store, study_spec.supernet, trained=True)
    if study_spec.precision == "int8":
        from objectives import DeployError, require_deploy

        try:
            require_deploy("--precision int8")
        except DeployError as e:
            raise NasError(str(e)) from None
    data = _load(study_spec)
    if study_spec.precision == "int8" and study_spec.calibration > len(data.x_train):
        raise NasError(f"{study_spec.calibration} images asked, the training split has {len(data.x_train)}; "
                       f"accepted: 1..{len(data.x_train)}", field="calibration", argument=False)
    if study_spec.supernet is not None:  # the options as given, before fitting narrows them
        from ._supernet import check_supernet_study

        check_supernet_study(study_spec, store, data.input_shape, data.num_classes)
    plan = plan_study(study_spec, data)
    study_spec = plan.study_spec
    if study_spec.supernet is not None:
        record = check_supernet_study(study_spec, store, plan.info["data"]["input_shape"], data.num_classes)
        plan.info["supernet"] = {"name": record.name, "epochs": record.epochs_done, "params": record.params,
                                 "accuracy_source": f"supernet {record.name}"}
    shape = tuple(plan.info["data"]["input_shape"])
    given = list(enqueue) + (cheapest_anchors(plan.info) if anchors else [])
    if given or warm_start is not None:
        plan.warm = plan_warm_start(study_spec, store, shape, data.num_classes, specs=given,  # type: ignore[arg-type]
                                    from_study=warm_start)
    return plan


def store_study(plan: StudyPlan, store: Store, *, target: int | None = None) -> StudyPlan:
    """Write a prepared study (:func:`prepare_study`): the Optuna study, the lightnas record, the
    warm start, then the target. All or nothing.

    Raises:
        NasError: the name was taken since the plan was made.
    """
    study_spec = plan.study_spec
    check_name_free(study_spec.name, store)
    first_target = study_spec.trials if target is None else target
    study = optuna.create_study(storage=store.optuna, study_name=study_spec.name, directions=study_spec.directions)  # type: ignore[arg-type]
    try:
        study.set_user_attr("lightnas_spec", json.loads(study_spec.to_json()))
        store.add_study(study_spec.name, study_spec.to_json(), 0 if plan.warm else first_target,
                        info=json.dumps(plan.info))
        share_cost_device(study_spec.cost_device, store)
        if plan.warm:
            enqueue_planned(study_spec.name, store, plan.warm)
            store.set_target(study_spec.name, first_target)
    except BaseException:
        if store.get_study(study_spec.name) is not None:
            delete_study(study_spec.name, store)
        else:
            optuna.delete_study(study_name=study_spec.name, storage=store.optuna)
        raise
    return plan


def create_study(study_spec: StudySpec, store: Store, *, target: int | None = None,
                 enqueue: Sequence[tuple[str, ArchSpec]] = (), warm_start: str | None = None,
                 anchors: bool = False) -> StudyPlan:
    """Create a study (see the module docstring for the steps); nothing is written when anything
    is wrong (:func:`prepare_study`, then :func:`store_study`).

    Args:
        study_spec: the study spec as given (its space is fitted to the budget here).
        target: the first target of networks evaluated within the budget (default
            ``study_spec.trials``); 0 creates the study without starting it.
        enqueue: ``(source, ArchSpec)`` pairs evaluated first; each must fit the study.
        warm_start: a study of this database whose Pareto front is evaluated first (members
            that do not fit are skipped with the reason).
        anchors: also evaluate the space's cheapest architecture per budgeted resource first
            (the front's low-cost end).

    Returns:
        The plan: the spec as stored, the budget-first figures and what was enqueued.

    Raises:
        NasError: name taken, data unreadable, space options invalid for the data, a budget the
            space cannot reach, an enqueued architecture that does not fit, an unknown
            ``warm_start`` study.
    """
    plan = prepare_study(study_spec, store, enqueue=enqueue, warm_start=warm_start, anchors=anchors)
    return store_study(plan, store, target=target)


def share_cost_device(name: str, store: Store) -> None:
    """Store the study's cost profile in its database when it is one of this user's own (from
    ``$NAS_HOME/devices``: calibrated or fitted here) and the database does not hold it yet, so
    that workers on other hosts find it."""
    from objectives import MAX_PROFILE_BYTES, DeviceError, read_user_text, user_profile_path

    if name.endswith(".toml") or "/" in name or name in store.device_profiles():
        return
    path = user_profile_path(name)
    if path is not None:
        try:
            text = read_user_text(path, "cost_device", MAX_PROFILE_BYTES, what=f"profile {name!r}",
                                  error=DeviceError)
        except DeviceError as e:  # a key of the study spec, as its validation names it
            raise NasError(e.message, field="cost_device", argument=False) from None
        store.save_device_profile(name, text)
