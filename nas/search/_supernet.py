"""A named, stored, resumable weight-shared supernet (issue 30): its settings, training and record.

A supernet lives in the study database as three artifacts under one name (no table of its own):

- ``supernet/NAME/record.json``: the settings (:class:`SupernetSpec`), the structure
  (``SuperNet.config()``: space, fitted options, input shape, classes), the data's shape and
  normalisation, its size, its per-epoch curve, its status (``training`` until the last epoch is
  stored, then ``trained``) and training seconds;
- ``supernet/NAME/checkpoint.pt``: the last finished epoch (supernet and optimiser state) while
  training; dropped once trained;
- ``supernet/NAME/weights.pt``: the trained supernet's ``state_dict``;
- ``supernet/NAME/check.json``: its last ranking check (``nas supernet check``, :func:`check_supernet`):
  Kendall tau and Spearman rho between supernet and stand-alone accuracy over subnets spanning its
  space, with every pair and the stand-alone fidelity.

Each epoch's record and checkpoint are written in one transaction (``Store.put_artifacts``), so
after Ctrl-C or ``kill -9`` the database holds the last finished epoch, and training the same name
again with the same settings goes on from it, with the same steps as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from search_spaces import SpaceError, SpecError, SuperNet, get_space
from storage import Store

from .._errors import NasError
from .._fields import FIDELITY, STUDY
from ._spec import (
    NAME_PATTERN,
    DataSource,
    SpaceName,
    SpaceOptions,
    check_input_size,
    resized,
    validation_error,
)

if TYPE_CHECKING:
    from objectives import Dataset, SupernetEpoch

__all__ = ["MAX_CHECK_SUBNETS", "SUPERNET_PREFIX", "SupernetRecord", "SupernetSpec", "check_supernet",
           "check_supernet_study", "dense_epochs_used", "get_supernet", "get_supernet_check", "list_supernets",
           "load_supernet",
           "make_supernet_spec", "prepare_supernet", "require_supernet", "supernet_doc", "supernet_study_fields",
           "supernet_summary", "train_stored_supernet"]

#: Artifact keys of supernets start with this, then the name.
SUPERNET_PREFIX = "supernet/"
#: Version of the record's layout (``format`` in record.json).
RECORD_FORMAT = 1


def _key(name: str, what: str) -> str:
    return f"{SUPERNET_PREFIX}{name}/{what}"


class SupernetSpec(BaseModel):
    """What defines a supernet: a name, its space and options, its data, and how it trains.
    Two runs with equal specs train the same weights (the second resumes the first)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    name: str
    space: SpaceName
    space_options: SpaceOptions = {}
    data: DataSource = STUDY["data"].default
    input_size: int | None = None
    epochs: int = FIDELITY["epochs"].default
    batch_size: int = FIDELITY["batch_size"].default
    lr: float = FIDELITY["lr"].default
    seed: int = STUDY["seed"].default
    val_fraction: float = STUDY["val_fraction"].default
    sandwich: int = 2
    inplace_distill: bool = True
    bn_batches: int = 8
    #: epochs trained dense first (``objectives.train_supernet``'s ``dense_epochs``); None: 30 % of ``epochs``
    dense_epochs: int | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        import re

        if not re.match(NAME_PATTERN, v):
            raise ValueError("use letters, digits, '_', '.', '-' (at most 100 characters, not starting with a symbol)")
        return v

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v: int | None) -> int | None:
        return check_input_size(v)

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: int) -> int:
        if not 1 <= v <= 10_000:
            raise ValueError(f"got {v}; accepted: 1 to 10000")
        return v

    @field_validator("batch_size", "bn_batches")
    @classmethod
    def _positive(cls, v: int) -> int:
        if not 1 <= v <= 65_536:
            raise ValueError(f"got {v}; accepted: 1 to 65536")
        return v

    @field_validator("sandwich")
    @classmethod
    def _sandwich(cls, v: int) -> int:
        if not 0 <= v <= 64:
            raise ValueError(f"got {v}; accepted: 0 to 64 random subnets per step")
        return v

    @field_validator("dense_epochs")
    @classmethod
    def _dense_epochs(cls, v: int | None, info: ValidationInfo) -> int | None:
        epochs = info.data.get("epochs")
        if v is not None and isinstance(epochs, int) and not 0 <= v < epochs:
            raise ValueError(f"got {v}; accepted: 0 to {epochs - 1} (fewer than the {epochs} epochs)")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"got {v}; accepted: a learning rate above 0 (at most 100)")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if not 0 <= v <= 2**32 - 1:
            raise ValueError(f"got {v}; accepted: 0 to {2**32 - 1}")
        return v

    @field_validator("val_fraction")
    @classmethod
    def _val(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"got {v}; accepted: above 0 and below 1")
        return v

    @property
    def augmentation(self) -> str:
        """As a study's ``auto``: ``crop-flip`` for natural images (``cifar10:``), else none."""
        return "crop-flip" if self.data.startswith("cifar10:") else "none"

    def load_data(self) -> Dataset:
        """The supernet's dataset (its fixed splits, resized to ``input_size``); ``NasError`` when unreadable."""
        from objectives import DataError, load_dataset

        try:
            data = load_dataset(self.data, seed=self.seed, val_fraction=self.val_fraction)
        except DataError as e:
            raise NasError(str(e), field="data", argument=False) from None
        return resized(data, self.input_size)

    def train_config(self, threads: int | None = 1) -> Any:
        from objectives import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           threads=threads, augment=self.augmentation, device="cpu")


