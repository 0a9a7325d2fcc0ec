"""``nas supernet train|check|show|list``: a once-trained weight-shared supernet, stored by name, and
how well it ranks its subnets against stand-alone training."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from .._fields import FIDELITY
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
    dense_epochs: int = typer.Option(None, "--dense-epochs", help="epochs trained dense first, then the low-rank "
                                     "factors start from the dense layers' SVD (default 30 % of --epochs; 0: off)"),
    threads: int = typer.Option(1, "--threads", help="torch threads (here; a worker uses its own --threads, Ray "
                                                     "--cpus-per-trial)"),
    queue: bool = typer.Option(False, "--queue", help="queue the training for 'nas worker' instead of training "
                                                      "here (the same request again finds its job)"),
    backend: str = typer.Option("local", "--backend", help="local (this process) | ray (one Ray task)"),
    address: str = typer.Option(None, "--address", help="--backend ray: a running Ray cluster (default: local Ray)"),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial", help="--backend ray: CPUs (torch threads) of "
                                                                        "the task, 1"),
    quiet: bool = typer.Option(False, "--quiet", help="no line per epoch"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Train a supernet of a space and store it; rerun the same command to resume after Ctrl-C or a crash.
    --queue: a 'nas worker' trains it; --backend ray: one Ray task trains it."""
    from ..search import make_supernet_spec, prepare_supernet, train_stored_supernet
    from ..workers import active_supernet_job, check_lease, queue_supernet, supernet_state_line, training_lease
    from ..workers.ray import check_backend_options
    from ._common import UsageError

    if seed is not None:
        check_seed(seed)
    if threads < 1:
        raise UsageError(f"--threads: got {threads}; accepted: 1 or more")
    backend = backend.strip().lower()
    if backend not in ("local", "ray"):
        raise UsageError(f"--backend: got {backend!r}; accepted: local, ray")
    if backend == "ray" and queue:
        raise UsageError("--queue: only with --backend local (a queued supernet is trained by 'nas worker'); "
                         "accepted: --queue, or --backend ray to train it on Ray now")
    if backend == "local":
        given = [k for k, v in (("--address", address), ("--cpus-per-trial", cpus_per_trial)) if v is not None]
        if given:
            raise UsageError(f"{given[0]}: only with --backend ray (accepted backends: local, ray)")
        ray_options = None
    else:
        ray_options = check_backend_options("ray", address=address, cpus_per_trial=cpus_per_trial)
    spec = make_supernet_spec(name=name, space=space, data=data, space_options=parse_options(option),
                              input_size=input_size, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                              sandwich=sandwich, dense_epochs=dense_epochs)
    # Everything is checked against the database as it is before anything is written (a refused
    # request creates no database and changes none).
    store = open_store_if_exists(storage)
    prepared = prepare_supernet(spec, store)
    existing = prepared[2]
    if existing is not None and existing.trained:
        out.print(f"supernet {name} is trained already ({existing.epochs_done} epochs); 'nas supernet show {name}'")
        return
    active = active_supernet_job(store, name) if store is not None else None
    if store is not None:
        check_lease(store, name)  # a training of this name runs elsewhere: refused, for --queue too
    if queue:
        store = store or open_store(storage, mode="create")
        job, created = queue_supernet(spec, store)
        if created:
            out.print(f"queued supernet {name} as job {job.id}: a 'nas worker' (without study names, or with "
                      f"--supernet {name}) trains it; 'nas supernet show {name}' follows it", highlight=False,
                      markup=False, soft_wrap=True)
        else:
            out.print(f"supernet {name} was queued before: {supernet_state_line(job)}", highlight=False,
                      markup=False, soft_wrap=True)
        return
    if active is not None:
        raise UsageError(f"supernet {name!r} is queued for a worker ({supernet_state_line(active)}); accepted: let "
                         f"a worker train it ('nas worker --supernet {name}'), or another name")
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
        with training_lease(store, name):  # a second training of this name meanwhile is refused
            if ray_options is not None:
                from ..workers.ray import run_supernet_ray

                record = run_supernet_ray(spec, store, options=ray_options, on_epoch=line,
                                          say=lambda m: err.print(m, highlight=False, markup=False, soft_wrap=True))
            else:
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


