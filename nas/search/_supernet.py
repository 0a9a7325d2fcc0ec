"""A named, stored, resumable weight-shared supernet (issue 30): its settings, training and record.

A supernet lives in the study database as three artifacts under one name (no table of its own):

- ``supernet/NAME/record.json``: the settings (:class:`SupernetSpec`), the structure
  (``SuperNet.config()``: space, fitted options, input shape, classes), the data's shape and
  normalisation, its size, its per-epoch curve, its status (``training`` until the last epoch is
  stored, then ``trained``) and training seconds;
- ``supernet/NAME/checkpoint.pt``: the last finished epoch (supernet and optimiser state) while
  training; dropped once trained;
- ``supernet/NAME/weights.pt``: the trained supernet's ``state_dict``.

Each epoch's record and checkpoint are written in one transaction (``Store.put_artifacts``), so
after Ctrl-C or ``kill -9`` the database holds the last finished epoch, and training the same name
again with the same settings goes on from it, with the same steps as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

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

__all__ = ["SUPERNET_PREFIX", "SupernetRecord", "SupernetSpec", "check_supernet_study", "get_supernet",
           "list_supernets", "load_supernet", "make_supernet_spec", "prepare_supernet", "require_supernet",
           "supernet_study_fields", "train_stored_supernet"]

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
            return cls(spec=SupernetSpec(**doc["spec"]), config=doc["config"], data=doc["data"],
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
    return net, data, existing


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
                   inplace_distill=spec.inplace_distill, bn_batches=spec.bn_batches, on_epoch=stored, resume=resume)
    return record


# ------------------------------------------------------------------------ studies on a supernet

def _fixed(record: SupernetRecord) -> dict[str, Any]:
    """Study fields a supernet fixes: its space (as fitted), data and the split of its data."""
    return {"space": record.spec.space, "space_options": record.config["options"], "data": record.spec.data,
            "input_size": record.spec.input_size, "seed": record.spec.seed,
            "val_fraction": record.spec.val_fraction}


def supernet_study_fields(record: SupernetRecord, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a study on supernet ``record``: its space, options, data, input size, seed and
    validation share filled in (the study validates on the supernet's held-out split), space
    fitting off (the space is the supernet's).

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
    return {**fields, **fixed, "supernet": record.name, "fit_space": False}


def check_supernet_study(study_spec: Any, store: Store | None, input_shape: Any, num_classes: int) -> SupernetRecord:
    """The trained supernet of study ``study_spec`` whose space, data, input shape and classes the
    study's are; one line otherwise."""
    record = require_supernet(store, study_spec.supernet, trained=True)
    if tuple(input_shape) != record.input_shape or int(num_classes) != int(record.config["num_classes"]):
        raise NasError(f"supernet {record.name!r} takes {'x'.join(map(str, record.input_shape))} inputs and "
                       f"{record.config['num_classes']} classes; the study's data give "
                       f"{'x'.join(map(str, input_shape))} and {num_classes}; accepted: the supernet's data "
                       f"({record.spec.data}" + (f", input size {record.spec.input_size}" if record.spec.input_size
                                                 else "") + ")")
    wrong = [f for f, v in _fixed(record).items() if getattr(study_spec, f) != v]
    if wrong:
        f = wrong[0]
        raise NasError(f"got {getattr(study_spec, f)!r}, supernet {record.name!r} was trained with "
                       f"{_fixed(record)[f]!r}; accepted: the supernet's", field=f, argument=False)
    return record
