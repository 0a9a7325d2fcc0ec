"""What every route shares: the service's state (settings, store, caches), path parameters,
authentication (bearer tokens, compared in constant time), and JSON-safe trial views."""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from fastapi import Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.trial import FrozenTrial

from storage import Store

from .._errors import NasError, UnreadableStudy
from .._lru import LRUCache
from ..search import DataShape, StudySpec, get_study_spec, parse_stored_spec, record_of, study_data, study_info
from ..workers import iso_utc, progress
from ._errors import ApiError
from ._models import StudyInfo
from ._settings import ApiSettings

__all__ = ["EXPORT_CACHE", "FORMATS", "MAX_INT", "READ", "STATES", "WRITE", "Credentials", "Format",
           "Nas", "Service", "StudyName", "TrialNumber", "clean", "iso_local", "require_read", "require_write",
           "service_of", "trial_row"]

EXPORT_CACHE = 64  # exported files kept in memory (kilobytes to a few megabytes each)
SHAPE_CACHE = 1024  # studies whose data shape is kept in memory (a few numbers each)
MAX_INT = 2**31 - 1  # path and query integers: beyond this no trial, job or page exists (and SQL ints overflow)
STATES = ("complete", "pruned", "fail", "running", "waiting")
FORMATS = {"json": ("application/json", "json"), "onnx": ("application/octet-stream", "onnx"),
           "state_dict": ("application/octet-stream", "pt")}


def clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    return v


def iso_local(t: Any) -> str | None:
    """An Optuna time (naive local time) as ISO 8601 with its offset."""
    return None if t is None else t.astimezone().isoformat()


def trial_row(study_spec: StudySpec, t: FrozenTrial) -> dict[str, Any]:
    """A trial as a page of ``GET /studies/{name}/trials`` lists it."""
    r = record_of(t)
    values = dict(zip(study_spec.objectives, t.values, strict=True)) if t.values is not None else None
    return clean({  # type: ignore[no-any-return]
        "number": t.number, "state": t.state.name.lower(), "status": r.status, "spec_hash": r.spec_hash,
        "values": values, "accuracy": r.val_accuracy,
        "cost": {k: r.cost.get(k) for k in ("hw_cost", "flops", "params", "peak_activation_bytes", "latency_ms")
                 if k in r.cost},
        "epochs_run": r.epochs_run, "fail_reason": r.fail_reason,
        "datetime_start": iso_local(t.datetime_start), "datetime_complete": iso_local(t.datetime_complete),
    })


#: An exported file as cached: body, media type, headers.
Export = tuple[bytes, str, dict[str, str]]


