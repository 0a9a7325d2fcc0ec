"""Result routes: trial pages, one trial (spec, cost report, metrics, lineage), exports."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from .._artifacts import load_arch
from .._errors import NasError
from .._export import export_refined as export_candidate
from .._export import export_trial
from ..search import record_of, refined_points, trial_fidelity_key
from ..workers import candidate_info
from ._errors import ApiError, responses
from ._models import PlotPoints, TrialPage
from ._state import FORMATS, MAX_INT, READ, Nas, Service, StudyName, TrialNumber, clean, trial_row

router = APIRouter()

#: The export formats of the API, as ``nas export --formats`` names them (``nas._export.FORMATS``).
ExportFormat = Literal["json", "onnx", "state_dict", "tflite", "onnx-int8"]
Format = Annotated[ExportFormat, Query(
    description="json (spec and cost), onnx, state_dict (torch.save), tflite (full-integer int8 TFLite "
                "flatbuffer, for TFLM and LiteRT), onnx-int8 (int8 QDQ ONNX, for ONNX Runtime); the int8 "
                "formats need the server's deploy extra and answer the measured figures in X-Lightnas-Deploy")]
Calibration = Annotated[int | None, Query(
    ge=1, le=100_000, description="int8 formats: training images to calibrate on (default 256; at most the "
                                  "training split)")]
INT8 = ("tflite", "onnx-int8")
#: One int8 export at a time: the converter and interpreters silence output by redirecting the process's file
#: descriptors 1 and 2 (``objectives._int8._quiet``), which two threads interleaving could leave redirected; and
#: each takes seconds of CPU the other requests need.
_INT8_LOCK = threading.Lock()
#: Format -> (media type, file name suffix, the file ``nas._export`` writes; None: json, two files in one).
FILES: dict[str, tuple[str, str, str | None]] = {
    "json": (FORMATS["json"][0], ".json", None), "onnx": (FORMATS["onnx"][0], ".onnx", "model.onnx"),
    "state_dict": (FORMATS["state_dict"][0], ".pt", "weights.pt"),
    "tflite": ("application/octet-stream", ".tflite", "model.tflite"),
    "onnx-int8": ("application/octet-stream", "_int8.onnx", "model_int8.onnx")}
#: The response header with what an int8 export measured (``info["deploy"]`` of the export, compact JSON).
DEPLOY_HEADER = "X-Lightnas-Deploy"


@router.get("/studies/{name}/trials", response_model=TrialPage, dependencies=READ,
            responses=responses(401, 404, 422), tags=["results"])
def trials(nas: Nas, name: StudyName,
           state: Annotated[Literal["complete", "pruned", "fail", "running", "waiting"] | None,
                            Query(description="only trials in this state")] = None,
           limit: Annotated[int, Query(ge=1, le=500)] = 50,
           cursor: Annotated[str | None, Query(max_length=20, description="next_cursor of the previous page")]
           = None) -> TrialPage:
    """Trials by number, a page at a time (``next_cursor`` is null on the last page)."""
    study_spec = nas.study_spec(name)
    after = -1
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_INT:
            raise ApiError(422, "cursor: not a cursor of this API; pass next_cursor of the previous page",
                           "cursor")
        after = int(cursor)
    ids = nas.store.trial_page(name, after=after, states=(state.upper(),) if state else None, limit=limit + 1)
    page = nas.store.trials_by_id(name, ids[:limit])
    more = len(ids) > limit
    return TrialPage(trials=[trial_row(study_spec, t) for t in page],
                     next_cursor=str(page[-1].number) if more and page else None)


@router.get("/studies/{name}/trials/{number}", dependencies=READ, responses=responses(401, 404, 409),
            tags=["results"])
def trial(nas: Nas, name: StudyName, number: TrialNumber) -> dict[str, Any]:
    """One trial: its architecture spec, per-layer cost report, metrics and lineage (retries,
    refinement candidates and jobs)."""
    from objectives import estimate_cost

    study_spec = nas.study_spec(name)
    t = nas.trial(name, number)
    r = record_of(t)
    out = trial_row(study_spec, t)
    h = r.spec_hash
    try:
        arch = load_arch(nas.store, h) if h else None
    except NasError:
        arch = None
    out["spec"] = arch.to_dict() if arch is not None else None
    if isinstance(t.user_attrs.get("accuracy_source"), str):  # a supernet study's: supernet or fine-tuned accuracy
        out["accuracy_source"] = t.user_attrs["accuracy_source"]
    out["params"] = t.params
    if arch is not None:
        shape = nas.shape(study_spec)
        out["cost_report"] = estimate_cost(arch, shape.input_shape, shape.num_classes,
                                           device=study_spec.cost_profile()).to_dict()
        if "hw_cost" in r.cost:
            out["cost_report"].setdefault("totals", {})["hw_cost"] = r.cost["hw_cost"]
    ev = nas.store.get_evaluation(h, trial_fidelity_key(study_spec, t)) if h else None
    out["metrics"] = {"val_accuracy": r.val_accuracy, "test_accuracy": ev.test_accuracy if ev else None,
                      "epochs_run": r.epochs_run, "train_seconds": r.train_seconds,
                      "curve": r.curve or (json.loads(ev.curve_json) if ev else None),
                      "violations": t.user_attrs.get("violations"), "constraints": t.user_attrs.get("constraints")}
    if r.fp32_accuracy is not None:  # a precision int8 study: val_accuracy is the int8 network's
        drop = r.fp32_accuracy - r.val_accuracy if r.val_accuracy is not None else None
        out["metrics"].update(fp32_accuracy=r.fp32_accuracy, int8_drop=drop)
    refinements = nas.store.get_refinements(name, parent_trial=number)
    out["lineage"] = {"retry_of": t.system_attrs.get("failed_trial"),
                      "retry_history": t.system_attrs.get("retry_history", []),
                      "worker": r.worker,
                      "refined": [candidate_info(c) for c in refinements if c.parent_spec_hash == h],
                      "jobs": [j.id for j in nas.store.list_jobs(name) if j.trial == number]}
    return clean(out)  # type: ignore[no-any-return]


@router.get("/studies/{name}/points", response_model=PlotPoints, dependencies=READ,
         responses=responses(401, 404, 409), tags=["results"])
def points(nas: Nas, name: StudyName) -> PlotPoints:
    """Every trial (accuracy, all cost totals, status, violations) and every refined candidate
    within the budget (with its lineage), and the budget's limits: what the web page plots."""
    import optuna

    study_spec = nas.study_spec(name)
    study = optuna.load_study(study_name=name, storage=nas.store.optuna)
    trials = study.get_trials(deepcopy=False)
    budget = study_spec.budget_obj()
    limits: dict[str, float] = {}
    if budget is not None:
        limits = dict(budget.limits)
        limits["hw_cost"] = sum(budget.weight(c) for c in limits)
    costs = [o for o in study_spec.objectives if o != "accuracy"] + [c for c in limits if c != "hw_cost"]
    rows = []
    for t in trials:
        a = t.user_attrs
        cost = a.get("cost") or {}
        costs += [k for k in cost if k not in costs]
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "status": a.get("status", "failed" if t.state.name == "FAIL" else None),
                     "accuracy": a.get("val_accuracy"), "cost": cost, "violations": a.get("violations"),
                     "spec_hash": (a.get("spec_hash") or "")[:12] or None})
    refined = []
    for r, m in refined_points(name, nas.store, study_spec, {t.number: t for t in trials}):
        acc = m.pop("accuracy")
        refined.append({"refined": r.id, "trial": r.parent_trial, "method": r.method, "step": r.step,
                        "parent_step": r.parent_step, "source": f"refined {r.parent_trial}/{r.method}/{r.step}",
                        "accuracy": acc, "cost": m, "spec_hash": r.spec_hash[:12]})
    return PlotPoints(study=name, objectives=study_spec.objectives, directions=study_spec.directions, limits=limits,
                      costs=costs, trials=clean(rows), refined=clean(refined))


