"""Service routes: health (always open), search spaces, device profiles."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from .._version import __version__
from ._errors import error_response, responses
from ._models import Health
from ._state import READ, Nas, clean

router = APIRouter()


@router.get("/health", response_model=Health, responses=responses(503), tags=["service"])
def health(nas: Nas) -> Any:
    """Whether the database answers (503 if not). Always open: for load balancers and probes."""
    try:
        version = nas.store.schema_version
    except SQLAlchemyError:
        return error_response(503, "database unavailable")
    backend = "postgresql" if nas.store.is_postgres else "sqlite"
    return Health(status="ok", database=backend, schema_version=version, version=__version__)


@router.get("/spaces", dependencies=READ, responses=responses(401), tags=["service"])
def spaces() -> list[dict[str, Any]]:
    """The registered search spaces and their options (what ``space`` and ``space_options`` accept)."""
    from search_spaces import list_spaces, space_class

    return [clean({"name": n, "description": space_class(n).description,
                    "options": [{"name": k, "default": list(d) if isinstance(d, tuple) else d, "help": h}
                                for k, d, h in space_class(n).option_help()]}) for n in list_spaces()]


@router.get("/devices", dependencies=READ, responses=responses(401), tags=["service"])
def devices(nas: Nas) -> list[dict[str, Any]]:
    """Device profiles (what ``cost_device`` accepts: this server's and its database's), each number
    with its source."""
    from objectives import DeviceError, get_device, list_devices

    stored = nas.store.device_profiles()
    out = []
    for n in list_devices(stored):
        try:
            out.append(clean(get_device(n, stored).model_dump()))
        except DeviceError:
            if n not in stored:
                raise
            # a database entry that no longer reads (another version wrote it): not offered
    return out
