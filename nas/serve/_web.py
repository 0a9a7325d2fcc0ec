"""The web page of ``nas serve``: studies, live progress, the Pareto front under the budget, exports.

:func:`pages_router` is the page's router (:func:`nas.serve.create_app` includes it):

==================================  ===============================================================
``GET /``                           the studies: state, target, progress; refreshes while work runs
``GET /ui/studies/{name}``          one study: Pareto plot, ``where`` filter, front table, trials
``GET /ui/static/{file}``           the page's JavaScript and CSS (package data ``nas/serve/web/``)
``GET /ui/static/plotly.min.js``    plotly.js, as the PyPI package ``plotly`` bundles it
``GET /studies/{name}/points``      JSON (in ``_results``): every trial and refined candidate as a point
==================================  ===============================================================

URLs. The JSON API owns ``/studies/{name}``, so the study page lives at ``/ui/studies/{name}``
and its files under ``/ui/static/``: no page can shadow an API route (one URL never answers
HTML to one client and JSON to another), and a proxy can route or guard the pages apart from
the API. The studies page is ``/``, where a person looks first.

Reads and writes. The pages are static files with no data in them, so they are served without a
token, also under ``--protect-reads`` (as ``/docs`` is). Everything they show comes from the JSON
API through ``fetch``, under the API's rules: with ``--protect-reads`` its 401 makes the page ask
for a token. Writes (raise a target, queue a refinement) are the API's own ``PATCH`` and ``POST``
and need a write token, which the user types into the page: it is kept in the tab's
``sessionStorage`` (gone when the tab closes) and sent as ``Authorization: Bearer``, never in a
URL, a cookie or a log. Downloads go through ``fetch`` too (a link could not carry the header).

Offline. No Node build, no CDN: plain HTML, JavaScript and CSS shipped as package data, and
plotly.js from the ``plotly`` wheel, served from memory (gzip when the browser takes it, ETag
revalidation). The pages' Content-Security-Policy allows no origin but the server's own.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam

from ._errors import ApiError
from ._settings import ApiSettings
from ._state import StudyName

__all__ = ["pages_router", "plotly_js"]

WEB = Path(__file__).with_name("web")
_FILE = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css)$")
_MEDIA = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
#: Pages may load and fetch only from this server; plotly draws with inline styles, nothing else is inline.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gz: bytes
    etag: str
    media: str
    cache: str

    @classmethod
    def read(cls, path: Path, media: str, cache: str, subst: dict[str, str] | None = None) -> _Asset:
        body = path.read_bytes()
        for key, value in (subst or {}).items():
            body = body.replace(key.encode(), value.encode())
        return cls(body, gzip.compress(body, 6, mtime=0), '"' + hashlib.sha256(body).hexdigest()[:32] + '"', media,
                   cache)

    def response(self, request: Request, headers: dict[str, str] | None = None) -> Response:
        """The file, ``304`` when the browser has it (ETag), gzipped when the browser takes gzip."""
        head = {**(headers or {}), "ETag": self.etag, "Cache-Control": self.cache, "Vary": "Accept-Encoding"}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=head)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(self.gz, media_type=self.media, headers={**head, "Content-Encoding": "gzip"})
        return Response(self.body, media_type=self.media, headers=head)


def plotly_js() -> Path | None:
    """``plotly.min.js`` of the installed ``plotly`` package (found without importing plotly), or None."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


class _Assets:
    """The page's files, read once (they are package data: they change only with the package).

    The pages carry the server's rules (``data-reads``: open or token; ``data-writes``: token, none
    on a read-only server, open on an insecure one), so they ask for a token and offer writes only
    where the API would take them; the API checks every request all the same."""

    def __init__(self, settings: ApiSettings) -> None:
        self._cache: dict[str, _Asset] = {}
        writes = "none" if settings.read_only else "open" if settings.insecure else "token"
        self.subst = {"__NAS_READS__": "token" if settings.protect_reads else "open", "__NAS_WRITES__": writes}

    def get(self, name: str) -> _Asset:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        if name == "plotly.min.js":
            path = plotly_js()
            if path is None:
                raise ApiError(404, "plotly.min.js: the plotly package is not installed on this server; "
                                    "pip install 'lightnas[api]' (the page shows no plots without it)")
            asset = _Asset.read(path, _MEDIA["js"], "public, max-age=86400")
        else:
            m = _FILE.match(name)
            path = WEB / name
            if m is None or not path.is_file():
                raise ApiError(404, f"no page file {name[:100]!r}; the page's files are under /ui/static/")
            asset = _Asset.read(path, _MEDIA[m.group(1)], "no-cache", self.subst if m.group(1) == "html" else None)
        self._cache[name] = asset
        return asset


def pages_router(settings: ApiSettings) -> APIRouter:
    """The web page's routes: the pages and their files (their data comes from the JSON API,
    ``GET /studies/{name}/points`` for the plot).

    Args:
        settings: the API's settings (the pages follow its rules through the JSON API).
    """
    router = APIRouter()
    assets = _Assets(settings)

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def studies_page(request: Request) -> Response:
        return assets.get("index.html").response(request, PAGE_HEADERS)

    @router.api_route("/ui/studies/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def study_page(request: Request, name: StudyName) -> Response:
        del name  # the page reads it from its URL and asks the API
        return assets.get("study.html").response(request, PAGE_HEADERS)

    @router.api_route("/ui/static/{file}", methods=["GET", "HEAD"], include_in_schema=False)
    def static(request: Request, file: Annotated[str, PathParam(max_length=100)]) -> Response:
        if file.endswith(".html"):  # pages only at their own URLs, with their headers (CSP, no framing)
            raise ApiError(404, f"no page file {file[:100]!r}; the pages are / and /ui/studies/NAME")
        return assets.get(file).response(request, {"X-Content-Type-Options": "nosniff"})

    return router
