"""``nas supernet train|show|list``: a once-trained weight-shared supernet, stored by name."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from ._common import (
    INTERRUPTED,
    STORAGE_HELP,
    Format,
    app,
    check_seed,
    emit,
    err,
    open_store,
    open_store_if_exists,
    out,
    parse_options,
    si,
)

supernet_app = typer.Typer(help="Train, show and list weight-shared supernets (one training serves many studies).",
                           no_args_is_help=True)
app.add_typer(supernet_app, name="supernet")


@supernet_app.command("train")
def supernet_train(
    name: str = typer.Argument(..., help="supernet name"),
    space: str = typer.Option(..., "--space", help="search space (see 'nas spaces')"),
    data: str = typer.Option("digits", "--data", help="digits | idx:DIR | cifar10:DIR | npz:FILE"),
    option: list[str] = typer.Option([], "--option", help="space option key=value (repeatable)"),
    input_size: int = typer.Option(None, "--input-size", help="resize images to this short side (px)"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs (default 8)"),
    seed: int = typer.Option(None, "--seed", help="seed of the data split, initial weights and training"),
    batch_size: int = typer.Option(None, "--batch-size", help="batch size (default 64)"),
    lr: float = typer.Option(None, "--lr", help="peak learning rate (default 0.1)"),
    sandwich: int = typer.Option(None, "--sandwich", help="random subnets per step besides the largest and "
                                                           "smallest (BigNAS: 2)"),
    threads: int = typer.Option(1, "--threads", help="torch threads"),
    quiet: bool = typer.Option(False, "--quiet", help="no line per epoch"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Train a supernet of a space and store it; rerun the same command to resume after Ctrl-C or a crash."""
    from ..search import make_supernet_spec, prepare_supernet, train_stored_supernet
    from ._common import UsageError

    if seed is not None:
        check_seed(seed)
    if threads < 1:
        raise UsageError(f"--threads: got {threads}; accepted: 1 or more")
    spec = make_supernet_spec(name=name, space=space, data=data, space_options=parse_options(option),
                              input_size=input_size, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                              sandwich=sandwich)
    # Everything is checked against the database as it is before anything is written (a refused
    # request creates no database and changes none).
    store = open_store_if_exists(storage)
    prepared = prepare_supernet(spec, store)
    existing = prepared[2]
    if existing is not None and existing.trained:
        out.print(f"supernet {name} is trained already ({existing.epochs_done} epochs); 'nas supernet show {name}'")
        return
    store = store or open_store(storage, mode="create")
    net = prepared[0]
    if existing is not None:
        err.print(f"{name}: resuming after epoch {existing.epochs_done} of {spec.epochs}", highlight=False)
    else:
        err.print(f"{name}: {net!r}", highlight=False, markup=False, soft_wrap=True)

    def line(entry: dict[str, Any]) -> None:
        if not quiet:
            err.print(_epoch_line(entry, spec.epochs), highlight=False, markup=False)

    try:
        record = train_stored_supernet(spec, store, prepared=prepared, threads=threads, on_epoch=line)
    except KeyboardInterrupt:
        from ..search import get_supernet

        kept = get_supernet(store, name)
        done = kept.epochs_done if kept is not None else 0
        err.print(f"{name}: interrupted; epochs 1-{done} of {spec.epochs} are stored; rerun the same command to "
                  "resume" if done else f"{name}: interrupted before its first epoch ended; rerun the same command",
                  highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    last = record.curve[-1] if record.curve else {}
    out.print(f"trained supernet {name} ({spec.space} on {spec.data}, {record.epochs_done} epochs, "
              f"{record.seconds:.1f} s): largest subnet {_acc(last.get('largest'))}, smallest "
              f"{_acc(last.get('smallest'))} (supernet accuracy, BN recalibrated) in {store.url}", highlight=False)


def _acc(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _epoch_line(e: dict[str, Any], epochs: int) -> str:
    return (f"epoch {e['epoch']}/{epochs}: loss {e['loss']:.4f}, others {e['student_loss']:.4f}, largest "
            f"{_acc(e.get('largest'))}, smallest {_acc(e.get('smallest'))}, {e['seconds']:.1f} s")


def _doc(record: Any, weights: int | None) -> dict[str, Any]:
    return {"name": record.name, "status": record.status, "epochs_done": record.epochs_done,
            "epochs": record.spec.epochs, "space": record.spec.space, "space_options": record.config["options"],
            "data": record.spec.data, "input_shape": record.config["input_shape"],
            "num_classes": record.config["num_classes"], "settings": record.spec.model_dump(),
            "params": record.params, "state_bytes": record.state_bytes, "stored_weight_bytes": weights,
            "seconds": record.seconds, "curve": record.curve,
            "accuracy_source": f"supernet {record.name} (inherited weights, BN recalibrated; not stand-alone)"}


@supernet_app.command("show")
def supernet_show(name: str = typer.Argument(...), fmt: Format = typer.Option(Format.table, "--format"),
                  storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Settings, size, per-epoch curve and status of a supernet."""
    from ..search import SUPERNET_PREFIX, require_supernet

    store = open_store(storage)
    record = require_supernet(store, name)
    sizes = store.artifact_keys(f"{SUPERNET_PREFIX}{name}/")
    doc = _doc(record, sizes.get(f"{SUPERNET_PREFIX}{name}/weights.pt"))
    if fmt is Format.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt is Format.csv:
        emit(record.curve, fmt)
        return
    status = "trained" if record.trained else \
        f"training: {record.epochs_done}/{record.spec.epochs} epochs stored (running, or stopped: rerun " \
        "'nas supernet train' with the same settings to resume)"
    rows = [{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in record.spec.model_dump().items()]
    rows += [{"field": "input_shape", "value": "x".join(map(str, record.input_shape))},
             {"field": "num_classes", "value": record.config["num_classes"]},
             {"field": "fitted options", "value": json.dumps(record.config["options"])}]
    emit(rows, Format.table, f"supernet {name}")
    out.print(f"status: {status}", highlight=False, markup=False, soft_wrap=True)
    stored = doc["stored_weight_bytes"]
    out.print(f"size: {record.params:,} parameters, {si(record.state_bytes)}B of weights and buffers"
              + (f" ({si(stored)}B stored)" if stored else "") + f"; trained {record.seconds:.1f} s", highlight=False)
    if record.curve:
        emit([{"epoch": c["epoch"], "loss": c["loss"], "others_loss": c["student_loss"], "largest": c["largest"],
               "smallest": c["smallest"], "lr": c["lr"], "seconds": c["seconds"]} for c in record.curve],
             Format.table, "curve (validation accuracy of the largest and smallest subnets: supernet accuracy, "
                           "BN recalibrated)")


@supernet_app.command("list")
def supernet_list(fmt: Format = typer.Option(Format.table, "--format"),
                  storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """The supernets stored in the database."""
    from ..search import get_supernet, list_supernets

    store = open_store(storage)
    rows = []
    for name in list_supernets(store):
        r = get_supernet(store, name)
        if r is None:
            continue
        last = r.curve[-1] if r.curve else {}
        rows.append({"name": name, "space": r.spec.space, "data": r.spec.data,
                     "input": "x".join(map(str, r.input_shape)), "status": r.status,
                     "epochs": f"{r.epochs_done}/{r.spec.epochs}", "params": r.params,
                     "largest": last.get("largest"), "smallest": last.get("smallest")})
    emit(rows, fmt, "supernets")
