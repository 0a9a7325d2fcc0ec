"""Study specs: what a search is, validated once, stored beside the Optuna study.

A study is created once (``create_study``) and then run by any number of workers. Its spec is
JSON in ``lightnas_studies`` and in the Optuna study's user attribute ``lightnas_spec``, so plain
Optuna code sees it too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from objectives import RESOURCES, BudgetError, format_amount, parse_budget, resolve_resource
from search_spaces import SpaceError, get_space, list_spaces
from storage import Store

from ._early import EarlyStop
from ._errors import NasError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["OBJECTIVES", "PRUNERS", "SAMPLERS", "SINGLE_METRIC_PRUNERS", "EarlyStop", "Fidelity", "StudyEntry",
           "StudyPlan", "StudySpec", "UnknownStudy", "UnreadableStudy", "check_name_free", "check_study_exists",
           "create_study", "delete_study", "describe_plan", "get_study_spec", "list_studies", "load_spec_file",
           "one_line_error", "parse_stored_spec", "plan_study", "study_info"]

SAMPLERS = ("tpe", "nsga2", "random")
#: Early stopping of poor trials on validation accuracy. ``median``, ``asha``, ``hyperband``:
#: Optuna's pruners (Tune's ASHA on Ray), single-objective (accuracy) studies only. ``pareto``:
#: lightnas's Pareto-aware rule (:mod:`nas._early`), any study with accuracy as an objective.
PRUNERS = ("none", "median", "asha", "hyperband", "pareto")
#: The pruners that rank trials on the one metric accuracy.
SINGLE_METRIC_PRUNERS = ("median", "asha", "hyperband")
#: Objective names: validation accuracy (maximised), the FS-DNN scalar and every cost resource (minimised).
OBJECTIVES = ("accuracy", "hw_cost", *RESOURCES)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
MAX_SPEC_FILE = 1 << 20  # bytes of a --config file: a study spec is a few hundred


class Fidelity(BaseModel):
    """How hard each trial trains (low fidelity: few epochs, part of the training data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
    epochs: int = Field(default=8, ge=1, le=10_000)
    train_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=0.1, gt=0.0)