@dataclass
class Service:
    settings: ApiSettings
    store: Store
    #: Data shapes by study identity (name, creation time; :meth:`identity`): a study deleted and created
    #: again under its name (by this server, the CLI or another server) is a new entry. Least recently
    #: used dropped past SHAPE_CACHE.
    shapes: LRUCache[tuple[str, Any], DataShape] = field(default_factory=lambda: LRUCache(limit=SHAPE_CACHE))
    #: Exported files by (study identity, what, id, spec hash, fidelity, format), least recently used
    #: dropped past EXPORT_CACHE: a trial's stored weights never change, so its files are built (and
    #: checked) once; a study created again under its name has other trials, hence the identity.
    exports: LRUCache[tuple[Any, ...], Export] = field(default_factory=lambda: LRUCache(limit=EXPORT_CACHE))

    def cached_export(self, key: tuple[Any, ...], build: Callable[[], Response]) -> Response:
        """The file of ``key`` from memory, or built by ``build`` (outside the lock: two requests for
        one new file may both build it; the cache keeps one)."""
        hit = self.exports.get(key)
        if hit is None:
            r = build()
            hit = (bytes(r.body), str(r.media_type), {"Content-Disposition": r.headers["content-disposition"]})
            self.exports.put(key, hit)
        return Response(hit[0], media_type=hit[1], headers=hit[2])

    def forget(self, name: str) -> None:
        """Drop what is cached of every study named ``name`` (it was deleted): memory back at once,
        where the identity keys alone would leave it until evicted."""
        self.shapes.drop_where(lambda k: k[0] == name)
        self.exports.drop_where(lambda k: isinstance(k[0], tuple) and k[0][0] == name)

    def identity(self, name: str) -> tuple[str, Any]:
        """What a study cannot share with another of the same name: its name and creation time
        (None for a study that is gone)."""
        row = self.store.get_study(name)
        return (name, row.created_at if row is not None else None)

    def study_spec(self, name: str) -> StudySpec:
        """The study's spec: 404 for an unknown study, 409 for one whose stored spec no longer reads."""
        try:
            return get_study_spec(name, self.store)
        except UnreadableStudy as e:
            raise ApiError(409, str(e).replace(f"('nas study delete {name} --yes')", f"(DELETE /studies/{name})")
                           ) from None
        except NasError:
            raise ApiError(404, f"unknown study {name!r}; GET /studies lists them") from None

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.store.optuna)

    def trial(self, name: str, number: int) -> FrozenTrial:
        study = self.study(name)
        storage = study._storage
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            n = len(storage.get_all_trials(study._study_id, deepcopy=False))
            have = f"its trials are numbered 0..{n - 1}" if n else "it has no trials yet"
            raise ApiError(404, f"study {name!r} has no trial {number}; {have}") from None
        return storage.get_trial(trial_id)

    def shape(self, study_spec: StudySpec) -> DataShape:
        """The study's data shape (stored at creation; read once for an older study)."""
        from objectives import DataError

        key = self.identity(study_spec.name)
        shape = self.shapes.get(key)
        if shape is None:
            try:
                shape = self.shapes.put(key, study_data(study_spec, self.store))
            except DataError as e:
                raise ApiError(409, f"data: {e}") from None
        return shape

    def info(self, name: str, *, with_front: bool = True) -> StudyInfo:
        """A study's view; one whose stored spec no longer reads is shown with ``unreadable`` (why)
        and its counts, so that one bad row never takes the listing down."""
        row = self.store.get_study(name)
        if row is None:
            raise ApiError(404, f"unknown study {name!r}; GET /studies lists them")
        unreadable = None
        try:
            spec_doc: dict[str, Any] = json.loads(parse_stored_spec(name, row.spec_json,
                                                                     self.store.device_profiles()).to_json())
        except UnreadableStudy as e:
            unreadable = str(e).replace(f"('nas study delete {name} --yes')", f"(DELETE /studies/{name})")
            spec_doc = {}
        raw = self.store.study_counts(name)
        finished, rejected = raw.pop("COUNTED"), raw.pop("REJECTED")
        counts = {k.lower(): v for k, v in raw.items()}
        front = progress(name, self.store, row.target_trials).pareto if with_front and unreadable is None else None
        jobs: dict[str, int] = {}
        for j in self.store.list_jobs(name):
            jobs[j.state] = jobs.get(j.state, 0) + 1
        extra = study_info(name, self.store)
        return StudyInfo(name=name, spec=spec_doc, target=row.target_trials, finished=finished,
                         rejected=rejected, counts=counts, pareto_size=front, jobs=jobs,
                         created_at=iso_utc(row.created_at), feasibility=extra.get("feasibility"),
                         fit=extra.get("fit"), unreadable=unreadable)

    def check_data(self, source: str) -> str:
        """The data source with its path resolved; file sources must be absolute paths under a data
        root (clients must not make the server, or its workers, read any other path)."""
        from objectives import DataError, check_source

        kind, sep, arg = source.partition(":")
        if kind.strip().lower() == "digits" and not sep:
            return source
        roots = self.settings.data_roots
        if not roots:
            raise ApiError(422, "data: this server accepts only 'digits' (start it with --data-root DIR to allow "
                                "idx:, cifar10: and npz: sources under DIR)", "data")
        accepted = (f"accepted: digits, idx:DIR, cifar10:DIR, npz:FILE with an absolute path under "
                    f"{', '.join(str(r) for r in roots)}")
        raw = arg.strip()
        if not raw.startswith("/"):
            raise ApiError(422, f"data: {raw[:200]!r} is not an absolute path; {accepted}", "data")
        try:
            check_source(source)  # NUL bytes, over-long names: one line, before any file is touched
            path = Path(raw).resolve()  # symlinks and '..' followed before the check, and stored so
        except RuntimeError:  # Python 3.11's resolve() on a loop of symbolic links (3.13: OSError)
            raise ApiError(422, f"data: {raw[:200]!r} is a loop of symbolic links; {accepted}", "data") from None
        except (DataError, OSError, ValueError) as e:
            raise ApiError(422, f"data: {e}", "data") from None
        if not any(path == r.resolve() or path.is_relative_to(r.resolve()) for r in roots):
            raise ApiError(422, f"data: {raw!r} is not under a data root of this server; {accepted}", "data")
        return f"{kind.strip()}:{path}"


def service_of(request: Request) -> Service:
    return request.app.state.nas  # type: ignore[no-any-return]


Nas = Annotated[Service, Depends(service_of)]
StudyName = Annotated[str, PathParam(description="study name", max_length=255)]
TrialNumber = Annotated[int, PathParam(ge=0, le=MAX_INT, description="trial number")]
_bearer = HTTPBearer(auto_error=False, description="a token of NAS_API_TOKEN (writes) or NAS_API_READ_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Format = Annotated[Literal["json", "onnx", "state_dict"],
                   Query(description="json (spec and cost), onnx, state_dict (torch.save)")]


def matches(token: str, tokens: tuple[str, ...]) -> bool:
    found = False
    for t in tokens:  # every token compared, in constant time: timing tells nothing
        found |= hmac.compare_digest(token.encode(), t.encode())
    return found


def role_of(settings: ApiSettings, creds: HTTPAuthorizationCredentials | None) -> str | None:
    """``write``, ``read`` or None (no token); 401 for a token that is not ours."""
    if creds is None:
        return None
    if matches(creds.credentials, settings.tokens):
        return "write"
    if matches(creds.credentials, settings.read_tokens):
        return "read"
    raise ApiError(401, "unknown bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_read(nas: Nas, creds: Credentials) -> None:
    role = role_of(nas.settings, creds)
    if nas.settings.protect_reads and role is None:
        raise ApiError(401, "this server protects reads: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})


def require_write(nas: Nas, creds: Credentials) -> None:
    s = nas.settings
    if s.read_only:
        raise ApiError(403, "this server is read-only (started with --read-only)")
    role = role_of(s, creds)
    if role == "read":
        raise ApiError(403, "this token may only read; writes need a token of NAS_API_TOKEN")
    if role is None and not s.insecure:
        raise ApiError(401, "writes need 'Authorization: Bearer <token>' with a token of NAS_API_TOKEN",
                       headers={"WWW-Authenticate": "Bearer"})


READ = [Depends(require_read)]
WRITE = [Depends(require_write)]
