"""Refinement routes: queue a refinement (a worker runs it), its jobs and their candidates."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi import Path as PathParam

from .._errors import NasError
from ..refine import RefineSettings, check_parent
from ..workers import job_info, queue_refinement
from ._errors import ApiError, responses
from ._models import Job, JobList
from ._state import MAX_INT, READ, WRITE, Nas, StudyName, TrialNumber, clean

router = APIRouter()


@router.post("/studies/{name}/trials/{number}/refine", status_code=202, response_model=Job, dependencies=WRITE,
             responses={**responses(401, 403, 404, 409, 413, 422),
                        200: {"model": Job, "description": "the same work was requested before: that job"}},
             tags=["refinement"])
def refine(nas: Nas, name: StudyName, number: TrialNumber, response: Response,
           settings: Annotated[RefineSettings | None, Body(description="refinement settings (all optional)")]
           = None) -> Job:
    """Queue a refinement of the trial (dynamic pruning, layer fusion, optional low rank) for a
    worker; 202 with the job, whose status ``GET .../jobs/{id}`` reads. The same request again
    returns the job that does (or did) that work, with 200."""
    nas.study_spec(name)
    nas.trial(name, number)  # 404 for an unknown trial
    try:
        check_parent(name, number, nas.store)
    except NasError as e:
        raise ApiError(409, str(e)) from None
    job, created = queue_refinement(name, number, nas.store, settings or RefineSettings())
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/studies/{name}/jobs/{job.id}"
    return Job(**clean(job_info(job, nas.store)))


@router.get("/studies/{name}/jobs", response_model=JobList, dependencies=READ, responses=responses(401, 404),
            tags=["refinement"])
def jobs(nas: Nas, name: StudyName,
         state: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None) -> JobList:
    """The study's refinement jobs, oldest first."""
    nas.study_spec(name)
    return JobList(jobs=[Job(**clean(job_info(j))) for j in nas.store.list_jobs(name, state=state)])


@router.get("/studies/{name}/jobs/{job_id}", response_model=Job, dependencies=READ, responses=responses(401, 404),
            tags=["refinement"])
def job(nas: Nas, name: StudyName, job_id: Annotated[int, PathParam(ge=0, le=MAX_INT)]) -> Job:
    """A job: state (queued, running, done, failed), progress, error, and the candidates it stored."""
    nas.study_spec(name)
    row = nas.store.get_job(job_id)
    if row is None or row.study != name:
        raise ApiError(404, f"study {name!r} has no job {job_id}; GET /studies/{name}/jobs lists them")
    return Job(**clean(job_info(row, nas.store)))
