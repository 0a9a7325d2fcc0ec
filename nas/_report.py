"""``nas report``: Pareto plot (PNG, and a self-contained HTML page) with the budget, and history."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from objectives import check_out_dir, write_files
from storage import Store

from ._errors import NasError
from .search import Status, front_trials, get_study_spec, pareto_rows, record_of, status_of

__all__ = ["write_report"]


def _accuracy(t: optuna.trial.FrozenTrial) -> float:
    """Validation accuracy of an evaluated trial (0 where none was recorded)."""
    return float(record_of(t).val_accuracy or 0.0)


def write_report(name: str, store: Store, to: str | Path) -> dict[str, Any]:
    """Write ``pareto.png``, ``history.png`` and ``report.html`` into ``to`` (created with its parents if
    missing), all three or none.

    Raises:
        NasError: ``to`` cannot be written (refused before any work), or writing failed (a full disk):
            one line, nothing left behind.
    """
    if isinstance(to, str) and not to.strip():  # Path("") is the working directory
        raise NasError("empty; accepted: a directory you may write (created if missing), e.g. report/", field="to")
    check_out_dir(to, "to", error=NasError)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study_spec = get_study_spec(name, store)
    study = optuna.load_study(study_name=name, storage=store.optuna)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    evaluated = [t for t in trials if record_of(t).evaluated]  # a trial whose record is damaged: left out
    rejected = [t for t in trials if status_of(t) == Status.OVER_BUDGET]
    front = front_trials(study_spec, evaluated)
    budget = study_spec.budget_obj()
    costs = [o for o in study_spec.objectives if o != "accuracy"]
    costs += [c for c in (budget.limits if budget else {}) if c not in costs]
    costs = costs or ["flops"]
    accs_all = [_accuracy(t) for t in evaluated]
    floor = (min(accs_all) - 0.02) if accs_all else 0.0  # rejected trials drawn just below
    out = Path(to)
    pngs: dict[str, bytes] = {}

    def png(fig: object, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)  # type: ignore[attr-defined]
        pngs[name] = buf.getvalue()

    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.2), squeeze=False)
    for ax, c in zip(axes[0], costs, strict=True):
        def xs(ts: list[optuna.trial.FrozenTrial], c: str = c) -> list[float]:
            return [record_of(t).cost.get(c, float("nan")) for t in ts]

        ax.scatter(xs(evaluated), [_accuracy(t) for t in evaluated], s=18, c="tab:blue",
                   alpha=0.6, label=f"evaluated ({len(evaluated)})")
        if rejected:
            ax.scatter(xs(rejected), [floor] * len(rejected), s=14, marker="x", c="tab:gray",
                       label=f"over budget, not trained ({len(rejected)})")
        fr = sorted(front, key=lambda t: record_of(t).cost.get(c, float("inf")))
        ax.plot(xs(fr), [_accuracy(t) for t in fr], "o-", c="tab:red",
                label=f"Pareto front ({len(fr)})")
        limit = budget.limits.get(c) if budget else None
        if limit is not None:
            ax.axvline(limit, ls="--", c="k", lw=1, label=f"budget {c} <= {limit:g}")
        ax.set_xlabel(c)
        ax.set_ylabel("validation accuracy")
        ax.set_xscale("log" if c != "hw_cost" else "linear")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{name}: {study_spec.space} on {study_spec.data}, budget {study_spec.budget or 'none'}")
    fig.tight_layout()
    png(fig, "pareto.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    nums = [t.number for t in evaluated]
    accs = [_accuracy(t) for t in evaluated]
    best, run = [], 0.0
    for a in accs:
        run = max(run, a)
        best.append(run)
    ax.scatter(nums, accs, s=14, alpha=0.6, label="trial accuracy (feasible)")
    ax.step(nums, best, where="post", c="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png(fig, "history.png")
    plt.close(fig)

    rows = pareto_rows(name, store)
    cols = [k for k in (rows[0] if rows else {}) if k != "cost"]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[k]))}</td>" for k in cols) + "</tr>" for r in rows)
    imgs = "".join(f'<img src="data:image/png;base64,{base64.b64encode(pngs[p]).decode()}">'
                   for p in ("pareto.png", "history.png"))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lightnas report: {html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(name)}</h1><p>space <b>{html.escape(study_spec.space)}</b>, data "
            f"<b>{html.escape(study_spec.data)}</b>, budget <b>{html.escape(study_spec.budget or 'none')}</b>, "
            f"objectives {html.escape(', '.join(study_spec.objectives))}, sampler {study_spec.sampler}; "
            f"{len(trials)} complete trials, "
            f"{len(evaluated)} evaluated, {len(rejected)} rejected over budget.</p>{imgs}"
            f"<h2>Pareto front</h2><table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{table}</table>"
            "</body></html>")
    written = write_files(out, {**pngs, "report.html": page.encode()}, "to", error=NasError)
    return {"files": written, "front": len(rows)}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
