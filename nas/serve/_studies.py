"""Study routes: create (budget first), list, show, set the target, delete, the Pareto front."""

from __future__ import annotations

from typing import Annotated

import optuna
from fastapi import APIRouter, Query, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from .._errors import NasError, StudyExists, UnknownStudy
from ..search import (
    StudySpec,
    arch_from_doc,
    create_study,
    delete_study,
    pareto_rows,
    validation_error,
    where_filter,
)
from ._errors import ApiError, responses
from ._models import ParetoAnswer, StudyCreate, StudyInfo, StudyList, TargetUpdate
from ._state import READ, WRITE, Nas, StudyName, clean

router = APIRouter()


@router.post("/studies", status_code=201, response_model=StudyInfo, dependencies=WRITE,
             responses=responses(401, 403, 409, 413, 422), tags=["studies"])
def create(nas: Nas, body: StudyCreate) -> StudyInfo:
    """Create a study. Workers start on it at once, unless ``target`` is 0."""
    from objectives import list_devices

    taken = ApiError(409, f"study {body.name!r} already exists; choose another name or DELETE it first", "name")
    if nas.store.get_study(body.name) is not None:
        raise taken
    data = nas.check_data(body.data)
    # The body held a profile name (never a path, see StudyCreate); here, off the event loop, it must name a
    # profile of this server or of its study database, and the spec is validated in full against them.
    stored = nas.store.device_profiles()
    known = list_devices(stored)
    if body.cost_device not in known:
        raise ApiError(422, f"cost_device: {body.cost_device!r} is not a device profile of this server; accepted: "
                            f"{', '.join(known)}", "cost_device")
    try:
        study_spec = StudySpec.model_validate({**body.model_dump(exclude={"target", "enqueue", "warm_start"}),
                                               "data": data}, context={"profiles": stored})
    except ValidationError as e:
        error = validation_error(e.errors()[0])
        raise ApiError(422, str(error), error.field) from None
    enqueue = []
    for i, doc in enumerate(body.enqueue):
        try:
            enqueue.append((f"enqueue[{i}]", arch_from_doc(doc)))
        except NasError as e:
            raise ApiError(422, f"enqueue[{i}]: {e}", "enqueue") from None
    try:  # budget first: refused (422), warned or fitted, warm start checked, before any write
        plan = create_study(study_spec, nas.store, target=body.target, enqueue=enqueue, warm_start=body.warm_start)
    except NasError as e:
        field = "enqueue" if e.field in {src for src, _ in enqueue} else e.field  # enqueue[i]: the body's field
        raise ApiError(409 if isinstance(e, StudyExists) else 422, str(e), field) from None
    except (optuna.exceptions.DuplicatedStudyError, IntegrityError):  # the same name created concurrently
        raise taken from None
    info = nas.info(plan.study_spec.name, with_front=False)
    info.warnings = list(plan.warnings)
    if plan.warm is not None:
        info.warm_start = {"enqueued": [src for src, _ in plan.warm.enqueued],
                           "skipped": [{"source": src, "reason": why} for src, why in plan.warm.skipped]}
    return info


@router.get("/studies", response_model=StudyList, dependencies=READ, responses=responses(401), tags=["studies"])
def studies(nas: Nas) -> StudyList:
    """Every study with its target and counts by state."""
    out = []
    for r in nas.store.list_studies():
        try:
            out.append(nas.info(r.name, with_front=False))
        except ApiError as e:
            if e.status_code != 404:
                raise
            # deleted by another client since the list was read: not a study any more
    return StudyList(studies=out)


@router.get("/studies/{name}", response_model=StudyInfo, dependencies=READ, responses=responses(401, 404),
            tags=["studies"])
def study(nas: Nas, name: StudyName) -> StudyInfo:
    """Spec, target, finished trials, counts by state, Pareto-front size and refinement jobs."""
    return nas.info(name)


@router.patch("/studies/{name}", response_model=StudyInfo, dependencies=WRITE,
              responses=responses(401, 403, 404, 409, 413, 422), tags=["studies"])
def set_target(nas: Nas, name: StudyName, body: TargetUpdate) -> StudyInfo:
    """Set the target of networks evaluated within the budget: raising it starts or extends the
    search (workers pick it up); setting it to the count so far pauses it. It cannot go below
    the networks already evaluated (samples rejected over budget do not count)."""
    nas.study_spec(name)
    with nas.store.lock(f"study:{name}"):  # the workers' slot lock: the count and the write agree
        finished = nas.store.study_counts(name)["COUNTED"]
        if body.target < finished:
            raise ApiError(409, f"target: {name!r} has {finished} networks evaluated within its budget already; "
                                f"the target can be {finished} (pause) or more", "target")
        nas.store.set_target(name, body.target)
    return nas.info(name, with_front=False)


@router.delete("/studies/{name}", status_code=204, dependencies=WRITE, responses=responses(401, 403, 404),
               tags=["studies"])
def delete(nas: Nas, name: StudyName) -> Response:
    """Delete the study, its trials and its queued jobs (architectures and evaluations stay for reuse);
    also a study whose stored spec no longer reads."""
    try:
        delete_study(name, nas.store)  # of concurrent deletes one wins, the others find it gone: 404
    except UnknownStudy:
        raise ApiError(404, f"unknown study {name!r}; GET /studies lists them") from None
    nas.forget(name)
    return Response(status_code=204)


@router.get("/studies/{name}/pareto", response_model=ParetoAnswer, dependencies=READ,
            responses=responses(401, 404, 422), tags=["results"])
def pareto(nas: Nas, name: StudyName,
           where: Annotated[str | None, Query(max_length=1000, description="e.g. 'flops<=1M accuracy>=0.95'")]
           = None,
           include_refined: Annotated[bool, Query(description="refined candidates join the front")] = False,
           past_drop: Annotated[bool, Query(description="with include_refined: also candidates past their run's "
                                                        "max_drop (stored, not offered by default)")] = False
           ) -> ParetoAnswer:
    """The feasible Pareto front under ``where`` (the CLI's filter language). ``test_accuracy``
    is the stored one (measured once by ``nas pareto`` or ``nas export``), null until then:
    a read never runs a network or writes."""
    study_spec = nas.study_spec(name)
    try:
        where_filter(where)
    except NasError as e:
        raise ApiError(422, str(e), e.field) from None
    rows = pareto_rows(name, nas.store, where=where, include_refined=include_refined, measure_test=False,
                       past_drop=past_drop)
    return ParetoAnswer(study=name, where=where, objectives=study_spec.objectives, rows=clean(rows))
