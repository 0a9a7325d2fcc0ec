"""Export a trial's or a refined candidate's network: spec JSON, cost report, state_dict, ONNX checked in
onnxruntime."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from objectives import estimate_cost, train_model
from search_spaces import ArchSpec, build_model
from storage import Store

from ._artifacts import load_arch, load_network, weights_key
from ._errors import NasError
from .search import DataShape, StudySpec, get_study_spec, record_of, study_data

__all__ = ["export_onnx", "export_refined", "export_trial"]


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], path: Path) -> float:
    """Write ``model`` as ONNX (dynamic batch) and return the largest |difference| between
    onnxruntime's and PyTorch's outputs on a random batch."""
    import onnxruntime as ort

    model = model.eval().cpu()
    x = torch.randn(4, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def export_trial(name: str, number: int, to: str | Path, store: Store, *, epochs: int | None = None,
                 formats: tuple[str, ...] = ("json", "state_dict", "onnx")) -> dict[str, Any]:
    """Write the trial's files into ``to``; returns what was written and the ONNX check.

    Weights are those trained at the study's fidelity, or retrained for ``epochs`` when given;
    ``formats=("json",)`` (the spec and cost report) needs no weights.

    Raises:
        NasError: unknown study/trial, trial never trained (over budget or failed), bad format.
    """
    _check_formats(formats)
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
            raise NasError(f"--epochs: must be >= 1, got {epochs}")
        data = study_spec.load_data()
        torch.manual_seed(study_spec.seed)
        model = build_model(arch, data.input_shape, data.num_classes)
        res = train_model(model, data, study_spec.train_config(epochs=epochs), evaluate_test=True)
        info.update(retrained_epochs=epochs, val_accuracy=res.val_accuracy, test_accuracy=res.test_accuracy)
        model = model.cpu()
    elif set(formats) - {"json"}:
        stored = load_network(store, arch, weights_key(h, study_spec.fidelity_key), shape.input_shape,
                              shape.num_classes)
        if stored is None:
            raise NasError(f"trial {number} has no trained weights (status {r.status or t.state.name.lower()}); "
                           "pass --epochs N to train it for export")
        model = stored
    else:  # the spec alone (json) needs no weights
        model = build_model(arch, shape.input_shape, shape.num_classes)
    meta = {"study": name, "trial": number}
    info.update(_write(arch, model, shape, study_spec, Path(to), formats, meta))
    return info


def _check_formats(formats: tuple[str, ...]) -> None:
    bad = set(formats) - {"json", "state_dict", "onnx"}
    if bad:
        raise NasError(f"--formats: unknown {sorted(bad)}; accepted: json, state_dict, onnx")


def _write(arch: ArchSpec, model: torch.nn.Module, data: DataShape, study_spec: StudySpec, out: Path,
           formats: tuple[str, ...], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the requested files of one network into ``out``; returns ``files`` (and the ONNX check)."""
    info: dict[str, Any] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lightnas-write-{os.getpid()}"
        probe.write_bytes(b"")  # a read-only place fails here, before any network is exported
        probe.unlink()
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        what = "exists and is not a directory" if out.exists() and not out.is_dir() else \
            f"cannot be written ({getattr(e, 'strerror', None) or e})"
        raise NasError(f"--to: {out} {what}; accepted: a directory you may write (created if missing)") from None
    written = []
    if "json" in formats:
        (out / "spec.json").write_text(arch.to_json(indent=2) + "\n")
        report = estimate_cost(arch, data.input_shape, data.num_classes, device=study_spec.cost_device)
        meta = {**meta, "input_shape": list(data.input_shape), "num_classes": data.num_classes, "data": study_spec.data,
                "mean": list(data.mean), "std": list(data.std), "cost": report.to_dict(rows=False)}
        (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        written += ["spec.json", "model.json"]
    if "state_dict" in formats:
        torch.save(model.state_dict(), out / "weights.pt")
        written.append("weights.pt")
    if "onnx" in formats:
        info["onnx_max_abs_diff"] = export_onnx(model, data.input_shape, out / "model.onnx")
        if info["onnx_max_abs_diff"] > 1e-3:
            raise RuntimeError(f"ONNX output differs from PyTorch by {info['onnx_max_abs_diff']:.2e}")
        written.append("model.onnx")
    info["files"] = [str(out / w) for w in written]
    return info


def export_refined(name: str, refinement_id: int, to: str | Path, store: Store, *,
                   formats: tuple[str, ...] = ("json", "state_dict", "onnx")) -> dict[str, Any]:
    """Write a refinement candidate's files (as :func:`export_trial`), with its lineage in
    ``model.json``: parent trial, step, parent step, method, settings, accuracies.

    Raises:
        NasError: unknown study, or no candidate ``refinement_id`` in this study; bad format.
    """
    _check_formats(formats)
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
                       {"study": name, "refined": refinement_id, "lineage": lineage}))
    return info