def make_supernet_spec(**fields: Any) -> SupernetSpec:
    """Validate fields into a :class:`SupernetSpec`; one-line :class:`NasError` otherwise."""
    try:
        return SupernetSpec(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise validation_error(e.errors()[0], "supernet") from None


@dataclass
class SupernetRecord:
    """A stored supernet's record (``record.json``), read back."""

    spec: SupernetSpec
    config: dict[str, Any]
    data: dict[str, Any]
    params: int
    state_bytes: int
    status: str
    epochs_done: int
    curve: list[dict[str, Any]]
    seconds: float
    created_at: float
    updated_at: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["input_shape"])  # type: ignore[return-value]

    @property
    def trained(self) -> bool:
        return self.status == "trained"

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "spec": self.spec.model_dump(), "config": self.config, "data": self.data,
                "params": self.params, "state_bytes": self.state_bytes, "status": self.status,
                "epochs_done": self.epochs_done, "curve": self.curve, "seconds": self.seconds,
                "created_at": self.created_at, "updated_at": self.updated_at}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes, name: str) -> SupernetRecord:
        try:
            doc = json.loads(blob)
            # a record written before dense-first training (no such key) was trained without it
            return cls(spec=SupernetSpec(**{"dense_epochs": 0, **doc["spec"]}), config=doc["config"], data=doc["data"],
                       params=int(doc["params"]), state_bytes=int(doc["state_bytes"]), status=str(doc["status"]),
                       epochs_done=int(doc["epochs_done"]), curve=list(doc["curve"]), seconds=float(doc["seconds"]),
                       created_at=float(doc["created_at"]), updated_at=float(doc["updated_at"]))
        except (ValueError, KeyError, TypeError, ValidationError):
            raise NasError(f"supernet {name!r}: its stored record is damaged or of another lightnas version; "
                           "accepted: a supernet 'nas supernet train' wrote") from None


def list_supernets(store: Store) -> list[str]:
    """Names of the supernets stored in the database, sorted."""
    return sorted(k[len(SUPERNET_PREFIX):-len("/record.json")] for k in store.artifact_keys(SUPERNET_PREFIX)
                  if k.endswith("/record.json"))


def get_supernet(store: Store, name: str) -> SupernetRecord | None:
    """The record of supernet ``name``, None when there is none."""
    blob = store.get_artifact(_key(name, "record.json"))
    return None if blob is None else SupernetRecord.from_bytes(blob, name)


def require_supernet(store: Store | None, name: str, *, trained: bool = False) -> SupernetRecord:
    """The record of supernet ``name``; one line naming the stored ones when there is none (or,
    with ``trained``, when it has not finished training)."""
    record = get_supernet(store, name) if store is not None else None
    if record is None:
        names = list_supernets(store) if store is not None else []
        accepted = ", ".join(names) if names else "none stored yet (train one: 'nas supernet train NAME ...')"
        raise NasError(f"supernet {name!r} is not in this database; accepted: {accepted}")
    if trained and not record.trained:
        raise NasError(f"supernet {name!r} has trained {record.epochs_done} of {record.spec.epochs} epochs; "
                       f"finish it first ('nas supernet train {name} ...' with its settings resumes it)")
    return record


