"""``nas pareto``, ``nas export``, ``nas report``: the front, its networks as files, its plot."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ._common import STORAGE_HELP, Format, UsageError, app, check_out_dir, emit, err, open_store, out, si

PARETO_COLS = ("trial", "spec_hash", "accuracy", "test_accuracy", "hw_cost", "flops", "params",
               "peak_activation_bytes", "latency_ms")
#: ``nas pareto --deploy``: what a user needs to pick a network and ship it.
DEPLOY_COLS = ("int8_accuracy", "fp32_accuracy", "int8_drop", "ram_bytes", "flash_bytes", "macs", "latency_ms")



@app.command("pareto")
def pareto_cmd(
    name: str = typer.Argument(..., help="study name"),
    where: str | None = typer.Option(None, "--where", help="filter, e.g. 'flops<=1M accuracy>=0.95'"),
    fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    include_refined: Annotated[bool, typer.Option(
        "--include-refined", help="refined candidates ('nas refine') join the front, marked in 'source'")] = False,
    past_drop: Annotated[bool, typer.Option(
        "--past-drop", help="with --include-refined: also candidates further below the pruned model than the run's "
                            "--max-drop allowed (stored, not offered by default)")] = False,
    deploy: Annotated[bool, typer.Option(
        "--deploy", help="the deployment table: per member int8 accuracy (and the drop from fp32) where the study "
                         "measures it (--precision int8), RAM (TFLM arena) and flash (.tflite size) of its int8 "
                         "artifact, MACs and latency on the study's profile")] = False,
) -> None:
    """The feasible Pareto front (accuracy vs cost) with spec hash, costs and test accuracy."""
    from ..search import pareto_rows

    store = open_store(storage)
    rows = pareto_rows(name, store, where=where, include_refined=include_refined, past_drop=past_drop,
                       deploy=deploy)
    warn_damaged(name, store)
    from ..search import get_study_spec

    on_supernet = get_study_spec(name, store).supernet
    if on_supernet is not None:  # never presented as stand-alone accuracy: supernet or fine-tuned, per row
        rows = [r if str(r.get("source", "")).startswith("refined") else
                {**r, "accuracy_source": r.get("accuracy_source") or f"supernet {on_supernet}"} for r in rows]
    if fmt is Format.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    cols: tuple[str, ...] = ("source", "refined", *PARETO_COLS) if include_refined else PARETO_COLS
    if deploy:
        cols = (*cols[:cols.index("spec_hash") + 1], *DEPLOY_COLS)
    finetuned = on_supernet is not None and any(str(r.get("accuracy_source", "")).startswith("finetuned")
                                                for r in rows)
    if finetuned:  # two sources on one front: each row says which
        cols = (*cols[:cols.index("spec_hash") + 1], "accuracy_source", *cols[cols.index("spec_hash") + 1:])
    flat = [{k: r.get(k) for k in cols} for r in rows]
    if fmt is Format.csv:
        emit(flat, fmt)
        return
    if not rows:
        out.print(f"{name}: no evaluated architecture within the budget{' and --where' if where else ''} yet")
        return
    title = f"{'Deployment table' if deploy else 'Pareto front'} of {name}" + (f" where {where}" if where else "")
    if finetuned:
        title += (f" (accuracy: per row, supernet accuracy from supernet {on_supernet} or fine-tuned from its "
                  "weights; neither is stand-alone)")
    elif on_supernet is not None:
        title += f" (accuracy: supernet accuracy from supernet {on_supernet}, not stand-alone)"
    emit(flat, fmt, title, {k: lambda v: "" if v is None else si(float(v))
                            for k in ("flops", "params", "peak_activation_bytes", "macs", "ram_bytes", "flash_bytes")})


def warn_damaged(name: str, store: object, shown: int = 5) -> list[dict[str, object]]:
    """A warning on stderr per trial of study ``name`` whose stored attributes cannot be read (a
    damaged row): the command shows the others, and these are left out of the front. Returns them."""
    import optuna

    from ..search import damaged_trials

    trials = optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)  # type: ignore[attr-defined]
    bad = damaged_trials(trials)
    for number, why in bad[:shown]:
        err.print(f"warning: study {name!r} trial {number} is left out of the front: {why}", highlight=False,
                  markup=False, soft_wrap=True)
    if len(bad) > shown:
        err.print(f"warning: study {name!r}: {len(bad) - shown} more trials with damaged attributes are left out",
                  highlight=False, markup=False, soft_wrap=True)
    return [{"trial": n, "damaged": why} for n, why in bad]


@app.command("export")
def export_cmd(
    name: str = typer.Argument(..., help="study name"),
    trial: int = typer.Option(None, "--trial", help="trial number"),
    to: str = typer.Option(..., "--to", help="output directory"),
    epochs: int = typer.Option(None, "--epochs", help="retrain for N epochs instead of using stored weights"),
    formats: str = typer.Option("json,state_dict,onnx", "--formats",
                                help="comma list of json, state_dict, onnx (fp32), tflite (full-integer int8 for "
                                     "TFLM and LiteRT), onnx-int8 (ONNX Runtime QDQ); the int8 formats need "
                                     "lightnas[deploy]"),
    calibration: int = typer.Option(None, "--calibration",
                                    help="int8 formats: training images that calibrate the activation ranges "
                                         "(default 256)"),
    strict: bool = typer.Option(False, "--strict", help="int8 formats: an artifact whose measured RAM (TFLM "
                                "arena) or flash (file size) is over the study's ram/flash limits is an error "
                                "(exit 2, nothing written)"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    refined: Annotated[int | None, typer.Option(
        "--refined", help="a refined candidate's id (column 'refined' of 'nas pareto --include-refined')")] = None,
) -> None:
    """Export a trial or a refined candidate: spec JSON, state_dict, ONNX (checked against onnxruntime)."""
    from .._export import export_refined, export_trial

    if (trial is None) == (refined is None):
        raise UsageError("give exactly one of --trial N (a trial) or --refined ID (a refined candidate, see "
                         "'nas pareto NAME --include-refined')")
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    if not fmts:
        raise UsageError(f"--formats: give at least one of json, state_dict, onnx, tflite, onnx-int8 (comma list), "
                         f"got {formats!r}")
    if refined is not None:
        if epochs is not None:
            raise UsageError("--epochs retrains a trial; a refined candidate is exported with its stored weights")
        info = export_refined(name, refined, to, open_store(storage), formats=fmts, calibration=calibration,
                              strict=strict)
    else:
        info = export_trial(name, trial, to, open_store(storage), epochs=epochs, formats=fmts,
                            calibration=calibration, strict=strict)
        if info.get("note"):  # weights another study trained: said, not silent
            err.print(info["note"], highlight=False, markup=False, soft_wrap=True)
    for f in info["files"]:
        out.print(f"wrote {f}")
    if "onnx_max_abs_diff" in info:
        out.print(f"ONNX vs PyTorch: max |diff| {info['onnx_max_abs_diff']:.2e}")
    for line in deploy_lines(info.get("deploy")):
        out.print(line, highlight=False, markup=False)


def deploy_lines(d: dict | None) -> list[str]:
    """What an int8 export measured, a line per runtime, and the budget check."""
    if not d:
        return []
    lines = []
    fp32 = d["fp32"]["accuracy"]
    how = "quantization-aware fine-tuned in the search" if d.get("int8_method") == "qat" else \
        f"calibrated on {d['calibration']} training images"
    head = f"int8 ({how}), {d['split']} split; PyTorch fp32 accuracy " + (f"{fp32:.4f}" if fp32 is not None else "n/a")
    lines.append(head)
    t = d.get("tflite")
    if t:
        for rt, label in (("litert", "LiteRT"), ("tflm", "TFLM"), ("simulated", "simulated (PyTorch)")):
            r = t[rt]
            lines.append(f"  {label:<20} accuracy {r['accuracy']:.4f}, top-1 agreement with fp32 {r['agreement']:.4f} "
                         f"({r['images']} images)")
        lines.append(f"  simulated vs LiteRT top-1 agreement {t['simulated_vs_litert']:.4f}")
        for res, label in (("ram_bytes", "RAM (TFLM arena)"), ("flash_bytes", "flash (.tflite)")):
            limit = t.get(f"{res}_limit")
            pred = t[res.replace("_bytes", "_predicted")]
            lines.append(f"  {label:<20} {t[res]:>10,} B measured, {pred:>10,} B predicted"
                         + (f", limit {limit:,.0f} B {'OK' if t[res] <= limit else 'OVER BUDGET'}" if limit else ""))
        i = t["input"]
        a = [round(v, 4) for v in i["normalisation"]["a"]]
        b = [round(v, 4) for v in i["normalisation"]["b"]]
        lines.append(f"  input int8 {i['shape']} scale {i['scale']:.6g} zero_point {i['zero_point']}: a raw pixel p in "
                     f"[0, 1] of channel c is fed as round(p * a[c] + b[c]), a {a}, b {b}")
    o = d.get("onnx-int8")
    if o:
        r = o["onnxruntime"]
        lines.append(f"  ONNX Runtime (QDQ)   accuracy {r['accuracy']:.4f}, top-1 agreement with fp32 "
                     f"{r['agreement']:.4f} ({r['images']} images), {o['bytes']:,} B")
    if d.get("over_budget"):
        lines.append(f"  WARNING: over the study's budget: {'; '.join(d['over_budget'])} (--strict refuses it)")
    return lines


@app.command("report")
def report_cmd(name: str = typer.Argument(...), to: str = typer.Option(..., "--to", help="output directory"),
               storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Pareto plot (PNG and HTML) with the budget marked, and the search history."""
    from .._report import write_report

    check_out_dir(to)
    info = write_report(name, open_store(storage), to)
    for f in info["files"]:
        out.print(f"wrote {f}")
