"""The study spec: what a search is, validated once, stored beside the Optuna study.

A :class:`StudySpec` is JSON in ``lightnas_studies`` and in the Optuna study's user attribute
``lightnas_spec``, so plain Optuna code sees it too. It answers what every worker needs of it:
its directions, its budget, its search space for an input shape, its training configuration, the
cost of an architecture (with the FS-DNN ``hw_cost``) and the key of its evaluations.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from objectives import RESOURCES, RUNTIME_RESOURCES, BudgetError, parse_budget, resolve_resource
from search_spaces import list_spaces

from .._errors import NasError
from .._fields import FIDELITY, PROXY_NAMES, PRUNERS, SAMPLERS, SINGLE_METRIC_PRUNERS, STUDY, declare
from ._early import EarlyStop

if TYPE_CHECKING:
    from objectives import Budget, Dataset, DeviceProfile, TrainConfig
    from search_spaces import ArchSpec, SearchSpace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["OBJECTIVES", "PROXY_NAMES", "PRUNERS", "SAMPLERS",
           "SINGLE_METRIC_PRUNERS", "Fidelity", "StudySpec", "fidelity_key_of", "load_spec_file",
           "make_spec", "one_line_error", "trial_fidelity_key", "validation_error"]

#: Objective names: validation accuracy (maximised), the FS-DNN scalar and every cost resource (minimised).
OBJECTIVES = ("accuracy", "hw_cost", *RESOURCES)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
MAX_SPEC_FILE = 1 << 20  # bytes of a --config file: a study spec is a few hundred
#: Largest ``input_size`` (px): the resized images are held in memory, 1 MiB per channel at 512 px.
MAX_INPUT_SIZE = 512
#: Largest memory the resized images of a dataset (every split, float32) may take.
MAX_RESIZED_BYTES = 8 << 30


class Fidelity(BaseModel):
    """How hard each trial trains (low fidelity: few epochs, part of the training data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
    epochs: int = declare(FIDELITY["epochs"], ge=1, le=10_000)
    train_fraction: float = declare(FIDELITY["train_fraction"], gt=0.0, le=1.0)
    batch_size: int = declare(FIDELITY["batch_size"], ge=1, le=65_536)
    lr: float = declare(FIDELITY["lr"], gt=0.0)
    augment: Literal["auto", "none", "crop-flip"] = declare(FIDELITY["augment"])


def _space_name(v: str) -> str:
    if v not in list_spaces():
        raise ValueError(f"unknown search space {v!r}; accepted: {', '.join(list_spaces())}")
    return v


def _json_options(v: dict[str, Any]) -> dict[str, Any]:
    try:  # stored as JSON: normalised now (tuples become lists) so a spec reads back equal
        return dict(json.loads(json.dumps(v, allow_nan=False)))
    except (TypeError, ValueError):
        raise ValueError("space options must be JSON values (finite numbers, strings, lists)") from None


def _data_source(v: str) -> str:
    from objectives import check_source

    check_source(v)  # NUL bytes, over-long paths: DataError is a ValueError, reported on this field
    return v


#: Fields a study spec and a supernet spec share, checked the same way in both.
SpaceName = Annotated[str, AfterValidator(_space_name)]
SpaceOptions = Annotated[dict[str, Any], AfterValidator(_json_options)]
DataSource = Annotated[str, AfterValidator(_data_source)]


class StudySpec(BaseModel):
    """Everything that defines a study. Validated; errors name the field and accepted values.
    What each field means and its default: :mod:`nas._fields` (the CLI's help says the same).

    Example:
        >>> StudySpec(name="s1", space="plain", budget="params<=50k").objectives
        ['accuracy', 'hw_cost']
    """

    # Non-finite numbers (JSON 1e999, TOML inf) are refused: they cannot be stored as JSON. Strict:
    # true/false are not numbers, "8" is not an integer.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    name: str = declare(STUDY["name"], pattern=NAME_PATTERN)
    space: SpaceName = declare(STUDY["space"])
    space_options: SpaceOptions = declare(STUDY["space_options"])
    data: DataSource = declare(STUDY["data"])
    budget: str = declare(STUDY["budget"])
    budget_weights: dict[str, float] = declare(STUDY["budget_weights"])
    objectives: list[str] = declare(STUDY["objectives"])
    sampler: Literal["auto", "tpe", "nsga2", "gp", "random"] = declare(STUDY["sampler"])
    proxy: str | None = declare(STUDY["proxy"])
    proxy_candidates: int = declare(STUDY["proxy_candidates"], ge=2, le=256)
    pruner: Literal["none", "median", "asha", "hyperband", "pareto"] = declare(STUDY["pruner"])
    early_stop: EarlyStop = Field(default_factory=EarlyStop, description=STUDY["early_stop"].help)
    inherit_weights: bool = declare(STUDY["inherit_weights"])
    seed: int = declare(STUDY["seed"], ge=0, le=2**32 - 1)
    device: str = declare(STUDY["device"])
    amp: Literal["auto", "off", "bf16", "fp16"] = declare(STUDY["amp"])
    cost_device: str = declare(STUDY["cost_device"])
    precision: Literal["fp32", "int8"] = declare(STUDY["precision"])
    calibration: int = declare(STUDY["calibration"], ge=1, le=100_000)
    qat_epochs: int = declare(STUDY["qat_epochs"], ge=0, le=1000)
    qat_threshold: float = declare(STUDY["qat_threshold"], ge=0.0, le=1.0)
    trials: int = declare(STUDY["trials"], ge=1, le=1_000_000)
    fit_space: bool = declare(STUDY["fit_space"])
    fit_resolution: bool = declare(STUDY["fit_resolution"])
    input_size: int | None = declare(STUDY["input_size"], ge=4)
    val_fraction: float = declare(STUDY["val_fraction"], gt=0.0, lt=1.0)
    supernet: str | None = declare(STUDY["supernet"], pattern=NAME_PATTERN)
    fidelity: Fidelity = Field(default_factory=Fidelity, description=STUDY["fidelity"].help)

    #: ``cost_device`` by name only, resolved later (the API's request body, ``StudyCreate``): a
    #: request is parsed on the server's event loop, where no file may be read, and a client may
    #: never make the server read a path; the route checks the name against the server's profiles
    #: and its database's, off the loop.
    cost_device_by_name: ClassVar[bool] = False

    #: The device profiles of the database the spec belongs to (name -> TOML text,
    #: ``Store.device_profiles()``): the validation context's ``profiles`` (``get_study_spec``,
    #: ``list_studies``, the API) or :meth:`with_profiles`. They resolve ``cost_device`` before the
    #: user's and the shipped profiles (:meth:`cost_profile`), so a worker on another host costs with
    #: the profile stored with the study, and two databases read in one process never mix. Not a
    #: field: never stored, and not part of the spec's equality.
    _profiles: dict[str, str] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:  # fields only: the profiles are where the spec was read
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is not None and v not in PROXY_NAMES:
            raise ValueError(f"unknown proxy {v!r}; accepted: {', '.join(PROXY_NAMES)}")
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
        from objectives import resolve_device

        if v != "auto":
            resolve_device(v)  # an unknown device, or one no worker trains on (meta): ValueError, one line
        return v

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v: int | None) -> int | None:
        return check_input_size(v)

    @field_validator("cost_device")
    @classmethod
    def _cost_device(cls, v: str, info: ValidationInfo) -> str:
        if cls.cost_device_by_name:
            if v.endswith(".toml") or "/" in v or "\\" in v or not v.isprintable() or not 0 < len(v) <= 100:
                raise ValueError(f"{v[:100]!r} is not a device profile name; accepted: the name of a profile of this "
                                 "server (GET /devices lists them), never a path")
            return v
        _profile(v, info.context)  # DeviceError lists the valid profiles; a file that is no profile: one line
        return v

    @model_validator(mode="after")
    def _cross(self, info: ValidationInfo) -> StudySpec:
        if "hw_cost" in self.objectives and not self.budget:
            raise ValueError("objective hw_cost needs a budget (hw_cost = sum w_i * resource_i / limit_i); "
                             "give --budget, or choose resources as objectives")
        if self.budget:
            parse_budget(self.budget, self.budget_weights)
        runtime = [c.name for c in parse_budget(self.budget).conditions] if self.budget else []
        if set(runtime + self.objectives) & set(RUNTIME_RESOURCES) and not self.cost_device_by_name:
            from objectives import check_runtime_resources

            check_runtime_resources(runtime + self.objectives, _profile(self.cost_device, info.context))
        for f in ("calibration", "qat_epochs", "qat_threshold"):
            if getattr(self, f) != STUDY[f].default and self.precision != "int8":
                raise ValueError(f"{f} applies with --precision int8 only; add it or leave {f} out")
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
        if self.proxy_candidates != STUDY["proxy_candidates"].default and self.proxy is None:
            raise ValueError("proxy_candidates applies with a proxy only; add --proxy NAME or leave it out")
        if self.supernet is not None:
            for f, bad in (("pruner", self.pruner != "none"), ("inherit_weights", self.inherit_weights),
                           ("precision", self.precision != "fp32"), ("proxy", self.proxy is not None),
                           ("fit_resolution", self.fit_resolution)):
                if bad:
                    raise ValueError(f"{f} does not apply to a study on a supernet (its subnets are evaluated with "
                                     f"inherited weights, not trained); leave {f} out or drop --supernet")
        if self.pruner == "pareto" and "accuracy" not in self.objectives:
            raise ValueError(f"pruner 'pareto' compares validation accuracy; it needs accuracy among the objectives "
                             f"(got {','.join(self.objectives)})")
        profiles = info.context.get("profiles") if isinstance(info.context, dict) else None
        if profiles:
            self._profiles = dict(profiles)
        return self

    # ---------------------------------------------------------------- its database's profiles
    def with_profiles(self, profiles: Mapping[str, str]) -> StudySpec:
        """This spec with the device profiles of its database (name -> TOML text) to resolve
        ``cost_device`` with (:meth:`cost_profile`); a copy, this one unchanged."""
        out = self.model_copy()
        out._profiles = dict(profiles)
        return out

    @property
    def profiles(self) -> dict[str, str]:
        """The device profiles of the spec's database (name -> TOML text; a copy), see :meth:`with_profiles`."""
        return dict(self._profiles)

    def cost_profile(self) -> DeviceProfile:
        """The profile ``cost_device`` names: its database's first (:meth:`with_profiles`), then the
        user's and the shipped ones (``objectives.get_device``).

        Raises:
            objectives.DeviceError: no such profile (listing the valid ones), or a malformed one.
        """
        from objectives import get_device

        return get_device(self.cost_device, self._profiles)

    # -------------------------------------------------------------- what a worker asks of it
    @property
    def directions(self) -> list[str]:
        return ["maximize" if o == "accuracy" else "minimize" for o in self.objectives]

    def budget_obj(self) -> Budget | None:
        return parse_budget(self.budget, self.budget_weights) if self.budget else None

    def load_data(self, *, whole_train: bool = False) -> Dataset:
        """The study's dataset with its fixed splits (raises ``DataError``; ``NasError`` when its images
        resized to ``input_size`` would take over :data:`MAX_RESIZED_BYTES`); ``whole_train``: the
        whole training split, whatever the fidelity's ``train_fraction`` (refinement)."""
        from objectives import load_dataset

        data = load_dataset(self.data, seed=self.seed, val_fraction=self.val_fraction,
                            train_fraction=1.0 if whole_train else self.fidelity.train_fraction)
        return resized(data, self.input_size)

    def search_space(self, input_shape: tuple[int, int, int]) -> SearchSpace:
        """The study's search space (its stored, fitted options) for inputs of ``input_shape``."""
        from search_spaces import get_space

        return get_space(self.space, input_shape=input_shape, **self.space_options)

    def train_config(self, *, device: str | None = None, threads: int | None = None,
                     epochs: int | None = None) -> TrainConfig:
        """How a trial trains: the fidelity's epochs (or ``epochs``), batch size and learning rate,
        the study's seed and device."""
        from objectives import TrainConfig

        f = self.fidelity
        return TrainConfig(epochs=epochs or f.epochs, batch_size=f.batch_size, lr=f.lr, seed=self.seed,
                           device=device or self.device, threads=threads, augment=self.augmentation,
                           amp=self.amp)

    @property
    def augmentation(self) -> str:
        """The training augmentation in effect: ``auto`` is ``crop-flip`` for ``cifar10:`` data (natural
        images) and ``none`` for the rest (digits, MNIST-like IDX, npz: a flipped digit is another
        digit or none)."""
        if self.fidelity.augment != "auto":
            return self.fidelity.augment
        return "crop-flip" if self.data.startswith("cifar10:") else "none"

    def cost(self, arch: ArchSpec, input_shape: tuple[int, int, int], num_classes: int, *,
             profile: DeviceProfile | str | None = None, with_depth: bool = False) -> dict[str, float]:
        """The cost totals of ``arch`` on the study's device profile (or ``profile``), with the
        FS-DNN ``hw_cost`` under the study's budget when it has one (and, ``with_depth``, the
        network's weight layers, as refinement records them)."""
        from objectives import estimate_cost

        report = estimate_cost(arch, input_shape, num_classes, device=profile or self.cost_profile())
        totals = dict(report.totals)
        if with_depth:
            totals["depth"] = float(report.depth)
        budget = self.budget_obj()
        if budget is not None:
            totals["hw_cost"] = budget.hw_cost(totals)
        return totals

    def fidelity_dict(self) -> dict[str, Any]:
        """What an evaluation's accuracy depends on besides the architecture."""
        out = {"data": self.data, "seed": self.seed, "val_fraction": self.val_fraction,
               **self.fidelity.model_dump(exclude={"augment"})}
        if self.augmentation != "none":  # keys of studies without augmentation are those of before it
            out["augment"] = self.augmentation
        if self.inherit_weights:  # initialised from a parent: not the same evaluation as from scratch
            out["inherit_weights"] = True
        if self.input_size is not None:  # images resized: another dataset, as far as accuracy goes
            out["input_size"] = self.input_size
        if self.supernet is not None:  # supernet accuracy (inherited weights), not stand-alone training
            out["supernet"] = self.supernet
        return out

    @property
    def fidelity_key(self) -> str:
        return fidelity_key_of(self.fidelity_dict())

    def to_json(self) -> str:
        return self.model_dump_json()


