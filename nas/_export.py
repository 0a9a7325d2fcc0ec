"""Export a trial's or a refined candidate's network: spec JSON, cost report, state_dict, ONNX checked in
onnxruntime."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from objectives import check_out_dir, estimate_cost, train_model, write_files, write_onnx
from search_spaces import ArchSpec, build_model
from storage import Store

from ._artifacts import int8_key, load_arch, load_network, weights_key
from ._errors import NasError
from .search import DataShape, Status, StudySpec, get_study_spec, record_of, study_data, trial_fidelity_key

__all__ = ["EXPORT_FORMATS", "FORMATS", "TFLM_IMAGES", "export_onnx", "export_refined", "export_trial"]

#: What ``nas export --formats`` writes: the spec and cost report, the state_dict, fp32 ONNX, the int8 TFLite
#: flatbuffer (full integer, for TFLM and LiteRT), the int8 ONNX QDQ model (ONNX Runtime).
FORMATS = ("json", "state_dict", "onnx", "tflite", "onnx-int8")
INT8_FORMATS = ("tflite", "onnx-int8")
EXPORT_FORMATS = FORMATS  # the name the ``nas`` face gives it
#: Test images run through TFLM's reference kernels at export (an interpreter call per image, in Python).
TFLM_IMAGES = 1000


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], path: Path) -> float:
    """Write ``model`` as ONNX (dynamic batch) and return the largest |difference| between
    onnxruntime's and PyTorch's outputs on a random batch."""
    import onnxruntime as ort

    x = write_onnx(model, input_shape, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def export_trial(name: str, number: int, to: str | Path, store: Store, *, epochs: int | None = None,
                 formats: tuple[str, ...] = ("json", "state_dict", "onnx"), calibration: int | None = None,
                 strict: bool = False) -> dict[str, Any]:
    """Write the trial's files into ``to``; returns what was written and the ONNX check.

    Weights are those trained at the study's fidelity, or retrained for ``epochs`` when given;
    ``formats=("json",)`` (the spec and cost report) needs no weights. The int8 formats (``tflite``,
    ``onnx-int8``) are calibrated on ``calibration`` training images (default 256), run in their
    runtimes on the test split, measured (TFLM arena, file size) and checked against the study's
    ``ram``/``flash`` limits; ``strict``: an artifact over them is an error and nothing is written.

    Raises:
        NasError: unknown study/trial, trial never trained (over budget or failed), bad format, an
            empty ``to``, ``epochs`` outside 1..10,000.
    """
    if isinstance(to, str) and not to.strip():  # Path("") is the working directory
        raise NasError("empty; accepted: a directory you may write (created if missing), e.g. out/", field="to")
    if epochs is not None and not 1 <= epochs <= 10_000:
        raise NasError(f"got {epochs}; accepted: 1 to 10,000 epochs (as many as a study's fidelity)", field="epochs")
    _check_formats(formats, calibration)
    _check_out(Path(to))  # a place that cannot be written: refused before minutes of training or conversion
    study_spec = get_study_spec(name, store)
    study = optuna.load_study(study_name=name, storage=store.optuna)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise NasError(f"study {name!r} has no trial {number}; trials are 0..{max(trials, default=-1)}")
    t = trials[number]
    r = record_of(t)
    h = r.spec_hash
    if h is None:
        raise NasError(f"trial {number} has no architecture (state {t.state.name})")
    arch = load_arch(store, h)
    shape = study_data(study_spec, store)
    info: dict[str, Any] = {"trial": number, "spec_hash": h}
    if epochs is not None:
        if epochs < 1:
            raise NasError(f"must be >= 1, got {epochs}", field="epochs")
        data = study_spec.load_data()
        torch.manual_seed(study_spec.seed)
        model = build_model(arch, data.input_shape, data.num_classes)
        res = train_model(model, data, study_spec.train_config(epochs=epochs), evaluate_test=True)
        info.update(retrained_epochs=epochs, val_accuracy=res.val_accuracy, test_accuracy=res.test_accuracy)
        model = model.cpu()
    elif set(formats) - {"json"}:
        fkey = trial_fidelity_key(study_spec, t)  # a fine-tuned member's evaluation is at its own fidelity
        stored = load_network(store, arch, weights_key(h, fkey), shape.input_shape, shape.num_classes)
        if stored is None:
            raise NasError(f"trial {number} has no trained weights (status {r.status or t.state.name.lower()}); "
                           "pass --epochs N to train it for export")
        model = stored
        if r.status == Status.FINETUNED:  # said, not silent: not a stand-alone training from scratch
            info["note"] = f"note: weights {t.user_attrs.get('accuracy_source', 'finetuned from a supernet')}"
        elif r.status != Status.TRAINED:  # its evaluation reused: whose training made these weights
            info["note"] = _weights_from(store, name, h, study_spec.fidelity_key)
    else:  # the spec alone (json) needs no weights
        model = build_model(arch, shape.input_shape, shape.num_classes)
    meta: dict[str, Any] = {"study": name, "trial": number}
    if isinstance(t.user_attrs.get("accuracy_source"), str) and epochs is None:  # supernet or fine-tuned accuracy
        meta["accuracy_source"] = t.user_attrs["accuracy_source"]
    qat = int8_key(h, study_spec) if t.user_attrs.get("int8_method") == "qat" and epochs is None else None
    info.update(_write(arch, model, shape, study_spec, Path(to), formats, meta,
                       deploy=_Deploy(store, calibration, strict, f"{h}/{study_spec.fidelity_key}", qat)))
    return info


def _weights_from(store: Store, name: str, spec_hash: str, fidelity_key: str) -> str | None:
    """For a trial that reused a stored evaluation: where its weights were trained, when not in study
    ``name`` itself (another study of the same data and fidelity trained the same architecture)."""
    for study, number in store.trained_by(spec_hash):
        if study == name:
            return None
        try:
            other = get_study_spec(study, store)
        except NasError:  # a study whose spec no longer reads: not the trainer we can name
            continue
        if other.fidelity_key == fidelity_key:
            return f"note: weights trained by study {study!r} trial {number} (same architecture and fidelity)"
    return ("note: weights trained by a study no longer in this database (same architecture and fidelity); "
            "this trial reused them")


def _check_formats(formats: tuple[str, ...], calibration: int | None = None) -> None:
    bad = set(formats) - set(FORMATS)
    if bad:
        raise NasError(f"unknown {sorted(bad)}; accepted: {', '.join(FORMATS)}", field="formats")
    if set(formats) & set(INT8_FORMATS):
        from objectives import DeployError, require_deploy

        try:
            require_deploy(",".join(f for f in formats if f in INT8_FORMATS))
        except DeployError as e:
            raise NasError(e.message, field="formats") from None
    elif calibration is not None:
        raise NasError("applies to the int8 formats (tflite, onnx-int8) only", field="calibration")
    if calibration is not None and calibration < 1:
        raise NasError(f"need at least 1 training image, got {calibration}", field="calibration")


class _Deploy:
    """How the int8 artifacts of one export are made: calibration images, strictness, where the measured
    figures are stored (artifact key ``deploy/<spec hash>/<fidelity or refinement>/<format>-cal<N>.json``)."""

    def __init__(self, store: Store, calibration: int | None, strict: bool, key: str, qat: str | None = None) -> None:
        self.store, self.calibration, self.strict, self.key = store, calibration or 256, strict, key
        self.qat = qat  # the artifact key of the trial's quantization-aware fine-tuned int8 network, if it has one


def _int8_artifacts(arch: ArchSpec, model: torch.nn.Module, study_spec: StudySpec, formats: tuple[str, ...],
                    deploy: _Deploy) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The int8 files (in memory) and what was measured of them: accuracies in their runtimes on the test
    split, top-1 agreement with the PyTorch model, the TFLM arena and the file size against the
    prediction and the study's limits."""
    import objectives.deploy as ob
    from objectives import flash_bytes, ram_bytes

    data = study_spec.load_data(whole_train=True)
    n_train = len(data.x_train)
    if deploy.calibration > n_train:
        raise NasError(f"{deploy.calibration} images asked, the training split has {n_train}; "
                       f"accepted: 1..{n_train}", field="calibration")
    model = model.cpu().eval()
    x_cal = data.x_train[:deploy.calibration].cpu()
    x, y = data.x_test.cpu(), data.y_test.cpu()
    split = "test"
    if len(y) == 0:
        x, y, split = data.x_val.cpu(), data.y_val.cpu(), "validation"
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 512]) for i in range(0, len(x), 512)]).argmax(1) if len(x) else y

    def scores(pred: np.ndarray | torch.Tensor, n: int | None = None) -> dict[str, Any]:
        p = torch.as_tensor(np.asarray(pred)).reshape(-1)
        yy, rr = (y, ref) if n is None else (y[:n], ref[:n])
        return {"accuracy": float((p == yy).float().mean()), "agreement": float((p == rr).float().mean()),
                "images": int(len(p))}

    shape = data.input_shape
    budget = study_spec.budget_obj()
    limits = {c.name: c.value for c in budget.conditions} if budget is not None else {}
    files: dict[str, bytes] = {}
    info: dict[str, Any] = {"calibration": deploy.calibration, "split": split,
                            "fp32": {"accuracy": float((ref == y).float().mean()) if len(y) else None}}
    over: list[str] = []
    if "tflite" in formats:
        blob = deploy.store.get_artifact(deploy.qat) if deploy.qat else None
        q = ob.load_int8(blob, shape) if blob is not None else ob.quantize_ptq(model, x_cal)
        info["int8_method"] = "qat" if blob is not None else "ptq"
        tfl = ob.to_tflite(q)
        arena = ob.tflm_arena(tfl)
        io = ob.io_quantization(tfl)
        sim = ob.simulated_logits(q, x).argmax(1)
        litert = ob.run_litert(tfl, x).argmax(1)
        tflm = ob.run_tflm(tfl, x[:TFLM_IMAGES], arena=arena.arena).argmax(1)
        ram_pred = ram_bytes(arch, shape, data.num_classes)
        flash_pred = flash_bytes(arch, shape, data.num_classes)
        rec: dict[str, Any] = {
            "file": "model.tflite", "flash_bytes": len(tfl), "flash_predicted": flash_pred,
            "ram_bytes": arena.arena, "ram_predicted": ram_pred, "arena_planned": arena.head,
            "arena_persistent": arena.tail, "arena_parts": arena.parts,
            "simulated": scores(sim), "litert": scores(litert), "tflm": scores(tflm, TFLM_IMAGES),
            "simulated_vs_litert": float((sim == torch.as_tensor(litert)).float().mean()),
            "input": {**io["input"], "normalisation": ob.input_recipe(io["input"]["scale"], io["input"]["zero_point"],
                                                                      data.mean, data.std)},
            "output": io["output"]}
        for res, measured in (("ram_bytes", arena.arena), ("flash_bytes", len(tfl))):
            if res in limits:
                rec[f"{res}_limit"] = limits[res]
                if measured > limits[res]:
                    over.append(f"{res.removesuffix('_bytes')} {measured:,} B > {limits[res]:,.0f} B")
        rec["within_budget"] = not over
        files["model.tflite"] = tfl
        info["tflite"] = rec
    if "onnx-int8" in formats:

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model_int8.onnx"
            ob.to_onnx_int8(model, x_cal, path)
            files["model_int8.onnx"] = path.read_bytes()
            pred = ob.run_onnx(path, x).argmax(1)
        info["onnx-int8"] = {"file": "model_int8.onnx", "bytes": len(files["model_int8.onnx"]),
                             "onnxruntime": scores(pred)}
    if over and deploy.strict:
        raise NasError(f"the int8 artifact is over the study's budget ({'; '.join(over)}); nothing written",
                       field="strict")
    info["over_budget"] = over
    for fmt in INT8_FORMATS:
        if fmt in info:
            deploy.store.put_artifact(f"deploy/{deploy.key}/{fmt}-cal{deploy.calibration}.json",
                                      json.dumps(info[fmt]).encode())
    return files, info