@supernet_app.command("check")
def supernet_check(
    name: str = typer.Argument(..., help="supernet name"),
    n: int = typer.Option(..., "--n", help="subnets compared, spanning the space's parameter range (3 or more; "
                                           "each is trained stand-alone)"),
    epochs: int = typer.Option(FIDELITY["epochs"].default, "--epochs",
                               help="stand-alone training epochs per subnet (the fidelity of the comparison)"),
    seed: int = typer.Option(None, "--seed", help="seed of the subnets drawn and of their stand-alone training "
                                                  "(default: the supernet's)"),
    threads: int = typer.Option(1, "--threads", help="torch threads"),
    quiet: bool = typer.Option(False, "--quiet", help="no line per subnet"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
) -> None:
    """Rank subnets by supernet accuracy and by stand-alone training: Kendall tau and Spearman rho, stored
    with the supernet ('nas supernet show'). A new check replaces the last one; Ctrl-C stores nothing."""
    from ..search import MAX_CHECK_SUBNETS, check_supernet, require_supernet
    from ._common import UsageError

    if seed is not None:
        check_seed(seed)
    if threads < 1:
        raise UsageError(f"--threads: got {threads}; accepted: 1 or more")
    if not 3 <= n <= MAX_CHECK_SUBNETS:
        raise UsageError(f"--n: got {n}; accepted: 3 to {MAX_CHECK_SUBNETS} subnets (each is trained stand-alone)")
    if not 1 <= epochs <= 10_000:
        raise UsageError(f"--epochs: got {epochs}; accepted: 1 to 10000 stand-alone epochs per subnet")
    store = open_store(storage)
    require_supernet(store, name, trained=True)
    err.print(f"{name}: ranking {n} subnets by supernet accuracy and by {epochs} epoch(s) of stand-alone "
              "training", highlight=False, markup=False, soft_wrap=True)
    count = [0]

    def line(p: dict[str, Any]) -> None:
        count[0] += 1
        if not quiet:
            err.print(f"subnet {count[0]}/{n} {p['spec_hash'][:12]}: {si(p['params'])} params, supernet "
                      f"{p['supernet']:.4f}, stand-alone {p['standalone']:.4f} ({p['train_seconds']:.1f} s)"
                      + (f" [{p['note']}]" if p.get("note") else ""), highlight=False, markup=False, soft_wrap=True)

    try:
        doc = check_supernet(store, name, n=n, epochs=epochs, seed=seed, threads=threads, on_subnet=line)
    except KeyboardInterrupt:
        err.print(f"{name}: check interrupted after {count[0]} of {n} subnets; nothing stored (a stored check, if "
                  "any, stays); rerun the command", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(INTERRUPTED) from None
    out.print(_check_line(doc) + f"; stored with supernet {name} ('nas supernet show {name}')", highlight=False,
              markup=False, soft_wrap=True)


def _num(v: Any) -> str:
    return "undefined" if v is None else f"{v:.3f}"


def _check_line(c: dict[str, Any]) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(c["when"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"ranking check: Kendall tau {_num(c.get('kendall_tau'))}, Spearman rho {_num(c.get('spearman_rho'))} "
            f"between supernet accuracy and stand-alone accuracy ({c['epochs']} epoch(s), seed {c['seed']}) over "
            f"{c['n']} subnets spanning the space's params, {when}")


@supernet_app.command("show")
def supernet_show(name: str = typer.Argument(...), fmt: Format = typer.Option(Format.table, "--format"),
                  storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """Settings, size, per-epoch curve, status, its queued job (if any) and last ranking check ('nas supernet
    check') of a supernet."""
    from ..search import dense_epochs_used, get_supernet, require_supernet, supernet_doc
    from ..workers import job_info, queued_supernet_doc, supernet_job, supernet_state_line

    store = open_store(storage)
    record = get_supernet(store, name)
    job = supernet_job(store, name)
    if record is None and job is not None:  # queued, not one epoch stored yet
        settings = json.loads(job.settings_json)
        if fmt is Format.json:
            sys.stdout.write(json.dumps(queued_supernet_doc(name, job), indent=2) + "\n")
            return
        if fmt is Format.csv:  # no curve yet
            return
        emit([{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v} for k, v in settings.items()],
             Format.table, f"supernet {name}")
        out.print(f"status: {supernet_state_line(job)}; no epoch stored yet", highlight=False, markup=False,
                  soft_wrap=True)
        return
    record = require_supernet(store, name)
    doc = supernet_doc(store, record)
    doc["job"] = job_info(job) if job is not None else None
    if fmt is Format.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if fmt is Format.csv:
        emit(record.curve, fmt)
        return
    queued = job is not None and job.state in ("queued", "running")
    status = "trained" if record.trained else \
        f"training: {record.epochs_done}/{record.spec.epochs} epochs stored" + ("" if queued else
        " (running, or stopped: rerun 'nas supernet train' with the same settings to resume)")
    rows = [{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in record.spec.model_dump().items()]
    for r in rows:
        if r["field"] == "dense_epochs" and r["value"] is None:
            r["value"] = f"{dense_epochs_used(record)} (unset: 30 % of epochs where layers are dense and low-rank)"
    rows += [{"field": "input_shape", "value": "x".join(map(str, record.input_shape))},
             {"field": "num_classes", "value": record.config["num_classes"]},
             {"field": "fitted options", "value": json.dumps(record.config["options"])}]
    emit(rows, Format.table, f"supernet {name}")
    out.print(f"status: {status}", highlight=False, markup=False, soft_wrap=True)
    if job is not None and (queued or not record.trained):
        out.print(f"queued training: {supernet_state_line(job)}", highlight=False, markup=False, soft_wrap=True)
    stored = doc["stored_weight_bytes"]
    out.print(f"size: {record.params:,} parameters, {si(record.state_bytes)}B of weights and buffers"
              + (f" ({si(stored)}B stored)" if stored else "") + f"; trained {record.seconds:.1f} s", highlight=False)
    if record.curve:
        emit([{"epoch": c["epoch"], "loss": c["loss"], "others_loss": c["student_loss"], "largest": c["largest"],
               "smallest": c["smallest"], "lr": c["lr"], "seconds": c["seconds"]} for c in record.curve],
             Format.table, "curve (validation accuracy of the largest and smallest subnets: supernet accuracy, "
                           "BN recalibrated)")
    check = doc["check"]
    if check is None:
        out.print(f"ranking check: none yet ('nas supernet check {name} --n 30' measures how its accuracy ranks "
                  "subnets against stand-alone training)", highlight=False, markup=False, soft_wrap=True)
        return
    out.print(_check_line(check), highlight=False, markup=False, soft_wrap=True)
    emit([{"spec_hash": p["spec_hash"][:12], "params": p["params"], "flops": p["flops"], "supernet": p["supernet"],
           "standalone": p["standalone"], "train_seconds": p["train_seconds"]} for p in check["pairs"]],
         Format.table, "ranking check pairs (validation accuracy: supernet-inherited, BN recalibrated; stand-alone "
                       f"trained {check['epochs']} epoch(s))", {k: lambda v: si(float(v)) for k in ("params", "flops")})


@supernet_app.command("list")
def supernet_list(fmt: Format = typer.Option(Format.table, "--format"),
                  storage: str = typer.Option(None, "--storage", help=STORAGE_HELP)) -> None:
    """The supernets stored in the database, and those queued for a worker."""
    from ..workers import supernet_rows

    rows = supernet_rows(open_store(storage))  # queued ones too
    if fmt is Format.table:  # the check in two columns: tau/rho and its size
        rows = [{**{k: v for k, v in r.items() if k not in ("kendall_tau", "spearman_rho", "check_n",
                                                              "check_epochs")},
                 "tau / rho": "-" if r["check_n"] is None else f"{_num(r['kendall_tau'])} / {_num(r['spearman_rho'])}",
                 "check": "-" if r["check_n"] is None else f"{r['check_n']} subnets, {r['check_epochs']} ep"}
                for r in rows]
    emit(rows, fmt, "supernets")