file_responses = {**responses(401, 404, 409, 422),
                  200: {"content": {"application/json": {}, "application/octet-stream": {}},
                        "description": "the file",
                        "headers": {DEPLOY_HEADER: {
                            "description": "int8 formats only: what the export measured, compact JSON (accuracies "
                                           "in LiteRT, TFLM or ONNX Runtime on the test split, tflite.ram_bytes "
                                           "(TFLM arena), tflite.flash_bytes (file size), their predictions and "
                                           "the budget's limits, over_budget)",
                            "schema": {"type": "string"}}}}}


@router.get("/studies/{name}/trials/{number}/export", dependencies=READ, responses=file_responses,
            response_class=Response, tags=["results"])
def export(nas: Nas, name: StudyName, number: TrialNumber, format: Format = "onnx",
           calibration: Calibration = None) -> Response:
    """A trial's network as a file: ``json`` (spec, input, normalisation, cost), ``onnx``
    (checked against onnxruntime), ``state_dict``, or int8: ``tflite`` (full-integer TFLite
    flatbuffer) and ``onnx-int8`` (QDQ ONNX), calibrated on ``calibration`` training images, run
    in their runtimes and measured (header ``X-Lightnas-Deploy``; seconds, then served from
    memory). Uses the weights the search stored; a trial that was never trained has only ``json``."""
    study_spec = nas.study_spec(name)
    t = nas.trial(name, number)  # 404 for an unknown trial

    def build() -> Response:
        with tempfile.TemporaryDirectory(prefix="lightnas-export-") as tmp, _one_int8(format):
            try:
                info = export_trial(name, number, tmp, nas.store, formats=(format,), calibration=calibration)
            except NasError as e:
                raise _export_error(e, 409) from None
            return export_response(Path(tmp), format, f"{name}-trial{number}", info.get("deploy"))

    if not t.state.is_finished():
        return build()
    return cached_export(nas, (nas.identity(name), "trial", number, record_of(t).spec_hash,
                               trial_fidelity_key(study_spec, t),
                               format, calibration), build)