def _write(arch: ArchSpec, model: torch.nn.Module, data: DataShape, study_spec: StudySpec, out: Path,
           formats: tuple[str, ...], meta: dict[str, Any], deploy: _Deploy | None = None) -> dict[str, Any]:
    """Write the requested files of one network into ``out``; returns ``files`` (and the ONNX check)."""
    info: dict[str, Any] = {}
    int8_files: dict[str, bytes] = {}
    if deploy is not None and set(formats) & set(INT8_FORMATS):
        int8_files, info["deploy"] = _int8_artifacts(arch, model, study_spec, formats, deploy)
    _check_out(out)
    files: dict[str, bytes] = {}
    if "json" in formats:
        report = estimate_cost(arch, data.input_shape, data.num_classes, device=study_spec.cost_profile())
        meta = {**meta, "input_shape": list(data.input_shape), "num_classes": data.num_classes, "data": study_spec.data,
                "mean": list(data.mean), "std": list(data.std), "cost": report.to_dict(rows=False)}
        if "deploy" in info:
            meta["deploy"] = info["deploy"]
        files["spec.json"] = (arch.to_json(indent=2) + "\n").encode()
        files["model.json"] = (json.dumps(meta, indent=2) + "\n").encode()
    if "state_dict" in formats:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        files["weights.pt"] = buf.getvalue()
    if "onnx" in formats:
        with tempfile.TemporaryDirectory(prefix="lightnas-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            info["onnx_max_abs_diff"] = export_onnx(model, data.input_shape, path)
            if info["onnx_max_abs_diff"] > 1e-3:
                raise RuntimeError(f"ONNX output differs from PyTorch by {info['onnx_max_abs_diff']:.2e}")
            files["model.onnx"] = path.read_bytes()
    files.update(int8_files)
    # All or nothing: each file under a temporary name, renamed once all are written (a full disk or a
    # kill never leaves half a file under its name, nor a directory this export created).
    written = write_files(out, files, "to", error=NasError)
    info["files"] = written
    return info


def _check_out(out: Path) -> None:
    """Refuse a ``--to`` this process cannot write, in one line, before any work (nothing is created)."""
    check_out_dir(out, "to", error=NasError)


def export_refined(name: str, refinement_id: int, to: str | Path, store: Store, *,
                   formats: tuple[str, ...] = ("json", "state_dict", "onnx"), calibration: int | None = None,
                   strict: bool = False) -> dict[str, Any]:
    """Write a refinement candidate's files (as :func:`export_trial`), with its lineage in
    ``model.json``: parent trial, step, parent step, method, settings, accuracies.

    Raises:
        NasError: unknown study, or no candidate ``refinement_id`` in this study; bad format, an empty ``to``.
    """
    if isinstance(to, str) and not to.strip():  # Path("") is the working directory
        raise NasError("empty; accepted: a directory you may write (created if missing), e.g. out/", field="to")
    _check_formats(formats, calibration)
    _check_out(Path(to))
    study_spec = get_study_spec(name, store)
    row = store.get_refinement(refinement_id)
    if row is None or row.study != name:
        ids = [r.id for r in store.get_refinements(name)]
        known = f"its candidates: {', '.join(map(str, ids[:20]))}{' ...' if len(ids) > 20 else ''}" if ids \
            else "it has none; run 'nas refine' first"
        raise NasError(f"study {name!r} has no refined candidate {refinement_id}; {known} "
                       "(see 'nas pareto NAME --include-refined')")
    shape = study_data(study_spec, store)
    model = load_network(store, load_arch(store, row.spec_hash), row.artifact_key, shape.input_shape,
                         shape.num_classes)
    if model is None:
        raise NasError(f"refined candidate {refinement_id} has lost its weights ({row.artifact_key})")
    lineage = {"parent_trial": row.parent_trial, "parent_spec_hash": row.parent_spec_hash, "step": row.step,
               "parent_step": row.parent_step, "method": row.method, "settings": json.loads(row.settings_json),
               "detail": json.loads(row.detail_json), "val_accuracy": row.val_accuracy,
               "test_accuracy": row.test_accuracy}
    info: dict[str, Any] = {"refined": refinement_id, "spec_hash": row.spec_hash, "parent_trial": row.parent_trial,
                            "step": row.step, "method": row.method}
    info.update(_write(model.spec, model, shape, study_spec, Path(to), formats,
                       {"study": name, "refined": refinement_id, "lineage": lineage},
                       deploy=_Deploy(store, calibration, strict, f"{row.spec_hash}/refined-{refinement_id}")))
    return info