class StudySpec(BaseModel):
    """Everything that defines a study. Validated; errors name the field and accepted values.

    Example:
        >>> StudySpec(name="s1", space="plain", budget="params<=50k").objectives
        ['accuracy', 'hw_cost']
    """

    # Non-finite numbers (JSON 1e999, TOML inf) are refused: they cannot be stored as JSON. Strict:
    # true/false are not numbers, "8" is not an integer.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    name: str = Field(pattern=NAME_PATTERN)
    space: str
    space_options: dict[str, Any] = Field(default_factory=dict)
    data: str = "digits"
    budget: str = ""
    budget_weights: dict[str, float] = Field(default_factory=dict)
    objectives: list[str] = Field(default_factory=lambda: ["accuracy", "hw_cost"])
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    pruner: Literal["none", "median", "asha", "hyperband", "pareto"] = "none"
    early_stop: EarlyStop = Field(default_factory=EarlyStop)
    inherit_weights: bool = False
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    device: str = "auto"
    cost_device: str = "rpi4"
    trials: int = Field(default=30, ge=1, le=1_000_000)
    fit_space: bool = True
    fit_resolution: bool = False
    input_size: int | None = Field(default=None, ge=4, le=4096)
    val_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    fidelity: Fidelity = Field(default_factory=Fidelity)

    @field_validator("space")
    @classmethod
    def _space(cls, v: str) -> str:
        if v not in list_spaces():
            raise ValueError(f"unknown search space {v!r}; accepted: {', '.join(list_spaces())}")
        return v

    @field_validator("space_options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:  # stored as JSON: normalise now (tuples become lists) so a spec reads back equal
            return json.loads(json.dumps(v, allow_nan=False))
        except (TypeError, ValueError):
            raise ValueError("space options must be JSON values (finite numbers, strings, lists)") from None

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        from objectives import check_source

        check_source(v)  # NUL bytes, over-long paths: DataError is a ValueError, reported on this field
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one objective is needed, e.g. accuracy,hw_cost")
        out = []
        for name in v:
            canon = name if name in ("accuracy", "hw_cost") else None
            if canon is None:
                try:
                    canon = resolve_resource(name)
                except BudgetError:
                    raise ValueError(f"unknown objective {name!r}; accepted: {', '.join(OBJECTIVES)}") from None
            out.append(canon)
        if len(set(out)) != len(out):
            raise ValueError(f"objective listed twice in {v}")
        return out

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        if v.strip():
            parse_budget(v)  # BudgetError is a ValueError: pydantic reports it on this field
        return v.strip()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import torch

        if v != "auto":
            try:
                torch.device(v)
            except RuntimeError:
                raise ValueError(f"unknown torch device {v!r}; accepted: auto, cpu, cuda, cuda:N") from None
        return v

    @field_validator("cost_device")
    @classmethod
    def _cost_device(cls, v: str) -> str:
        from objectives import get_device

        get_device(v)  # DeviceError lists the valid profiles
        return v

    @model_validator(mode="after")
    def _cross(self) -> StudySpec:
        if "hw_cost" in self.objectives and not self.budget:
            raise ValueError("objective hw_cost needs a budget (hw_cost = sum w_i * resource_i / limit_i); "
                             "give --budget, or choose resources as objectives")
        if self.budget:
            parse_budget(self.budget, self.budget_weights)
        if self.pruner in SINGLE_METRIC_PRUNERS and self.objectives != ["accuracy"]:
            raise ValueError(f"pruner {self.pruner!r} needs the single objective accuracy (got "
                             f"{','.join(self.objectives)}): Optuna pruners and Tune's ASHA stop trials on one "
                             "metric; use pruner 'pareto' (accuracy at equal or lower cost) in multi-objective "
                             "studies")
        if self.early_stop != EarlyStop() and self.pruner != "pareto":
            raise ValueError(f"early_stop settings apply to pruner 'pareto' only (got pruner {self.pruner!r}); "
                             "add --pruner pareto or leave them out")
        rungs = self.early_stop.rungs
        if rungs is not None and (not rungs or max(rungs) >= self.fidelity.epochs):
            raise ValueError(f"early_stop.rungs: need epochs from 1 to {self.fidelity.epochs - 1} (before the last of "
                             f"{self.fidelity.epochs} epochs), got {rungs}")
        if self.pruner == "pareto" and "accuracy" not in self.objectives:
            raise ValueError(f"pruner 'pareto' compares validation accuracy; it needs accuracy among the objectives "
                             f"(got {','.join(self.objectives)})")
        return self

    # -------------------------------------------------------------- derived
    @property
    def directions(self) -> list[str]:
        return ["maximize" if o == "accuracy" else "minimize" for o in self.objectives]

    def budget_obj(self):  # -> Budget | None
        return parse_budget(self.budget, self.budget_weights) if self.budget else None

    def load_data(self):  # -> objectives.Dataset
        """The study's dataset with its fixed splits (raises ``DataError``)."""
        from objectives import load_dataset

        data = load_dataset(self.data, seed=self.seed, val_fraction=self.val_fraction,
                            train_fraction=self.fidelity.train_fraction)
        return data if self.input_size is None else data.resized(self.input_size)

    def fidelity_dict(self) -> dict[str, Any]:
        """What an evaluation's accuracy depends on besides the architecture."""
        out = {"data": self.data, "seed": self.seed, "val_fraction": self.val_fraction, **self.fidelity.model_dump()}
        if self.inherit_weights:  # initialised from a parent: not the same evaluation as from scratch
            out["inherit_weights"] = True
        if self.input_size is not None:  # images resized: another dataset, as far as accuracy goes
            out["input_size"] = self.input_size
        return out

    @property
    def fidelity_key(self) -> str:
        text = json.dumps(self.fidelity_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def to_json(self) -> str:
        return self.model_dump_json()


def _one_line(e: ValidationError) -> str:
    return one_line_error(e.errors()[0])


def one_line_error(err: Any, default_loc: str = "study") -> str:
    """One line ``field: what was wrong; accepted: ...`` for a pydantic error dict (the first of
    ``ValidationError.errors()``; FastAPI's request errors too, whose location starts with
    ``body``/``query``/``path``, which is left out)."""
    parts = [str(p) for p in err["loc"]]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    loc = ".".join(parts) or default_loc
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "literal_error" and "sampler" in loc:
        msg = f"got {err['input']!r}; accepted: {', '.join(SAMPLERS)}"
    if err["type"] == "literal_error" and "pruner" in loc:
        msg = f"got {err['input']!r}; accepted: {', '.join(PRUNERS)}"
    if err["type"] == "string_pattern_mismatch":
        msg = "use letters, digits, '_', '.', '-' (at most 100 characters, not starting with a symbol)"
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}"


def make_spec(**fields: Any) -> StudySpec:
    """Validate fields into a :class:`StudySpec`; raises :class:`NasError` with one line."""
    try:
        return StudySpec(**fields)
    except ValidationError as e:
        raise NasError(_one_line(e)) from None


def load_spec_file(path: str | Path, **overrides: Any) -> StudySpec:
    """A study spec from a TOML file (fields as in :class:`StudySpec`, ``[fidelity]`` table).

    Raises:
        NasError: one line for a file that is missing, not a regular file, too large, not UTF-8,
            not TOML, or whose fields do not validate.
    """
    file = Path(path)
    try:
        if not file.is_file():  # a directory, a device, a pipe that never ends
            raise FileNotFoundError(0, "not a regular file" if file.exists() else "no such file")
        size = file.stat().st_size
        if size > MAX_SPEC_FILE:
            raise NasError(f"--config: {path} is {size:,} bytes; a study spec file is at most {MAX_SPEC_FILE:,}")
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise NasError(f"--config: {path} is not UTF-8 text; accepted: a TOML file (TOML is UTF-8)") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        if isinstance(e, NasError):
            raise
        raise NasError(f"--config: cannot read {path} ({getattr(e, 'strerror', None) or e}); accepted: a TOML "
                       "file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NasError(f"--config: {path} is not valid TOML ({e})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return make_spec(**data)


@dataclass
class StudyPlan:
    """What creating a study will store: the spec with the space fitted to the budget, and the
    budget-first figures (``info``: ``feasibility`` of the space used, ``fit`` when it was
    scaled, ``feasibility_as_given`` then). ``warnings`` are lines for the user."""

    spec: StudySpec
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _options_text(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or "as given"


def plan_study(spec: StudySpec, data: Any = None) -> StudyPlan:
    """Budget first, before anything is written or trained: the exact minimum of every budgeted
    resource over the space and its share within the budget (:mod:`objectives._feasibility`);
    the space fitted to the budget when too little of it fits (``spec.fit_space``); a budget no
    architecture reaches is refused.

    Raises:
        NasError: data unreadable, bad space options, or a budget below what the space (fitted
            or not) can reach; the message names the resource, the minimum and what would fit.
    """
    from objectives import DataError
    from objectives._feasibility import USABLE_SHARE, WARN_SHARE, assess, fit_space, resized_shape, smaller_inputs

    if data is None:
        try:
            data = spec.load_data()
        except DataError as e:
            raise NasError(f"data: {e}") from None
    shape, classes = data.input_shape, data.num_classes
    try:
        space = get_space(spec.space, input_shape=shape, **spec.space_options)
    except SpaceError as e:
        raise NasError(f"space_options: {e}") from None
    budget = spec.budget_obj()
    if budget is None:
        return StudyPlan(spec)
    where = f"space {spec.space!r} on input {'x'.join(map(str, shape))}"
    given = assess(space, budget, classes, spec.cost_device, seed=spec.seed)
    plan = StudyPlan(spec, {"feasibility": given.to_dict()})
    final = given
    resolutions = smaller_inputs(shape) if spec.fit_resolution and spec.input_size is None else []
    if spec.fit_space and (given.share < USABLE_SHARE or given.below):
        fit = fit_space(spec.space, shape, spec.space_options, budget, classes, spec.cost_device, seed=spec.seed,
                        resolutions=resolutions)
        if fit.scaled:
            fshape = shape if fit.input_size is None else resized_shape(shape, fit.input_size)
            final = assess(get_space(spec.space, input_shape=fshape, **fit.options), budget, classes,
                           spec.cost_device, seed=spec.seed)
            if not final.below and (given.below or final.share >= given.share):
                update: dict[str, Any] = {"space_options": fit.options}
                if fit.input_size is not None:
                    update["input_size"] = fit.input_size
                plan.spec = spec.model_copy(update=update)
                plan.info = {"feasibility": final.to_dict(), "feasibility_as_given": given.to_dict(),
                             "fit": fit.to_dict()}
            else:
                final = given
    if final.below:
        raise NasError(_refusal(spec, shape, classes, budget, final.below, resolutions))
    if final.share < WARN_SHARE:
        plan.warnings.append(
            f"warning: only {final.share:.2%} of {where} lies within the budget {spec.budget} "
            f"({final.samples} samples); most samples will be rejected before training. Loosen the budget "
            f"(minimum: {', '.join(f'{k}={format_amount(k, v)}' for k, v in final.minima.items())})"
            + ("" if spec.fit_space else " or drop --no-fit-space"))
    return plan


def _refusal(spec: StudySpec, shape: tuple[int, int, int], classes: int, budget: Any, below: dict[str, float],
             resolutions: list[int]) -> str:
    """One line: the first budgeted resource no architecture reaches, the space's minimum (and,
    when fitting was on, the minimum of its smallest scaled variant) and what would fit."""
    from objectives._feasibility import most_scaled, resized_shape, smaller_inputs, space_minimum

    resource, minimum = next(iter(below.items()))
    limit = budget.limits[resource]

    def reach(space_name: str, input_shape: tuple[int, int, int], options: dict[str, Any]) -> float:
        space = get_space(space_name, input_shape=input_shape, **options)
        return space_minimum(space, classes, spec.cost_device, [resource])[resource][0]

    where = f"space {spec.space!r} on input {'x'.join(map(str, shape))}"
    small = most_scaled(spec.space, shape, spec.space_options)
    small_min = reach(spec.space, shape, small) if small != spec.space_options else minimum
    needs = f"its cheapest architecture needs {format_amount(resource, minimum)}"
    if spec.fit_space and small_min < minimum:
        needs += f" as given, {format_amount(resource, small_min)} scaled down ({_options_text(small)})"
    reachable = min(minimum, small_min) if spec.fit_space else minimum
    advice = f"budgets that fit: {resource}<={format_amount(resource, reachable, up=True)} or more"
    if not spec.fit_space and small_min <= limit:
        advice += (f"; or let lightnas fit the space (drop --no-fit-space: {_options_text(small)} reaches "
                   f"{format_amount(resource, small_min)})")
    others = []
    for other in list_spaces():
        if other != spec.space:
            osmall = most_scaled(other, shape, {})
            omin = reach(other, shape, osmall)
            if omin <= limit:
                others.append(f"{other!r} ({_options_text(osmall)}: {format_amount(resource, omin)})")
    if others:
        advice += "; or space " + ", ".join(others)
    if not resolutions and spec.input_size is None and smaller_inputs(shape):
        side = min(smaller_inputs(shape))
        sshape = resized_shape(shape, side)
        smin = reach(spec.space, sshape, most_scaled(spec.space, sshape, spec.space_options))
        if smin <= limit:
            advice += (f"; or allow smaller inputs (--fit-resolution: at {side} px the space reaches "
                       f"{format_amount(resource, smin)})")
    return f"budget: {resource}<={format_amount(resource, limit)} is below what {where} can reach: {needs}; {advice}"


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
        lines.append(f"space fitted to the budget (TinyNAS): {scaled}{kept} "
                     f"({before:.1%} of the space as given was within the budget)")
        if fit.get("input_size"):
            lines.append(f"inputs are resized to a short side of {fit['input_size']} px (--fit-resolution)")
    lines.append(f"budget {plan.spec.budget}: the space's minimum is {minima}; "
                 f"{feas['share_within_budget']:.1%} of it lies within the budget ({feas['samples']} samples)")
    return lines + plan.warnings


def create_study(spec: StudySpec, store: Store, *, target: int | None = None,
                 plan: StudyPlan | None = None) -> StudyPlan:
    """Create the Optuna study and the lightnas record, after checking the data, the space and
    the budget (:func:`plan_study`, unless its ``plan`` is given).

    ``target`` (default ``spec.trials``) is the first target of networks evaluated within the
    budget; 0 creates the study without starting it (workers see it with nothing to do).
    Nothing is written when anything is wrong.

    Returns:
        The plan: the spec as stored (its space fitted to the budget) and the figures.

    Raises:
        NasError: name taken, data unreadable, space options invalid for the data, a budget
            the space cannot reach.
    """
    check_name_free(spec.name, store)
    if plan is None:
        plan = plan_study(spec)
    spec = plan.spec
    study = optuna.create_study(storage=store.optuna, study_name=spec.name, directions=spec.directions)  # type: ignore[arg-type]
    try:
        study.set_user_attr("lightnas_spec", json.loads(spec.to_json()))
        store.add_study(spec.name, spec.to_json(), spec.trials if target is None else target,
                        info=json.dumps(plan.info))
    except Exception:
        optuna.delete_study(study_name=spec.name, storage=store.optuna)
        raise
    return plan


def check_name_free(name: str, store: Store) -> None:
    """Raises NasError when a study of that name exists (lightnas's or a plain Optuna one)."""
    if store.get_study(name) is not None or name in optuna.get_all_study_names(store.optuna):
        raise NasError(f"study {name!r} already exists; choose another name or "
                       f"delete it with 'nas study delete {name} --yes'")


def study_info(name: str, store: Store) -> dict[str, Any]:
    """The budget-first figures stored at creation (``feasibility``, ``fit``), {} for none."""
    row = store.get_study(name)
    if row is None or not row.info_json:
        return {}
    try:
        return dict(json.loads(row.info_json))
    except ValueError:
        return {}


class UnknownStudy(NasError):
    """No study of that name in the database (the message lists the ones there)."""


class UnreadableStudy(NasError):
    """A stored study spec that no longer validates (written by another version, or edited):
    the study can be listed and deleted, not run or queried."""


def check_study_exists(name: str, store: Store) -> None:
    """Raises :class:`UnknownStudy` (one line listing the studies there) unless ``name`` exists."""
    if store.get_study(name) is None:
        names = [r.name for r in store.list_studies()]
        accepted = f"; studies here: {', '.join(names)}" if names else "; this database has no studies"
        raise UnknownStudy(f"unknown study {name!r}{accepted}")


def parse_stored_spec(name: str, spec_json: str) -> StudySpec:
    """A stored spec, validated; raises :class:`UnreadableStudy` naming why it no longer is."""
    try:
        return StudySpec.model_validate_json(spec_json)
    except ValidationError as e:
        reason = _one_line(e)
    except ValueError as e:  # not JSON at all
        reason = str(e).splitlines()[0]
    raise UnreadableStudy(f"study {name!r}: its stored spec cannot be read ({reason}); it can only be listed "
                          f"and deleted ('nas study delete {name} --yes')")


def get_study_spec(name: str, store: Store) -> StudySpec:
    """The study's spec. Raises :class:`UnknownStudy` or :class:`UnreadableStudy` (both NasError)."""
    row = store.get_study(name)
    if row is None:
        check_study_exists(name, store)
    assert row is not None
    return parse_stored_spec(name, row.spec_json)


@dataclass(frozen=True)
class StudyEntry:
    """A study as listed: its spec, or, when the stored spec no longer validates, why (``unreadable``)."""

    name: str
    target: int
    spec: StudySpec | None
    unreadable: str | None = None


def list_studies(store: Store) -> list[StudyEntry]:
    """Every lightnas study in the database, oldest first; one whose stored spec no longer
    validates is listed with the reason instead of failing the whole list."""
    out = []
    for r in store.list_studies():
        try:
            out.append(StudyEntry(r.name, r.target_trials, parse_stored_spec(r.name, r.spec_json)))
        except UnreadableStudy as e:
            out.append(StudyEntry(r.name, r.target_trials, None, str(e)))
    return out


def delete_study(name: str, store: Store) -> None:
    """Delete the study (its Optuna trials, its record, its jobs); works on an unreadable one too."""
    check_study_exists(name, store)
    if name in optuna.get_all_study_names(store.optuna):
        optuna.delete_study(study_name=name, storage=store.optuna)
    store.delete_study(name)
