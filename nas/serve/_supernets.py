"""Supernet routes (read-only): the stored weight-shared supernets, their training and their ranking check.

A supernet is trained by ``nas supernet train`` (never by the API) and checked by ``nas supernet
check``; these routes say what the database holds, as ``nas supernet list|show --format json``
do: the last check's Kendall tau and Spearman rho between supernet and stand-alone accuracy in the
listing, every pair in one supernet's view.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from .._errors import NasError
from ..search import get_supernet, require_supernet, supernet_doc
from ..workers import job_info, queued_supernet_doc, supernet_job, supernet_rows
from ._errors import ApiError, responses
from ._state import READ, Nas, clean

router = APIRouter()

SupernetName = Annotated[str, PathParam(description="supernet name", max_length=255)]


@router.get("/supernets", dependencies=READ, responses=responses(401), tags=["supernets"])
def supernets(nas: Nas) -> list[dict[str, Any]]:
    """Every stored supernet: space, data, status, size, its largest and smallest subnets' supernet
    accuracy, and its last ranking check (``kendall_tau``, ``spearman_rho``, ``check_n``,
    ``check_epochs``; null without one); a supernet queued for a worker with no epoch stored yet has its job's
    state as ``status`` and nulls for what is not measured yet."""
    return [clean(r) for r in supernet_rows(nas.store)]


@router.get("/supernets/{name}", dependencies=READ, responses=responses(401, 404), tags=["supernets"])
def supernet(nas: Nas, name: SupernetName) -> dict[str, Any]:
    """One supernet: settings, structure, size, per-epoch curve, status, its last ranking check
    (``check``: n, epochs, seed, kendall_tau, spearman_rho, every pair, when; null without one) and
    its last training job (``job``, queued by ``nas supernet train --queue``; null without one). A supernet
    queued with no epoch stored yet: its job's state as ``status``, its ``settings`` and ``job``."""
    job = supernet_job(nas.store, name)
    try:
        if job is not None and get_supernet(nas.store, name) is None:  # queued, no epoch stored yet
            return clean(queued_supernet_doc(name, job))  # type: ignore[no-any-return]
        record = require_supernet(nas.store, name)
    except NasError as e:  # unknown, or a damaged record
        raise ApiError(404, str(e)) from None
    return clean({**supernet_doc(nas.store, record),  # type: ignore[no-any-return]
                  "job": job_info(job) if job is not None else None})