@router.get("/studies/{name}/refined/{refined}/export", dependencies=READ, responses=file_responses,
            response_class=Response, tags=["refinement"])
def export_refined(nas: Nas, name: StudyName, refined: Annotated[int, PathParam(ge=0, le=MAX_INT)],
                   format: Format = "onnx", calibration: Calibration = None) -> Response:
    """A refined candidate's network (ids: a job's ``candidates``, or the Pareto front with
    ``include_refined``), in the formats of a trial's export."""
    nas.study_spec(name)

    def build() -> Response:
        with tempfile.TemporaryDirectory(prefix="lightnas-export-") as tmp, _one_int8(format):
            try:
                info = export_candidate(name, refined, tmp, nas.store, formats=(format,), calibration=calibration)
            except NasError as e:
                raise _export_error(e, 404) from None
            return export_response(Path(tmp), format, f"{name}-refined{refined}", info.get("deploy"))

    return cached_export(nas, (nas.identity(name), "refined", refined, format, calibration), build)


def _one_int8(fmt: str) -> AbstractContextManager[Any]:
    return _INT8_LOCK if fmt in INT8 else nullcontext()


def _export_error(e: NasError, status: int) -> ApiError:
    """An export's refusal as the API says it: a bad request (the deploy extra missing, a calibration the
    format or the data cannot take) is a 422 on its query field, in the API's words; anything else (no
    such candidate, no trained weights) is ``status``."""
    if e.field in ("formats", "calibration"):  # the export's arguments, the API's query fields
        field = "format" if e.field == "formats" else e.field
        return ApiError(422, f"{field}: {e.message}", field)
    return ApiError(status, str(e).replace("; pass --epochs N to train it for export", ""))


def cached_export(nas: Service, key: tuple[Any, ...], build: Callable[[], Response]) -> Response:
    """:meth:`Service.cached_export`, keeping the deploy header with the file: the file of ``key`` from
    memory (least recently used dropped past ``EXPORT_CACHE``), or built by ``build``."""
    hit = nas.exports.get(key)
    if hit is None:
        r = build()
        keep = {"Content-Disposition": r.headers["content-disposition"]}
        if DEPLOY_HEADER.lower() in r.headers:
            keep[DEPLOY_HEADER] = r.headers[DEPLOY_HEADER.lower()]
        hit = nas.exports.put(key, (bytes(r.body), str(r.media_type), keep))
    return Response(hit[0], media_type=hit[1], headers=hit[2])


def export_response(tmp: Path, fmt: str, stem: str, deploy: dict[str, Any] | None = None) -> Response:
    """The exported file of format ``fmt`` in ``tmp`` as a download named ``stem`` and the format's suffix
    (``.tflite``, ``_int8.onnx``, ...); ``deploy`` (an int8 export's measured figures) as a header."""
    media, suffix, file = FILES[fmt]
    headers = {"Content-Disposition": f'attachment; filename="{stem}{suffix}"'}
    if deploy is not None:
        headers[DEPLOY_HEADER] = json.dumps(clean(deploy), separators=(",", ":"), ensure_ascii=True)
    if file is None:
        doc = {"spec": json.loads((tmp / "spec.json").read_text()),
               "model": json.loads((tmp / "model.json").read_text())}
        return JSONResponse(clean(doc), headers=headers)
    return Response((tmp / file).read_bytes(), media_type=media, headers=headers)