def fidelity_key_of(fidelity: dict[str, Any]) -> str:
    """The key of an evaluation's fidelity (what its accuracy depends on besides the architecture)."""
    return hashlib.sha256(json.dumps(fidelity, sort_keys=True).encode()).hexdigest()[:24]


def trial_fidelity_key(study_spec: StudySpec, trial: Any) -> str:
    """Where the evaluation (and weights) behind a trial of ``study_spec`` are: the trial's own
    ``fidelity_key`` attribute (a member fine-tuned from a supernet) or the study's fidelity key."""
    own = trial.user_attrs.get("fidelity_key")
    return own if isinstance(own, str) and own else study_spec.fidelity_key


def _profile(name: str, context: Any) -> DeviceProfile:
    """The profile ``name`` (or path) resolves to, never hanging on a file
    (``objectives.open_profile``); a validation ``context`` of ``{"profiles": {name: TOML}}``
    holds a study database's profiles, which come first."""
    from objectives import open_profile

    stored = context.get("profiles") if isinstance(context, dict) else None
    return open_profile(name, stored)


def check_input_size(v: int | None) -> int | None:
    """An ``input_size`` of 4 to :data:`MAX_INPUT_SIZE` px (or None), for a study and a supernet alike."""
    if v is not None and not 4 <= v <= MAX_INPUT_SIZE:
        raise ValueError(f"got {v}; accepted: 4 to {MAX_INPUT_SIZE} px (resized images are held in memory: "
                         f"{v * v * 4 / 2**20:,.0f} MiB per image channel at {v} px)")
    return v


