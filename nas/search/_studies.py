"""Stored studies: look one up, list them, read what was stored at creation, delete one.

A study's spec was validated when it was created; a row that no longer validates (written by
another version of lightnas, or edited by hand) is an :class:`nas.UnreadableStudy`: it is listed
with the reason and can be deleted, so one bad row never takes a listing (or the service) down.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from pydantic import ValidationError

from storage import Store

from .._errors import StudyExists, UnknownStudy, UnreadableStudy
from ._spec import StudySpec, one_line_error

__all__ = ["DataShape", "StudyEntry", "check_name_free", "check_study_exists", "delete_study", "get_study_spec",
           "list_studies", "parse_stored_spec", "study_data", "study_info"]


def check_name_free(name: str, store: Store) -> None:
    """Raises NasError when a study of that name exists (lightnas's or a plain Optuna one)."""
    if store.get_study(name) is not None or name in optuna.get_all_study_names(store.optuna):
        raise StudyExists(f"study {name!r} already exists; choose another name or "
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


def check_study_exists(name: str, store: Store) -> None:
    """Raises :class:`UnknownStudy` (one line listing the studies there) unless ``name`` exists."""
    if store.get_study(name) is None:
        names = [r.name for r in store.list_studies()]
        accepted = f"; studies here: {', '.join(names)}" if names else "; this database has no studies"
        raise UnknownStudy(f"unknown study {name!r}{accepted}")


def parse_stored_spec(name: str, spec_json: str, profiles: Mapping[str, str] | None = None) -> StudySpec:
    """A stored spec, validated; raises :class:`UnreadableStudy` naming why it no longer is.
    ``profiles``: the device profiles of its database (``Store.device_profiles()``), which its
    ``cost_device`` resolves with first (``StudySpec.cost_profile``)."""
    try:
        return StudySpec.model_validate_json(spec_json, context={"profiles": dict(profiles or {})})
    except ValidationError as e:
        reason = one_line_error(e.errors()[0])
    except ValueError as e:  # not JSON at all
        reason = str(e).splitlines()[0]
    raise UnreadableStudy(f"study {name!r}: its stored spec cannot be read ({reason}); it can only be listed "
                          f"and deleted ('nas study delete {name} --yes')")


def get_study_spec(name: str, store: Store) -> StudySpec:
    """The study's spec, with the device profiles of ``store`` (its ``cost_device`` resolves with
    them first: ``StudySpec.cost_profile``). Raises :class:`UnknownStudy` or :class:`UnreadableStudy`
    (both NasError)."""
    row = store.get_study(name)
    if row is None:
        check_study_exists(name, store)
    assert row is not None
    return parse_stored_spec(name, row.spec_json, store.device_profiles())


@dataclass(frozen=True)
class StudyEntry:
    """A study as listed: its spec, or, when the stored spec no longer validates, why (``unreadable``)."""

    name: str
    target: int
    study_spec: StudySpec | None
    unreadable: str | None = None


def list_studies(store: Store) -> list[StudyEntry]:
    """Every lightnas study in the database, oldest first; one whose stored spec no longer
    validates is listed with the reason instead of failing the whole list."""
    out = []
    profiles = store.device_profiles()
    for r in store.list_studies():
        try:
            out.append(StudyEntry(r.name, r.target_trials, parse_stored_spec(r.name, r.spec_json, profiles)))
        except UnreadableStudy as e:
            out.append(StudyEntry(r.name, r.target_trials, None, str(e)))
    return out


def delete_study(name: str, store: Store) -> None:
    """Delete the study (its Optuna trials, its record, its jobs); works on an unreadable one too.

    Safe against concurrent deletes (several API clients, the CLI): under the study's lock (the
    workers' slot lock), and a part deleted by someone else meanwhile is skipped; of several
    deletes of one study exactly one succeeds, the others raise :class:`UnknownStudy`.

    Raises:
        UnknownStudy: no such study (or another client deleted it first).
    """
    with store.lock(f"study:{name}"):
        check_study_exists(name, store)
        with contextlib.suppress(KeyError):  # its Optuna study deleted meanwhile (plain Optuna code, say)
            optuna.delete_study(study_name=name, storage=store.optuna)
        if not store.delete_study(name):
            check_study_exists(name, store)  # deleted by someone else between the check and here
            raise UnknownStudy(f"unknown study {name!r}: it was deleted meanwhile")


@dataclass(frozen=True)
class DataShape:
    """What a study's networks are built for: input shape (as trained, after any resizing),
    class count, and the per-channel normalisation of the training split (for export)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def study_data(study_spec: StudySpec, store: Store) -> DataShape:
    """The data shape stored when the study was created; for a study created before that was
    stored, read off the dataset (a read: nothing is written).

    Raises:
        objectives.DataError: an old study whose data can no longer be read here.
    """
    stored = study_info(study_spec.name, store).get("data")
    if stored:
        return DataShape(tuple(stored["input_shape"]), int(stored["num_classes"]),  # type: ignore[arg-type]
                         tuple(stored.get("mean", ())), tuple(stored.get("std", ())))
    data = study_spec.load_data()
    return DataShape(data.input_shape, int(data.num_classes), tuple(data.mean), tuple(data.std))
