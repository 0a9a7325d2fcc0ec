"""The HTTP API (FastAPI): studies, Pareto queries, trial details, exports and refinement requests.

``nas serve`` runs it; ``create_app(settings)`` builds it (tests use it with ``TestClient``).
The API never trains: creating a study or raising its target is a database write that workers
(``nas worker``) pick up, and a refinement request queues a job (:mod:`nas._jobs`) that a worker
runs. Requests are answered from the database; the one exception is an export, which builds
the network once (and, for ONNX, checks it in onnxruntime, about a second) and is then served
from memory. Reads never write: the front's ``test_accuracy`` is the stored one.

Endpoints (``/docs`` has the generated OpenAPI page, ``/openapi.json`` the schema):

=========================================================  ======================================
``GET /health``                                            database reachable (503 if not); open
``GET /spaces``, ``GET /devices``                          search spaces and device profiles
``POST /studies``                                          create (201; 409 name taken; 422)
``GET /studies``, ``GET /studies/{name}``                  list; spec, target, progress, counts
``PATCH /studies/{name}``                                  set the target (start or extend a search)
``DELETE /studies/{name}``                                 delete the study and its trials (204)
``GET /studies/{name}/pareto``                             the front, ``where`` filter as the CLI
``GET /studies/{name}/trials``                             paginated (``state``, ``limit``, ``cursor``)
``GET /studies/{name}/trials/{number}``                    spec, cost report, metrics, lineage
``GET /studies/{name}/trials/{number}/export``             ``format=json|onnx|state_dict``, a file
``POST /studies/{name}/trials/{number}/refine``            queue a refinement (202; 200 if known)
``GET /studies/{name}/jobs``, ``.../jobs/{id}``            refinement jobs, status and candidates
``GET /studies/{name}/refined/{id}/export``                a refined candidate's file
=========================================================  ======================================

Security. Writes (POST, PATCH, DELETE) need ``Authorization: Bearer <token>`` with one of the
tokens in ``NAS_API_TOKEN`` (comma-separated: several clients, rotation); ``NAS_API_READ_TOKEN``
lists tokens that may only read (403 on writes). Reads are open unless ``--protect-reads``
(``NAS_API_PROTECT_READS=1``), then any token is needed; ``/health`` is always open. Tokens are
compared in constant time (``hmac.compare_digest``) and never logged. Without a write token the
server refuses to start unless it is ``--read-only`` (every write 403) or ``--insecure`` (writes
from anyone). Request bodies are limited (``--max-body``, 1 MiB). File data sources (``idx:``,
``cifar10:``, ``npz:``) must lie under a ``--data-root``; without one only ``digits`` is
accepted, so clients cannot make the server read arbitrary paths; cost profiles are named ones.

Errors are JSON ``{"message": "...", "field": ...}``: 401 (no or unknown token), 403 (read-only
token or server), 404 (unknown study, trial, job), 409 (name taken, trial not trained, target
below the finished trials), 413 (body too large), 422 (bad field: the message names it and the
accepted values), 503 (database unreachable), 500 (a bug: a short message with an id; the
traceback goes to the server log only).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.trial import FrozenTrial
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage import StorageError, Store, is_transient

from . import __version__
from ._errors import NasError
from ._jobs import candidate_info, iso_utc, job_info, queue_refinement
from ._refine import RefineSettings
from ._study import (
    StudySpec,
    UnreadableStudy,
    check_study_exists,
    delete_study,
    get_study_spec,
    one_line_error,
    parse_stored_spec,
    plan_study,
    study_info,
)
from ._warm import WarmStart, arch_from_doc, create_warm_started, plan_warm_start

__all__ = ["ApiSettings", "create_app"]

log = logging.getLogger("nas.api")

EXPORT_CACHE = 64  # exported files kept in memory (kilobytes to a few megabytes each)
MAX_INT = 2**31 - 1  # path and query integers: beyond this no trial, job or page exists (and SQL ints overflow)
STATES = ("complete", "pruned", "fail", "running", "waiting")
FORMATS = {"json": ("application/json", "json"), "onnx": ("application/octet-stream", "onnx"),
           "state_dict": ("application/octet-stream", "pt")}


# ----------------------------------------------------------------------------------- settings
def _split(value: str | None) -> tuple[str, ...]:
    return tuple(t for t in (value or "").replace(",", " ").split() if t)


@dataclass(frozen=True)
class ApiSettings:
    """How the API runs. :meth:`from_env` reads ``NAS_API_*``; :meth:`check` refuses unsafe setups.

    Attributes:
        storage: database URL (``None``: ``$NAS_STORAGE`` or ``sqlite:///nas.db``).
        tokens: bearer tokens that may write (``NAS_API_TOKEN``, comma- or space-separated).
        read_tokens: tokens that may only read (``NAS_API_READ_TOKEN``).
        protect_reads: reads need a token too (``NAS_API_PROTECT_READS``).
        read_only: every write is refused (403), whatever the token.
        insecure: accept writes without a token (only when no token is configured).
        max_body_bytes: largest request body (413 above).
        data_roots: directories under which file data sources may lie (``NAS_API_DATA_ROOT``,
            ``os.pathsep``-separated); none: only ``digits``.
    """

    storage: str | None = None
    tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()
    protect_reads: bool = False
    read_only: bool = False
    insecure: bool = False
    max_body_bytes: int = 1 << 20
    data_roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, **overrides: Any) -> ApiSettings:
        """Settings from the environment; keyword arguments that are not None win."""
        env: dict[str, Any] = {
            "tokens": _split(os.environ.get("NAS_API_TOKEN")),
            "read_tokens": _split(os.environ.get("NAS_API_READ_TOKEN")),
            "protect_reads": os.environ.get("NAS_API_PROTECT_READS", "").strip().lower() in ("1", "true", "yes"),
            "data_roots": tuple(Path(p) for p in os.environ.get("NAS_API_DATA_ROOT", "").split(os.pathsep) if p),
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        env["data_roots"] = tuple(Path(p) for p in env.get("data_roots", ()))
        return cls(**env)

    def check(self) -> ApiSettings:
        """Raise :class:`NasError` (one line) for a setup that would expose the database."""
        for name, tokens in (("NAS_API_TOKEN", self.tokens), ("NAS_API_READ_TOKEN", self.read_tokens)):
            short = [t for t in tokens if len(t) < 16]
            if short:
                raise NasError(f"{name}: every token needs at least 16 characters ({len(short)} shorter); "
                               "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if set(self.tokens) & set(self.read_tokens):
            raise NasError("NAS_API_READ_TOKEN: a token is both a write and a read-only token; give each one role")
        if self.insecure and self.tokens:
            raise NasError("--insecure is for a server without tokens; unset NAS_API_TOKEN or leave out --insecure")
        if not self.tokens and not self.read_only and not self.insecure:
            raise NasError("no write token: set NAS_API_TOKEN (several: comma-separated), or start with --read-only "
                           "(every write refused), or --insecure (anyone may write)")
        if self.protect_reads and not (self.tokens or self.read_tokens):
            raise NasError("--protect-reads needs tokens: set NAS_API_TOKEN or NAS_API_READ_TOKEN")
        if self.max_body_bytes < 1024:
            raise NasError(f"--max-body: must be at least 1024 bytes, got {self.max_body_bytes}")
        for root in self.data_roots:
            if not root.is_dir():
                raise NasError(f"--data-root: {root} is not a directory")
        return self


# ----------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Every error response: one line naming what was wrong (and, for 422, the field)."""

    message: str
    field: str | None = None


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.field = field


def _error(status: int, message: str, field: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(message=message, field=field).model_dump(), status_code=status,
                        headers=dict(headers) if headers else None)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "no or unknown token", 403: "read-only token or server", 404: "not found",
            409: "conflict with the stored state", 413: "request body too large", 422: "invalid input",
            503: "database unreachable"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


def _field_of(message: str) -> str | None:
    head, sep, _ = message.partition(":")
    return head.strip() if sep and " " not in head.strip() else None


class _BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in: FastAPI passes HTTP exceptions through to the handler
    (other errors while it reads a body become 400); outside a route the middleware answers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes")


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (by Content-Length or as it streams)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max):
            await _error(413, f"request body too large: at most {self.max} bytes")(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    raise _BodyTooLarge(self.max)
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _BodyTooLarge:
            if not started:
                await _error(413, f"request body too large: at most {self.max} bytes")(scope, receive, send)


# ----------------------------------------------------------------------------------- bodies
class StudyCreate(StudySpec):
    """A study spec (the fields of ``nas study create``) and, optionally, its first target.

    ``target`` (default: ``trials``) is how many networks within the budget workers evaluate; 0 creates the
    study without starting it (``PATCH`` starts it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
    target: int | None = Field(default=None, ge=0, le=1_000_000)
    enqueue: list[dict[str, Any]] = Field(default_factory=list, max_length=100,
                                          description="architectures (ArchSpec JSON, as the json export gives) to "
                                                      "evaluate first; each must fit the space and the budget")
    warm_start: str | None = Field(default=None, max_length=255,
                                   description="a study whose Pareto front is evaluated first (members that do "
                                               "not fit are skipped)")


class TargetUpdate(BaseModel):
    """``target``: the study's new target of finished trials (raise it to start or extend a search)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    target: int = Field(ge=0, le=1_000_000)


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    schema_version: int
    version: str


class StudyInfo(BaseModel):
    """A study: its spec, target and progress."""

    name: str
    spec: dict[str, Any]
    target: int = Field(description="networks to evaluate within the budget (rejected samples do not count)")
    finished: int = Field(description="networks evaluated within the budget: trained, reused or stopped early")
    rejected: int = Field(default=0, description="samples rejected over the budget before training")
    counts: dict[str, int]
    pareto_size: int | None = None
    jobs: dict[str, int] = Field(default_factory=dict)
    created_at: str | None = None
    feasibility: dict[str, Any] | None = Field(
        default=None, description="the space's exact minimum per budgeted resource and its share within the budget")
    fit: dict[str, Any] | None = Field(default=None, description="how the space was scaled to the budget, if it was")
    warnings: list[str] = Field(default_factory=list, description="on creation: e.g. a share within budget under 1%")
    warm_start: dict[str, Any] | None = Field(default=None, description="on creation: what was enqueued, skipped")
    unreadable: str | None = Field(default=None, description="set when the stored spec no longer validates (written "
                                                             "by another version, or edited): why; such a study can "
                                                             "only be listed and deleted")


class StudyList(BaseModel):
    studies: list[StudyInfo]


class TrialPage(BaseModel):
    trials: list[dict[str, Any]]
    next_cursor: str | None = None


class ParetoAnswer(BaseModel):
    study: str
    where: str | None = None
    objectives: list[str]
    rows: list[dict[str, Any]]


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    kind: str
    study: str
    trial: int
    state: str
    attempts: int
    progress: dict[str, Any]
    error: str | None = None


class JobList(BaseModel):
    jobs: list[Job]


# ----------------------------------------------------------------------------------- helpers
def _clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _iso_local(t: Any) -> str | None:
    """An Optuna time (naive local time) as ISO 8601 with its offset."""
    return None if t is None else t.astimezone().isoformat()


def _trial_row(spec: StudySpec, t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    cost = a.get("cost", {})
    values = dict(zip(spec.objectives, t.values, strict=True)) if t.values is not None else None
    return _clean({
        "number": t.number, "state": t.state.name.lower(), "status": a.get("status"), "spec_hash": a.get("spec_hash"),
        "values": values, "accuracy": a.get("val_accuracy"),
        "cost": {k: cost.get(k) for k in ("hw_cost", "flops", "params", "peak_activation_bytes", "latency_ms")
                 if k in cost},
        "epochs_run": a.get("epochs_run"), "fail_reason": a.get("fail_reason"),
        "datetime_start": _iso_local(t.datetime_start), "datetime_complete": _iso_local(t.datetime_complete),
    })


@dataclass
class _App:
    settings: ApiSettings
    store: Store
    shapes: dict[str, tuple[tuple[int, int, int], int]] = field(default_factory=dict)
    #: Exported files by (study, what, id, spec hash, fidelity, format), least recently used first:
    #: a trial's stored weights never change, so its files are built (and checked) once.
    exports: OrderedDict[tuple[Any, ...], tuple[bytes, str, dict[str, str]]] = field(default_factory=OrderedDict)

    def cached_export(self, key: tuple[Any, ...], build: Callable[[], Response]) -> Response:
        hit = self.exports.get(key)
        if hit is None:
            r = build()
            hit = (bytes(r.body), str(r.media_type), {"Content-Disposition": r.headers["content-disposition"]})
            self.exports[key] = hit
            while len(self.exports) > EXPORT_CACHE:
                self.exports.popitem(last=False)
        self.exports.move_to_end(key)
        return Response(hit[0], media_type=hit[1], headers=hit[2])

    def spec(self, name: str) -> StudySpec:
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

    def shape(self, spec: StudySpec) -> tuple[tuple[int, int, int], int]:
        """(input shape, classes) of the study's data, loaded once per study."""
        from objectives import DataError

        if spec.name not in self.shapes:
            try:
                data = spec.load_data()
            except DataError as e:
                raise ApiError(409, f"data: {e}") from None
            self.shapes[spec.name] = (tuple(data.input_shape), int(data.num_classes))  # type: ignore[assignment]
        return self.shapes[spec.name]

    def info(self, name: str, *, with_front: bool = True) -> StudyInfo:
        """A study's view; one whose stored spec no longer reads is shown with ``unreadable`` (why)
        and its counts, so that one bad row never takes the listing down."""
        from ._runner import progress

        row = self.store.get_study(name)
        if row is None:
            raise ApiError(404, f"unknown study {name!r}; GET /studies lists them")
        unreadable = None
        try:
            spec: dict[str, Any] = json.loads(parse_stored_spec(name, row.spec_json).to_json())
        except UnreadableStudy as e:
            unreadable, spec = str(e).replace(f"('nas study delete {name} --yes')", f"(DELETE /studies/{name})"), {}
        raw = self.store.study_counts(name)
        finished, rejected = raw.pop("COUNTED"), raw.pop("REJECTED")
        counts = {k.lower(): v for k, v in raw.items()}
        front = progress(name, self.store, row.target_trials).pareto if with_front and unreadable is None else None
        jobs: dict[str, int] = {}
        for j in self.store.list_jobs(name):
            jobs[j.state] = jobs.get(j.state, 0) + 1
        extra = study_info(name, self.store)
        return StudyInfo(name=name, spec=spec, target=row.target_trials, finished=finished,
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
        except (DataError, OSError, ValueError) as e:
            raise ApiError(422, f"data: {e}", "data") from None
        if not any(path == r.resolve() or path.is_relative_to(r.resolve()) for r in roots):
            raise ApiError(422, f"data: {raw!r} is not under a data root of this server; {accepted}", "data")
        return f"{kind.strip()}:{path}"


def _state(request: Request) -> _App:
    return request.app.state.nas  # type: ignore[no-any-return]


Nas = Annotated[_App, Depends(_state)]
StudyName = Annotated[str, PathParam(description="study name", max_length=255)]
TrialNumber = Annotated[int, PathParam(ge=0, le=MAX_INT, description="trial number")]
_bearer = HTTPBearer(auto_error=False, description="a token of NAS_API_TOKEN (writes) or NAS_API_READ_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Format = Annotated[Literal["json", "onnx", "state_dict"],
                   Query(description="json (spec and cost), onnx, state_dict (torch.save)")]


def _matches(token: str, tokens: tuple[str, ...]) -> bool:
    found = False
    for t in tokens:  # every token compared, in constant time: timing tells nothing
        found |= hmac.compare_digest(token.encode(), t.encode())
    return found


def _role(settings: ApiSettings, creds: HTTPAuthorizationCredentials | None) -> str | None:
    """``write``, ``read`` or None (no token); 401 for a token that is not ours."""
    if creds is None:
        return None
    if _matches(creds.credentials, settings.tokens):
        return "write"
    if _matches(creds.credentials, settings.read_tokens):
        return "read"
    raise ApiError(401, "unknown bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_read(nas: Nas, creds: Credentials) -> None:
    role = _role(nas.settings, creds)
    if nas.settings.protect_reads and role is None:
        raise ApiError(401, "this server protects reads: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})


def require_write(nas: Nas, creds: Credentials) -> None:
    s = nas.settings
    if s.read_only:
        raise ApiError(403, "this server is read-only (started with --read-only)")
    role = _role(s, creds)
    if role == "read":
        raise ApiError(403, "this token may only read; writes need a token of NAS_API_TOKEN")
    if role is None and not s.insecure:
        raise ApiError(401, "writes need 'Authorization: Bearer <token>' with a token of NAS_API_TOKEN",
                       headers={"WWW-Authenticate": "Bearer"})


READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


def _warm_plan(nas: _App, spec: StudySpec, body: StudyCreate) -> WarmStart | None:
    """The warm start a creation asks for (``enqueue``, ``warm_start``), validated; None if none."""
    if not body.enqueue and body.warm_start is None:
        return None
    specs = []
    for i, doc in enumerate(body.enqueue):
        try:
            specs.append((f"enqueue[{i}]", arch_from_doc(doc)))
        except NasError as e:
            raise ApiError(422, f"enqueue[{i}]: {e}", "enqueue") from None
    if body.warm_start is not None and nas.store.get_study(body.warm_start) is None:
        raise ApiError(422, f"warm_start: unknown study {body.warm_start!r}; GET /studies lists them", "warm_start")
    try:
        return plan_warm_start(spec, nas.store, specs=specs, from_study=body.warm_start)
    except NasError as e:
        raise ApiError(422, str(e), "enqueue") from None


# ----------------------------------------------------------------------------------- the app
def create_app(settings: ApiSettings | None = None, store: Store | None = None) -> FastAPI:
    """The FastAPI application on ``settings.storage`` (or an open ``store``).

    Raises:
        NasError: unsafe settings (see :meth:`ApiSettings.check`).
        storage.StorageError: the database cannot be opened.
    """
    settings = (settings or ApiSettings.from_env()).check()
    own = store is None
    nas = _App(settings, store or Store(settings.storage, mode="serve"))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        if own:
            nas.store.close()

    app = FastAPI(title="lightnas", version=__version__, lifespan=lifespan,
                  description="Neural architecture search for lightweight CNNs under hardware budgets. The API never "
                              "trains: workers (`nas worker`) run the trials and refinements it queues.")
    app.state.nas = nas
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    _handlers(app)
    _routes(app)
    _openapi(app, settings)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_r: Request, e: ApiError) -> JSONResponse:
        return _error(e.status_code, str(e.detail), e.field, e.headers)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own (400, 404, 405)
    async def http_error(r: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 405:  # Starlette names the methods of one route; a path may have several
            allowed = _allowed_methods(r)
            return _error(405, f"method {r.method} is not allowed on {r.url.path}; accepted: {', '.join(allowed)}",
                          None, {**(e.headers or {}), "Allow": ", ".join(allowed)})
        if e.status_code == 400 and e.detail == "There was an error parsing the body":
            return _error(400, "body: cannot be parsed (not UTF-8 JSON); accepted: a JSON object as /docs describes",
                          "body")
        return _error(e.status_code, str(e.detail), None, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        if not errors:
            return _error(422, "invalid request")
        err = errors[0]
        if err.get("type") == "json_invalid":
            return _error(422, "body: not valid JSON", "body")
        message = one_line_error(err, default_loc="body")
        if err.get("type") == "extra_forbidden":
            message += "; see the request schema in /docs"
        return _error(422, message, _field_of(message))

    from objectives import DataError

    @app.exception_handler(DataError)
    async def data_gone(_r: Request, e: DataError) -> JSONResponse:  # the study's files moved or unmounted
        return _error(409, f"data: the study's data cannot be read here ({e})", "data")

    @app.exception_handler(NasError)
    async def bad_input(_r: Request, e: NasError) -> JSONResponse:
        message = str(e)
        return _error(422, message, _field_of(message))

    def database(_r: Request, e: Exception) -> JSONResponse:
        if is_transient(e):
            return _error(503, "database unavailable; retry later", headers={"Retry-After": "5"})
        return _internal(e)

    app.add_exception_handler(SQLAlchemyError, database)  # type: ignore[arg-type]
    app.add_exception_handler(optuna.exceptions.StorageInternalError, database)  # type: ignore[arg-type]
    app.add_exception_handler(StorageError, database)  # type: ignore[arg-type]

    @app.exception_handler(Exception)
    async def bug(_r: Request, e: Exception) -> JSONResponse:
        return _internal(e)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves on the request's path."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _openapi(app: FastAPI, settings: ApiSettings) -> None:
    """Say in the schema what the server does: reads are open unless ``--protect-reads`` (a token
    is then optional, not required), and a body that cannot be parsed gets a 400."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for ops in schema.get("paths", {}).values():
            for method, op in ops.items():
                if method == "get" and op.get("security") and not settings.protect_reads:
                    op["security"] = [{}, *op["security"]]  # open; a token may be sent
                if "requestBody" in op:
                    op.setdefault("responses", {})["400"] = {
                        "description": "the body cannot be parsed (not UTF-8 JSON)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _internal(e: Exception) -> JSONResponse:
    ref = uuid.uuid4().hex[:8]
    log.error("internal error %s", ref, exc_info=e)
    return _error(500, f"internal error (reference {ref} in the server log)")


def _routes(app: FastAPI) -> None:  # noqa: C901 -- one place lists every endpoint
    # ------------------------------------------------------------------ service
    @app.get("/health", response_model=Health, responses=_responses(503), tags=["service"])
    def health(nas: Nas) -> Any:
        """Whether the database answers (503 if not). Always open: for load balancers and probes."""
        try:
            version = nas.store.schema_version
        except SQLAlchemyError:
            return _error(503, "database unavailable")
        backend = "postgresql" if nas.store.is_postgres else "sqlite"
        return Health(status="ok", database=backend, schema_version=version, version=__version__)

    @app.get("/spaces", dependencies=READ, responses=_responses(401), tags=["service"])
    def spaces() -> list[dict[str, Any]]:
        """The registered search spaces and their options (what ``space`` and ``space_options`` accept)."""
        from search_spaces import list_spaces, space_class

        return [_clean({"name": n, "description": space_class(n).description,
                        "options": [{"name": k, "default": list(d) if isinstance(d, tuple) else d, "help": h}
                                    for k, d, h in space_class(n).option_help()]}) for n in list_spaces()]

    @app.get("/devices", dependencies=READ, responses=_responses(401), tags=["service"])
    def devices() -> list[dict[str, Any]]:
        """Device profiles (what ``cost_device`` accepts), each number with its source."""
        from objectives import get_device, list_devices

        return [_clean(get_device(n).model_dump()) for n in list_devices()]

    # ------------------------------------------------------------------ studies
    @app.post("/studies", status_code=201, response_model=StudyInfo, dependencies=WRITE,
              responses=_responses(401, 403, 409, 413, 422), tags=["studies"])
    def create(nas: Nas, body: StudyCreate) -> StudyInfo:
        """Create a study. Workers start on it at once, unless ``target`` is 0."""
        from objectives import list_devices

        taken = ApiError(409, f"study {body.name!r} already exists; choose another name or DELETE it first", "name")
        if nas.store.get_study(body.name) is not None:
            raise taken
        data = nas.check_data(body.data)
        if body.cost_device not in list_devices():
            raise ApiError(422, f"cost_device: {body.cost_device!r} is not a device profile of this server; accepted: "
                                f"{', '.join(list_devices())}", "cost_device")
        spec = StudySpec(**{**body.model_dump(exclude={"target", "enqueue", "warm_start"}), "data": data})
        try:
            study_plan = plan_study(spec)  # budget first: refused (422), warned or fitted before any write
        except NasError as e:
            message = str(e)
            raise ApiError(422, message, _field_of(message)) from None
        spec = study_plan.spec
        plan = _warm_plan(nas, spec, body)  # checked before anything is written
        try:
            create_warm_started(spec, nas.store, plan, target=body.target, study_plan=study_plan)
        except NasError as e:
            message = str(e)
            raise ApiError(409 if "already exists" in message else 422, message, _field_of(message)) from None
        except (optuna.exceptions.DuplicatedStudyError, IntegrityError):  # the same name created concurrently
            raise taken from None
        info = nas.info(spec.name, with_front=False)
        info.warnings = list(study_plan.warnings)
        if plan is not None:
            info.warm_start = {"enqueued": [src for src, _ in plan.enqueued],
                               "skipped": [{"source": src, "reason": why} for src, why in plan.skipped]}
        return info

    @app.get("/studies", response_model=StudyList, dependencies=READ, responses=_responses(401), tags=["studies"])
    def studies(nas: Nas) -> StudyList:
        """Every study with its target and counts by state."""
        return StudyList(studies=[nas.info(r.name, with_front=False) for r in nas.store.list_studies()])

    @app.get("/studies/{name}", response_model=StudyInfo, dependencies=READ, responses=_responses(401, 404),
             tags=["studies"])
    def study(nas: Nas, name: StudyName) -> StudyInfo:
        """Spec, target, finished trials, counts by state, Pareto-front size and refinement jobs."""
        return nas.info(name)

    @app.patch("/studies/{name}", response_model=StudyInfo, dependencies=WRITE,
               responses=_responses(401, 403, 404, 409, 413, 422), tags=["studies"])
    def set_target(nas: Nas, name: StudyName, body: TargetUpdate) -> StudyInfo:
        """Set the target of networks evaluated within the budget: raising it starts or extends the
        search (workers pick it up); setting it to the count so far pauses it. It cannot go below
        the networks already evaluated (samples rejected over budget do not count)."""
        nas.spec(name)
        with nas.store.lock(f"study:{name}"):  # the workers' slot lock: the count and the write agree
            finished = nas.store.study_counts(name)["COUNTED"]
            if body.target < finished:
                raise ApiError(409, f"target: {name!r} has {finished} networks evaluated within its budget already; "
                                    f"the target can be {finished} (pause) or more", "target")
            nas.store.set_target(name, body.target)
        return nas.info(name, with_front=False)

    @app.delete("/studies/{name}", status_code=204, dependencies=WRITE, responses=_responses(401, 403, 404),
                tags=["studies"])
    def delete(nas: Nas, name: StudyName) -> Response:
        """Delete the study, its trials and its queued jobs (architectures and evaluations stay for reuse);
        also a study whose stored spec no longer reads."""
        try:
            check_study_exists(name, nas.store)
        except NasError:
            raise ApiError(404, f"unknown study {name!r}; GET /studies lists them") from None
        delete_study(name, nas.store)
        nas.shapes.pop(name, None)
        for key in [k for k in nas.exports if k[0] == name]:
            del nas.exports[key]
        return Response(status_code=204)

    @app.get("/studies/{name}/pareto", response_model=ParetoAnswer, dependencies=READ,
             responses=_responses(401, 404, 422), tags=["results"])
    def pareto(nas: Nas, name: StudyName,
               where: Annotated[str | None, Query(max_length=1000, description="e.g. 'flops<=1M accuracy>=0.95'")]
               = None,
               include_refined: Annotated[bool, Query(description="refined candidates join the front")] = False
               ) -> ParetoAnswer:
        """The feasible Pareto front under ``where`` (the CLI's filter language). ``test_accuracy``
        is the stored one (measured once by ``nas pareto`` or ``nas export``), null until then:
        a read never runs a network or writes."""
        from ._pareto import pareto_rows, where_filter

        spec = nas.spec(name)
        try:
            where_filter(where)
        except NasError as e:
            raise ApiError(422, str(e).removeprefix("--"), "where") from None
        rows = pareto_rows(name, nas.store, where=where, include_refined=include_refined, measure_test=False)
        return ParetoAnswer(study=name, where=where, objectives=spec.objectives, rows=_clean(rows))

    # ------------------------------------------------------------------ trials
    @app.get("/studies/{name}/trials", response_model=TrialPage, dependencies=READ,
             responses=_responses(401, 404, 422), tags=["results"])
    def trials(nas: Nas, name: StudyName,
               state: Annotated[Literal["complete", "pruned", "fail", "running", "waiting"] | None,
                                Query(description="only trials in this state")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50,
               cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")]
               = None) -> TrialPage:
        """Trials by number, a page at a time (``next_cursor`` is null on the last page)."""
        spec = nas.spec(name)
        after = -1
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_INT:
                raise ApiError(422, "cursor: not a cursor of this API; pass next_cursor of the previous page",
                               "cursor")
            after = int(cursor)
        ids = nas.store.trial_page(name, after=after, states=(state.upper(),) if state else None, limit=limit + 1)
        page = nas.store.trials_by_id(name, ids[:limit])
        more = len(ids) > limit
        return TrialPage(trials=[_trial_row(spec, t) for t in page],
                         next_cursor=str(page[-1].number) if more and page else None)

    @app.get("/studies/{name}/trials/{number}", dependencies=READ, responses=_responses(401, 404, 409),
             tags=["results"])
    def trial(nas: Nas, name: StudyName, number: TrialNumber) -> dict[str, Any]:
        """One trial: its architecture spec, per-layer cost report, metrics and lineage (retries,
        refinement candidates and jobs)."""
        from objectives import estimate_cost
        from search_spaces import ArchSpec

        spec = nas.spec(name)
        t = nas.trial(name, number)
        a = t.user_attrs
        out = _trial_row(spec, t)
        h = a.get("spec_hash")
        arch_json = nas.store.get_architecture(h) if h else None
        out["spec"] = json.loads(arch_json) if arch_json else None
        out["params"] = t.params
        if arch_json:
            shape, classes = nas.shape(spec)
            report = estimate_cost(ArchSpec.from_json(arch_json), shape, classes, device=spec.cost_device)
            out["cost_report"] = report.to_dict()
            if "hw_cost" in a.get("cost", {}):
                out["cost_report"].setdefault("totals", {})["hw_cost"] = a["cost"]["hw_cost"]
        ev = nas.store.get_evaluation(h, spec.fidelity_key) if h else None
        out["metrics"] = {"val_accuracy": a.get("val_accuracy"), "test_accuracy": ev.test_accuracy if ev else None,
                          "epochs_run": a.get("epochs_run"), "train_seconds": a.get("train_seconds"),
                          "curve": a.get("curve") or (json.loads(ev.curve_json) if ev else None),
                          "violations": a.get("violations"), "constraints": a.get("constraints")}
        refinements = nas.store.get_refinements(name, parent_trial=number)
        out["lineage"] = {"retry_of": t.system_attrs.get("failed_trial"),
                          "retry_history": t.system_attrs.get("retry_history", []),
                          "worker": a.get("worker"),
                          "refined": [candidate_info(r) for r in refinements if r.parent_spec_hash == h],
                          "jobs": [j.id for j in nas.store.list_jobs(name) if j.trial == number]}
        return _clean(out)  # type: ignore[no-any-return]

    file_responses = {**_responses(401, 404, 409),
                      200: {"content": {"application/json": {}, "application/octet-stream": {}},
                            "description": "the file"}}

    @app.get("/studies/{name}/trials/{number}/export", dependencies=READ, responses=file_responses,
             response_class=Response, tags=["results"])
    def export(nas: Nas, name: StudyName, number: TrialNumber, format: Format = "onnx") -> Response:
        """A trial's network as a file: ``json`` (spec, input, normalisation, cost), ``onnx``
        (checked against onnxruntime) or ``state_dict``. Uses the weights the search stored; a trial
        that was never trained has only ``json``."""
        from ._export import export_trial

        spec = nas.spec(name)
        t = nas.trial(name, number)  # 404 for an unknown trial

        def build() -> Response:
            with tempfile.TemporaryDirectory(prefix="lightnas-export-") as tmp:
                try:
                    export_trial(name, number, tmp, nas.store, formats=(format,))
                except NasError as e:
                    raise ApiError(409, str(e).replace("; pass --epochs N to train it for export", "")) from None
                return _export_response(Path(tmp), format, f"{name}-trial{number}")

        if not t.state.is_finished():
            return build()
        return nas.cached_export((name, "trial", number, t.user_attrs.get("spec_hash"), spec.fidelity_key, format),
                                 build)

    @app.get("/studies/{name}/refined/{refined}/export", dependencies=READ, responses=file_responses,
             response_class=Response, tags=["refinement"])
    def export_refined(nas: Nas, name: StudyName, refined: Annotated[int, PathParam(ge=0, le=MAX_INT)],
                       format: Format = "onnx") -> Response:
        """A refined candidate's network (ids: a job's ``candidates``, or the Pareto front with
        ``include_refined``)."""
        from ._export import export_refined as export_candidate

        nas.spec(name)

        def build() -> Response:
            with tempfile.TemporaryDirectory(prefix="lightnas-export-") as tmp:
                try:
                    export_candidate(name, refined, tmp, nas.store, formats=(format,))
                except NasError as e:
                    raise ApiError(404, str(e)) from None
                return _export_response(Path(tmp), format, f"{name}-refined{refined}")

        return nas.cached_export((name, "refined", refined, format), build)  # ids are never reused

    # ------------------------------------------------------------------ refinement
    @app.post("/studies/{name}/trials/{number}/refine", status_code=202, response_model=Job, dependencies=WRITE,
              responses={**_responses(401, 403, 404, 409, 413, 422),
                         200: {"model": Job, "description": "the same work was requested before: that job"}},
              tags=["refinement"])
    def refine(nas: Nas, name: StudyName, number: TrialNumber, response: Response,
               settings: Annotated[RefineSettings | None, Body(description="refinement settings (all optional)")]
               = None) -> Job:
        """Queue a refinement of the trial (dynamic pruning, layer fusion, optional low rank) for a
        worker; 202 with the job, whose status ``GET .../jobs/{id}`` reads. The same request again
        returns the job that does (or did) that work, with 200."""
        from ._refine import check_parent

        nas.spec(name)
        nas.trial(name, number)  # 404 for an unknown trial
        try:
            check_parent(name, number, nas.store)
        except NasError as e:
            raise ApiError(409, str(e)) from None
        job, created = queue_refinement(name, number, nas.store, settings or RefineSettings())
        response.status_code = 202 if created else 200
        response.headers["Location"] = f"/studies/{name}/jobs/{job.id}"
        return Job(**_clean(job_info(job, nas.store)))

    @app.get("/studies/{name}/jobs", response_model=JobList, dependencies=READ, responses=_responses(401, 404),
             tags=["refinement"])
    def jobs(nas: Nas, name: StudyName,
             state: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None) -> JobList:
        """The study's refinement jobs, oldest first."""
        nas.spec(name)
        return JobList(jobs=[Job(**_clean(job_info(j))) for j in nas.store.list_jobs(name, state=state)])

    @app.get("/studies/{name}/jobs/{job_id}", response_model=Job, dependencies=READ, responses=_responses(401, 404),
             tags=["refinement"])
    def job(nas: Nas, name: StudyName, job_id: Annotated[int, PathParam(ge=0, le=MAX_INT)]) -> Job:
        """A job: state (queued, running, done, failed), progress, error, and the candidates it stored."""
        nas.spec(name)
        row = nas.store.get_job(job_id)
        if row is None or row.study != name:
            raise ApiError(404, f"study {name!r} has no job {job_id}; GET /studies/{name}/jobs lists them")
        return Job(**_clean(job_info(row, nas.store)))


def _export_response(tmp: Path, fmt: str, stem: str) -> Response:
    """The exported file of format ``fmt`` in ``tmp`` as a download named ``stem.<ext>``."""
    media, ext = FORMATS[fmt]
    headers = {"Content-Disposition": f'attachment; filename="{stem}.{ext}"'}
    if fmt == "json":
        doc = {"spec": json.loads((tmp / "spec.json").read_text()),
               "model": json.loads((tmp / "model.json").read_text())}
        return JSONResponse(_clean(doc), headers=headers)
    return Response((tmp / ("model.onnx" if fmt == "onnx" else "weights.pt")).read_bytes(), media_type=media,
                    headers=headers)
