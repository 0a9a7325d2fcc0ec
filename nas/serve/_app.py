"""The HTTP API (FastAPI): studies, Pareto queries, trial details, exports and refinement requests.

``nas serve`` runs it; ``create_app(settings)`` builds it (tests use it with ``TestClient``).
The API never trains: creating a study or raising its target is a database write that workers
(``nas worker``) pick up, and a refinement request queues a job (:mod:`nas.workers`) that a
worker runs. The routes live in one module per resource (``_service``, ``_studies``,
``_results``, ``_refinement``, the web page's ``_web``); what they share in ``_state``. Requests are answered from the
database; the one exception is an export, which builds the network once (and, for ONNX, checks
it in onnxruntime, about a second; an int8 format is calibrated, converted and run in its
runtimes, seconds) and is then served from memory, per format and calibration. Reads never
write: the front's ``test_accuracy`` is the stored one. The one exception: an int8 export
records what it measured as an artifact (``deploy/<spec hash>/...``), as ``nas export`` does.

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
``GET /studies/{name}/trials/{number}/export``             ``format=json|onnx|state_dict|tflite|onnx-int8``,
                                                           a file; int8 (``tflite``: ``.tflite``,
                                                           ``onnx-int8``: ``_int8.onnx``) with optional
                                                           ``calibration=N`` (1..100000 training images,
                                                           default 256) and what was measured in the
                                                           header ``X-Lightnas-Deploy``: compact JSON
                                                           (accuracies in LiteRT, TFLM, ONNX Runtime;
                                                           ``tflite.ram_bytes``, ``tflite.flash_bytes``,
                                                           ``*_predicted``, ``*_limit``, ``over_budget``);
                                                           422 without the server's ``lightnas[deploy]``
``POST /studies/{name}/trials/{number}/refine``            queue a refinement (202; 200 if known)
``GET /studies/{name}/jobs``, ``.../jobs/{id}``            refinement jobs, status and candidates
``GET /studies/{name}/refined/{id}/export``                a refined candidate's file (the same formats)
``GET /studies/{name}/points``                             every trial and refined candidate as a
                                                           plot point, the budget's limits
``GET /supernets``, ``GET /supernets/{name}``              stored supernets (read-only): training,
                                                           size, the last ranking check (Kendall tau,
                                                           Spearman rho, its pairs)
``GET /``, ``GET /ui/studies/{name}``                      the web page (:mod:`nas.serve._web`); open,
                                                           its data comes from the reads above
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

import logging
import re
import uuid
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage import StorageError, Store, is_transient

from .._errors import NasError
from .._version import __version__
from ..search import validation_error
from . import _refinement, _results, _service, _studies, _supernets
from ._errors import ApiError, error_response
from ._settings import ApiSettings
from ._state import Service
from ._web import pages_router

__all__ = ["create_app"]

log = logging.getLogger("nas.api")


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
            await error_response(413, f"request body too large: at most {self.max} bytes")(scope, receive, send)
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
                await error_response(413, f"request body too large: at most {self.max} bytes")(scope, receive, send)


#: Query parameters whose values are secrets by their name (``?token=``, ``?api_key=``, ``?access_token=`` ...).
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;#]*(?:token|key|secret|passw|auth|credential|signature|session)"
                           r"[^=&;#]*=)[^&;#]*")
REDACTED = "***"


class RedactSecrets(logging.Filter):
    """A filter of the access log (``uvicorn.access``): a token a client puts in the URL instead of the
    ``Authorization`` header (which is never logged) is not written either. Values of query parameters
    named like a secret (``token``, ``api_key``, ``password`` ...) and every token of this server
    wherever it appears in the request line (raw or percent-encoded) become ``***``."""

    def __init__(self) -> None:
        super().__init__("nas.redact")
        self.secrets: set[str] = set()

    def add(self, tokens: Any) -> None:
        for t in tokens:
            if t:
                self.secrets |= {t, quote(t, safe=""), quote_plus(t, safe="")}

    def redact(self, text: str) -> str:
        text = _SECRET_PARAM.sub(rf"\1{REDACTED}", text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = self.redact(record.msg)
        return True


#: The one filter on the access log; every app made in this process adds its tokens.
ACCESS_LOG_FILTER = RedactSecrets()


def create_app(settings: ApiSettings | None = None, store: Store | None = None) -> FastAPI:
    """The FastAPI application on ``settings.storage`` (or an open ``store``).

    Raises:
        NasError: unsafe settings (see :meth:`ApiSettings.check`).
        storage.StorageError: the database cannot be opened.
    """
    settings = (settings or ApiSettings.from_env()).check()
    ACCESS_LOG_FILTER.add((*settings.tokens, *settings.read_tokens))
    logging.getLogger("uvicorn.access").addFilter(ACCESS_LOG_FILTER)  # once: the same filter object
    own = store is None
    nas = Service(settings, store or Store(settings.storage, mode="serve"))

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
    app.state.routers = (_service.router, _studies.router, _results.router, _refinement.router,
                         _supernets.router, pages_router(settings))
    for router in app.state.routers:
        app.include_router(router)
    _openapi(app, settings)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_r: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), e.field, e.headers)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own (400, 404, 405)
    async def http_error(r: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 405:  # Starlette names the methods of one route; a path may have several
            allowed = _allowed_methods(r)
            message = f"method {r.method} is not allowed on {r.url.path}; accepted: {', '.join(allowed)}"
            return error_response(405, message, None, {**(e.headers or {}), "Allow": ", ".join(allowed)})
        if e.status_code == 400 and e.detail == "There was an error parsing the body":
            return error_response(400, "body: cannot be parsed (not UTF-8 JSON); accepted: a JSON object as /docs "
                                       "describes", "body")
        return error_response(e.status_code, str(e.detail), None, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        if not errors:
            return error_response(422, "invalid request")
        err = errors[0]
        if err.get("type") == "json_invalid":
            return error_response(422, "body: not valid JSON", "body")
        error = validation_error(err, default_loc="body")
        message = str(error)
        if err.get("type") == "extra_forbidden":
            message += "; see the request schema in /docs"
        return error_response(422, message, error.field)

    from objectives import DataError

    @app.exception_handler(DataError)
    async def data_gone(_r: Request, e: DataError) -> JSONResponse:  # the study's files moved or unmounted
        return error_response(409, f"data: the study's data cannot be read here ({e})", "data")

    @app.exception_handler(NasError)
    async def bad_input(_r: Request, e: NasError) -> JSONResponse:
        return error_response(422, str(e), e.field)

    def database(_r: Request, e: Exception) -> JSONResponse:
        if is_transient(e):
            return error_response(503, "database unavailable; retry later", headers={"Retry-After": "5"})
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
    routes = [r for router in request.app.state.routers for r in router.routes]
    for route in routes:
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
    return error_response(500, f"internal error (reference {ref} in the server log)")