def resized(data: Dataset, size: int | None) -> Dataset:
    """``data`` with its images resized to a short side of ``size`` px (``None``: as it is), refused
    in one line (``NasError``) when they would take over :data:`MAX_RESIZED_BYTES`: the one resize of
    a study's and a supernet's data."""
    if size is None:
        return data
    _check_resized_memory(data, size)
    return data.resized(size)


def _check_resized_memory(data: Dataset, size: int) -> None:
    """Refuse an ``input_size`` whose resized images (every split, float32) would take more than
    :data:`MAX_RESIZED_BYTES`, before they are allocated."""
    channels, h, w = data.input_shape
    n = sum(data.sizes.values())
    short = min(h, w)
    need = n * channels * max(1, round(h * size / short)) * max(1, round(w * size / short)) * 4
    if need > MAX_RESIZED_BYTES:
        per_px2 = n * channels * (h / short) * (w / short) * 4
        fits = int((MAX_RESIZED_BYTES / per_px2) ** 0.5)
        raise NasError(f"{n:,} images resized to a short side of {size} px would take {need / 2**30:,.1f} GiB; "
                       f"accepted: at most {MAX_RESIZED_BYTES >> 30} GiB of images (here input_size <= {fits})",
                       field="input_size", argument=False)


def _one_line(e: ValidationError) -> NasError:
    return validation_error(e.errors()[0])