def _load_blob(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _save_blob(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_supernet(store: Store, name: str) -> tuple[SuperNet, SupernetRecord]:
    """The trained supernet ``name`` with its weights (CPU, eval mode), and its record.

    Raises:
        NasError: no such supernet, not trained yet, or its weights missing.
    """
    record = require_supernet(store, name, trained=True)
    blob = store.get_artifact(_key(name, "weights.pt"))
    if blob is None:
        raise NasError(f"supernet {name!r}: its weights are missing from the database; train it again under "
                       "another name")
    net = SuperNet.from_config(record.config)
    net.load_state_dict(_load_blob(blob))
    return net.eval(), record


def _differences(stored: SupernetSpec, given: SupernetSpec) -> list[str]:
    a, b = stored.model_dump(), given.model_dump()
    return [f"{k} {json.dumps(a[k])} (given {json.dumps(b[k])})" for k in a if a[k] != b[k]]


def prepare_supernet(spec: SupernetSpec, store: Store | None) -> tuple[SuperNet, Dataset, SupernetRecord | None]:
    """Everything :func:`train_stored_supernet` checks, writing nothing: the data read, the space
    and its supernet made, and a stored supernet of the same name holding the same settings.

    Raises:
        NasError: unreadable data, bad space options, a space a supernet cannot hold, a stored
            supernet of that name with other settings.
    """
    existing = get_supernet(store, spec.name) if store is not None else None
    if existing is not None and spec.dense_epochs is None:  # not given: the stored supernet's (resumes it)
        spec = spec.model_copy(update={"dense_epochs": existing.spec.dense_epochs})
    if existing is not None and existing.spec != spec:
        diff = "; ".join(_differences(existing.spec, spec))
        raise NasError(f"supernet {spec.name!r} exists with other settings: stored {diff}; accepted: the stored "
                       "settings (to resume it) or another name")
    data = spec.load_data()
    try:
        space = get_space(spec.space, input_shape=data.input_shape, **spec.space_options)
        with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed; the caller's RNG is kept
            torch.manual_seed(spec.seed)
            net = SuperNet.from_space(space, data.input_shape, data.num_classes)
    except (SpaceError, SpecError) as e:
        raise NasError(str(e), field="space_options", argument=False) from None
    if spec.dense_epochs and not net.has_factors_of_dense():
        raise NasError(f"got {spec.dense_epochs}; accepted: 0 or unset, since no layer of this space is both dense "
                       "and low-rank (its rank_ratios need 1.0 and a ratio below 1)", field="dense_epochs",
                       argument=False)
    return net, data, existing


def dense_epochs_used(record: SupernetRecord) -> int:
    """The epochs supernet ``record`` trains (trained) dense first, as ``objectives.train_supernet`` resolves its
    setting for its structure (unset: 30 % of its epochs; 0 without layers both dense and low-rank)."""
    from objectives import dense_phase

    with torch.device("meta"):
        net = SuperNet.from_config(record.config)
    return dense_phase(net, record.spec.epochs, record.spec.dense_epochs)  # what train_supernet runs


def _epoch_doc(record: SupernetEpoch, before: float) -> dict[str, Any]:
    def num(v: float | None) -> float | None:
        return None if v is None or not math.isfinite(v) else round(float(v), 6)

    return {"epoch": record.epoch, "loss": num(record.loss), "student_loss": num(record.student_loss),
            "largest": num(record.largest), "smallest": num(record.smallest), "lr": num(record.lr),
            "seconds": round(before + record.seconds, 3)}


def train_stored_supernet(spec: SupernetSpec, store: Store, *, prepared: tuple | None = None, threads: int | None = 1,
                          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> SupernetRecord:
    """Train supernet ``spec.name`` and store it, epoch by epoch; a stored one with the same
    settings resumes at its last stored epoch (a trained one is returned as it is).

    ``prepared``: what :func:`prepare_supernet` returned for ``spec`` (else it is called here).
    ``on_epoch(curve entry)`` after each epoch is stored; exceptions (Ctrl-C) propagate, and what
    was stored stays.

    Raises:
        NasError: as :func:`prepare_supernet`.
    """
    from objectives import train_supernet

    net, data, existing = prepared if prepared is not None else prepare_supernet(spec, store)
    if existing is not None and existing.trained:
        return existing
    if existing is not None:
        spec = existing.spec  # equal to the given one, but for an unset dense_epochs (the stored one holds)
    now = time.time()
    if existing is None:
        record = SupernetRecord(spec=spec, config=net.config(), data={
            "input_shape": list(data.input_shape), "num_classes": int(data.num_classes), "mean": list(data.mean),
            "std": list(data.std)}, params=sum(p.numel() for p in net.parameters()), state_bytes=net.state_bytes(),
            status="training", epochs_done=0, curve=[], seconds=0.0, created_at=now, updated_at=now)
        store.put_artifacts({_key(spec.name, "record.json"): record.to_bytes()})
    else:
        record = existing
    resume = None
    if record.epochs_done > 0:
        blob = store.get_artifact(_key(spec.name, "checkpoint.pt"))
        if blob is None:
            raise NasError(f"supernet {spec.name!r}: its checkpoint of epoch {record.epochs_done} is missing; "
                           "train it again under another name")
        resume = _load_blob(blob)
    before = record.seconds

    def stored(epoch: int, rec: SupernetEpoch) -> None:
        entry = _epoch_doc(rec, before)
        record.curve = [c for c in record.curve if c["epoch"] < epoch] + [entry]
        record.epochs_done, record.seconds, record.updated_at = epoch, entry["seconds"], time.time()
        checkpoint = rec.checkpoint()
        if epoch >= spec.epochs:
            record.status = "trained"
            items: dict[str, bytes | None] = {_key(spec.name, "weights.pt"): _save_blob(checkpoint["supernet"]),
                                              _key(spec.name, "checkpoint.pt"): None}
        else:
            items = {_key(spec.name, "checkpoint.pt"): _save_blob(checkpoint)}
        items[_key(spec.name, "record.json")] = record.to_bytes()
        store.put_artifacts(items)
        if on_epoch is not None:
            on_epoch(entry)

    train_supernet(net, data, spec.train_config(threads), sandwich=spec.sandwich,
                   inplace_distill=spec.inplace_distill, bn_batches=spec.bn_batches, on_epoch=stored, resume=resume,
                   dense_epochs=spec.dense_epochs)
    return record


# ------------------------------------------------------------------------ studies on a supernet

def _fixed(record: SupernetRecord) -> dict[str, Any]:
    """Study fields a supernet fixes: its space (as fitted), data and the split of its data."""
    return {"space": record.spec.space, "space_options": record.config["options"], "data": record.spec.data,
            "input_size": record.spec.input_size, "seed": record.spec.seed,
            "val_fraction": record.spec.val_fraction}


def subspace_problem(record: SupernetRecord, options: dict[str, Any]) -> str | None:
    """Why space options ``options`` are not a sub-space of supernet ``record``'s space (None when
    they are): a sub-space has the same options but for a depth range within the supernet's and
    list choices among the supernet's, so every architecture it holds is a subnet."""
    full = record.config["options"]
    try:
        sub = dataclasses.asdict(get_space(record.spec.space, input_shape=record.input_shape, **options).options)
    except SpaceError as e:
        return str(e)
    for k, v in full.items():
        got: Any = sub.get(k)
        if k == "min_depth":
            ok = got >= v
        elif k == "max_depth":
            ok = got <= v
        elif isinstance(v, (list, tuple)):
            ok = set(got) <= set(v)
        else:
            ok = got == v
        if not ok:
            return f"{k} {json.dumps(list(got) if isinstance(got, tuple) else got)} is not within {json.dumps(v)}"
    return None


def supernet_study_fields(record: SupernetRecord, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a study on supernet ``record``: its space, options, data, input size, seed and
    validation share filled in (the study validates on the supernet's held-out split). Space
    fitting stays as given: on (the default), creating the study narrows the options to a sub-space
    of the supernet's when too little of it lies within the budget.

    Raises:
        NasError: a field given with another value than the supernet's (``space`` and
            ``space_options`` may not be given at all).
    """
    for f in ("space", "space_options"):
        if fields.get(f) is not None:
            flag = "--space" if f == "space" else "--option"
            raise NasError(f"{flag} does not go with --supernet: a study on supernet {record.name!r} searches its "
                           f"space ({record.spec.space} {json.dumps(record.spec.space_options)}); leave {flag} out")
    fixed = _fixed(record)
    for f, v in fixed.items():
        if fields.get(f) is not None and fields[f] != v:
            raise NasError(f"got {fields[f]!r}, supernet {record.name!r} was trained with {v!r}; accepted: its "
                           f"value (or leave {f} out)", field=f, argument=False)
    return {**fields, **fixed, "supernet": record.name}


def check_supernet_study(study_spec: Any, store: Store | None, input_shape: Any, num_classes: int) -> SupernetRecord:
    """The trained supernet of study ``study_spec`` whose space, data, input shape and classes the
    study's are (its space options: the supernet's or a sub-space of them, :func:`subspace_problem`);
    one line otherwise."""
    record = require_supernet(store, study_spec.supernet, trained=True)
    if tuple(input_shape) != record.input_shape or int(num_classes) != int(record.config["num_classes"]):
        raise NasError(f"supernet {record.name!r} takes {'x'.join(map(str, record.input_shape))} inputs and "
                       f"{record.config['num_classes']} classes; the study's data give "
                       f"{'x'.join(map(str, input_shape))} and {num_classes}; accepted: the supernet's data "
                       f"({record.spec.data}" + (f", input size {record.spec.input_size}" if record.spec.input_size
                                                 else "") + ")")
    wrong = [f for f, v in _fixed(record).items() if f != "space_options" and getattr(study_spec, f) != v]
    if not wrong and study_spec.space_options != record.config["options"]:
        problem = subspace_problem(record, study_spec.space_options)
        if problem:
            raise NasError(f"got {json.dumps(study_spec.space_options, sort_keys=True)}, not a sub-space of supernet "
                           f"{record.name!r}'s space ({problem}); accepted: its options "
                           f"{json.dumps(record.config['options'], sort_keys=True)} or a sub-space of them (a "
                           "lower max_depth, fewer list choices)", field="space_options", argument=False)
    if wrong:
        f = wrong[0]
        raise NasError(f"got {getattr(study_spec, f)!r}, supernet {record.name!r} was trained with "
                       f"{_fixed(record)[f]!r}; accepted: the supernet's", field=f, argument=False)
    return record


# ------------------------------------------------------------------ ranking check (issue 30, item 4)

#: Version of a stored check's layout (``format`` in check.json).
CHECK_FORMAT = 1
#: Accepted ``n`` of a ranking check: 3 subnets at least (a ranking), at most this many trainings.
MAX_CHECK_SUBNETS = 500


def get_supernet_check(store: Store, name: str) -> dict[str, Any] | None:
    """The last ranking check stored with supernet ``name`` (``supernet/NAME/check.json``), None
    when it has none (or it does not read)."""
    blob = store.get_artifact(_key(name, "check.json"))
    if blob is None:
        return None
    try:
        doc = json.loads(blob)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_supernet(store: Store, name: str, *, n: int, epochs: int, seed: int | None = None,
                   threads: int | None = 1, pool: int | None = None,
                   on_subnet: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure how supernet ``name`` ranks its subnets against stand-alone training, and store it.

    Draws ``n`` subnets spanning the supernet space's parameter range
    (:func:`objectives.spanning_subnets` of ``pool`` distinct random ones, seeded by ``seed``,
    the supernet's by default), evaluates each with the supernet's weights (exact slices,
    BatchNorm recalibrated, validated) and trains each stand-alone from scratch with the study
    training loop (:func:`objectives.train_spec`) for ``epochs`` epochs on the supernet's data,
    batch size and learning rate, under ``seed``; a stand-alone training that diverges counts as
    accuracy 0. Kendall tau and Spearman rho between the two accuracies, with every pair, are
    stored as ``supernet/NAME/check.json`` in one write at the end (a check stopped half-way
    stores nothing; the previous check, if any, stays) and returned. ``on_subnet(pair)`` after
    each subnet.

    Raises:
        NasError: unknown or untrained supernet, ``n`` outside 3..500 or above the distinct
            subnets found, ``epochs`` outside 1..10000, unreadable data.
    """
    from objectives import (
        TrainConfig,
        TrainingError,
        estimate_cost,
        evaluate_subnet,
        num_threads,
        rank_agreement,
        sample_within,
        spanning_subnets,
        train_spec,
    )

    if isinstance(n, bool) or not isinstance(n, int) or not 3 <= n <= MAX_CHECK_SUBNETS:
        raise NasError(f"got {n}; accepted: 3 to {MAX_CHECK_SUBNETS} subnets (each is trained stand-alone)", field="n")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
        raise NasError(f"got {epochs}; accepted: 1 to 10000 stand-alone epochs per subnet", field="epochs")
    if seed is not None and not 0 <= seed <= 2**32 - 1:
        raise NasError(f"got {seed}; accepted: 0 to {2**32 - 1}", field="seed")
    net, record = load_supernet(store, name)
    spec = record.spec
    seed = spec.seed if seed is None else seed
    data = spec.load_data()
    space = get_space(spec.space, input_shape=data.input_shape, **record.config["options"])
    drawn = sample_within(space, None, data.num_classes, pool or max(10 * n, 200), seed=seed, tries_per_arch=20)
    drawn = [a for a in drawn if net.contains(a)]
    if len(drawn) < n:
        raise NasError(f"--n: got {n}; supernet {name!r} holds only {len(drawn)} distinct subnets (of its space "
                       f"{spec.space}); accepted: 3 to {len(drawn)}" if len(drawn) >= 3 else
                       f"supernet {name!r} holds {len(drawn)} distinct subnets; a ranking needs at least 3")
    subnets = spanning_subnets(drawn, data.input_shape, data.num_classes, n)
    config = TrainConfig(epochs=epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed, threads=threads,
                         augment=spec.augmentation, device="cpu")
    t0 = time.time()
    pairs: list[dict[str, Any]] = []
    for arch in subnets:
        cost = estimate_cost(arch, data.input_shape, data.num_classes)
        t = time.perf_counter()
        with num_threads(threads):
            inherited = evaluate_subnet(net, arch, data, bn_batches=spec.bn_batches)
        eval_s = time.perf_counter() - t
        t = time.perf_counter()
        note = None
        try:
            alone = train_spec(arch, data, config, keep_state=False).val_accuracy
        except TrainingError as e:  # a diverged network ranks last, as in a search
            alone, note = 0.0, f"diverged: {e}"
        pair = {"spec_hash": arch.hash, "params": int(cost["params"]), "flops": int(cost["flops"]),
                "supernet": round(float(inherited), 6), "standalone": round(float(alone), 6),
                "eval_seconds": round(eval_s, 3), "train_seconds": round(time.perf_counter() - t, 3),
                "arch": arch.to_dict()}
        if note:
            pair["note"] = note
        pairs.append(pair)
        if on_subnet is not None:
            on_subnet(pair)
    tau, rho = rank_agreement([p["supernet"] for p in pairs], [p["standalone"] for p in pairs])
    doc = {"format": CHECK_FORMAT, "supernet": name, "n": len(pairs), "epochs": epochs, "seed": seed,
           "kendall_tau": None if tau is None else round(tau, 6),
           "spearman_rho": None if rho is None else round(rho, 6),
           "fidelity": {"data": spec.data, "input_size": spec.input_size, "epochs": epochs,
                        "batch_size": spec.batch_size, "lr": spec.lr, "augment": spec.augmentation,
                        "split": f"validation ({spec.val_fraction:g} of the data, the supernet's)"},
           "supernet_epochs": record.epochs_done, "bn_batches": spec.bn_batches,
           "pairs": pairs, "seconds": round(time.time() - t0, 3), "when": time.time()}
    store.put_artifacts({_key(name, "check.json"): json.dumps(doc, sort_keys=True).encode()})
    return doc


def supernet_doc(store: Store, record: SupernetRecord, *, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """What ``nas supernet show --format json`` and ``GET /supernets/{name}`` say of a supernet:
    settings, structure, size, curve, status, and its last ranking check (``check``, None without one)."""
    if sizes is None:
        sizes = store.artifact_keys(f"{SUPERNET_PREFIX}{record.name}/")
    return {"name": record.name, "status": record.status, "epochs_done": record.epochs_done,
            "epochs": record.spec.epochs, "space": record.spec.space, "space_options": record.config["options"],
            "data": record.spec.data, "input_shape": record.config["input_shape"],
            "num_classes": record.config["num_classes"], "settings": record.spec.model_dump(),
            "dense_epochs": dense_epochs_used(record), "params": record.params, "state_bytes": record.state_bytes,
            "stored_weight_bytes": sizes.get(_key(record.name, "weights.pt")),
            "seconds": record.seconds, "curve": record.curve,
            "accuracy_source": f"supernet {record.name} (inherited weights, BN recalibrated; not stand-alone)",
            "check": get_supernet_check(store, record.name)}


def supernet_summary(store: Store, record: SupernetRecord) -> dict[str, Any]:
    """One row of ``nas supernet list`` and ``GET /supernets``: its last ranking check's tau and rho included."""
    last = record.curve[-1] if record.curve else {}
    check = get_supernet_check(store, record.name) or {}
    return {"name": record.name, "space": record.spec.space, "data": record.spec.data,
            "input": "x".join(map(str, record.input_shape)), "status": record.status,
            "epochs": f"{record.epochs_done}/{record.spec.epochs}", "params": record.params,
            "largest": last.get("largest"), "smallest": last.get("smallest"),
            "kendall_tau": check.get("kendall_tau"), "spearman_rho": check.get("spearman_rho"),
            "check_n": check.get("n"), "check_epochs": check.get("epochs")}