def one_line_error(err: Any, default_loc: str = "study") -> str:
    """One line ``field: what was wrong; accepted: ...`` for a pydantic error dict (the first of
    ``ValidationError.errors()``; FastAPI's request errors too, whose location starts with
    ``body``/``query``/``path``, which is left out): ``str`` of :func:`validation_error`."""
    return str(validation_error(err, default_loc))


def validation_error(err: Any, default_loc: str = "study") -> NasError:
    """A pydantic error dict as a :class:`NasError` whose field is the error's location (``budget``,
    ``fidelity.epochs``; ``default_loc`` for the whole document), a key of the document rather than an
    argument (the CLI prints it as it is, since it may come from a TOML file)."""
    parts = [str(p) if str(p).isprintable() else repr(str(p)) for p in err["loc"]]  # a key "\n": one line still
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
    return NasError(" ".join(msg.splitlines()), field=loc, argument=False)


def make_spec(**fields: Any) -> StudySpec:
    """Validate fields into a :class:`StudySpec`; raises :class:`NasError` with one line."""
    try:
        return StudySpec(**fields)
    except ValidationError as e:
        raise _one_line(e) from None


def load_spec_file(path: str | Path, **overrides: Any) -> StudySpec:
    """A study spec from a TOML file (fields as in :class:`StudySpec`, ``[fidelity]`` table).

    Raises:
        NasError: one line for a file that is missing, not a regular file, too large, not UTF-8,
            not TOML, or whose fields do not validate.
    """
    from objectives import read_user_text

    # A directory, a device (/dev/zero), a FIFO that never ends, a file over the cap: one line.
    text = read_user_text(path, "config", MAX_SPEC_FILE, error=NasError, accepted="a TOML file (TOML is UTF-8)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NasError(f"{path} is not valid TOML ({e})", field="config") from None
    except RecursionError:
        raise NasError(f"{path} nests tables or arrays too deeply to read; accepted: a study spec TOML "
                       "file (fields of nas.StudySpec, a [fidelity] table)", field="config") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return make_spec(**data)


