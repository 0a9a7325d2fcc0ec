"""lightnas's own tables, beside Optuna's in the same database (SQLAlchemy 2).

Schema history (``lightnas_meta.schema_version``):

1. ``lightnas_studies``, ``lightnas_architectures``, ``lightnas_evaluations``, ``lightnas_artifacts``.
2. ``lightnas_refinements``: candidates of post-search refinement (pruning, fusion, low rank)
   with their lineage.
3. ``lightnas_jobs``: queued work other than trials (refinement requests of the HTTP API), which
   workers claim, heartbeat and finish.
4. ``lightnas_studies.info_json`` (the budget-first figures of a study: its space's minimum cost,
   share within the budget, how the space was fitted), and targets that count networks evaluated
   within the budget: over-budget samples no longer count. An existing study's target is
   converted so that the work it had left stays the same: ``new = counted + max(0, old -
   finished)``, where ``finished`` counts its complete and pruned trials as the old target did
   and ``counted`` leaves out the over-budget ones. A study that had met its target still has.
5. ``lightnas_devices``: device profiles stored in the database (``nas hardware fit``), by name,
   as their TOML text, so that every worker of a study costs with the same profile whichever
   host it runs on.
   and ``lightnas_proxy_scores``: zero-cost proxy scores of an architecture, per input key (input
   shape, data, batch and seed the score depends on).
6. ``lightnas_claims``: which trial is training an architecture at a fidelity now (with a heartbeat),
   so that a second trial of the same architecture waits for the first and reuses its result
   instead of training it again; a claim silent for longer than its owner's heartbeat grace is
   taken over.

Upgrades are functions in ``MIGRATIONS`` applied in order; tables are never dropped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from . import _optuna_tables as optuna_tables

SCHEMA_VERSION = 6
#: States of a queued job (``lightnas_jobs``), in the order a job passes through them.
JOB_STATES = ("queued", "running", "done", "failed")


def _utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime: the one clock of lightnas's stored times (and, made naive, of
    Optuna's), so that hosts in different time zones agree."""
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "lightnas_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class StudyRow(Base):
    """A lightnas study: its validated spec JSON, beside the Optuna study of the same name."""

    __tablename__ = "lightnas_studies"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    spec_json: Mapped[str] = mapped_column(Text)
    target_trials: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    info_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class ArchitectureRow(Base):
    """An architecture by canonical spec hash."""

    __tablename__ = "lightnas_architectures"
    spec_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class EvaluationRow(Base):
    """Accuracy of one architecture at one fidelity (dataset, split, epochs, ...), trained once."""

    __tablename__ = "lightnas_evaluations"
    __table_args__ = (UniqueConstraint("spec_hash", "fidelity_key", name="uq_eval_hash_fidelity"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec_hash: Mapped[str] = mapped_column(ForeignKey("lightnas_architectures.spec_hash"), index=True)
    fidelity_key: Mapped[str] = mapped_column(String(64))
    fidelity_json: Mapped[str] = mapped_column(Text)
    val_accuracy: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_json: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    epochs_run: Mapped[int] = mapped_column(Integer)
    curve_json: Mapped[str] = mapped_column(Text, default="[]")
    artifact_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class ArtifactRow(Base):
    """Binary artifacts (weights) in the database itself, so every worker of a distributed
    search reaches them without a shared filesystem. Networks here are kilobytes to a few MB."""

    __tablename__ = "lightnas_artifacts"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class RefinementRow(Base):
    """One candidate of a refinement run (``nas refine``) and its lineage.

    A run is identified by (study, parent trial, settings hash); its candidates are numbered by
    ``step`` (0 = the trained baseline, then pruning iterations, fusion candidates, low rank),
    each naming the step it was derived from (``parent_step``). The unique key makes a rerun
    with the same settings continue after the last stored step, and makes a concurrent
    duplicate insert fail instead of adding a second row.
    """

    __tablename__ = "lightnas_refinements"
    __table_args__ = (UniqueConstraint("study", "parent_trial", "settings_hash", "step", name="uq_refine_step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(255), index=True)
    parent_trial: Mapped[int] = mapped_column(Integer)
    parent_spec_hash: Mapped[str] = mapped_column(String(64))
    settings_hash: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    parent_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(16))
    spec_hash: Mapped[str] = mapped_column(ForeignKey("lightnas_architectures.spec_hash"), index=True)
    settings_json: Mapped[str] = mapped_column(Text)
    detail_json: Mapped[str] = mapped_column(Text, default="{}")
    val_accuracy: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_json: Mapped[str] = mapped_column(Text)
    artifact_key: Mapped[str] = mapped_column(String(255))
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class JobRow(Base):
    """A queued job (``kind`` ``refine``: refine one trial with ``settings_json``), run by a worker.

    ``state``: ``queued`` -> ``running`` (claimed by ``worker``, which refreshes ``heartbeat_at``
    every ``heartbeat_s`` seconds) -> ``done`` or ``failed`` (``error``). A running job silent for
    3x ``heartbeat_s`` goes back to ``queued``; ``attempts`` counts the claims. ``key`` identifies
    the work (study, trial, settings, parent architecture), so a repeated request finds the job
    that does it.
    ``progress_json``: the last progress event (``stored``, ``expected``, ``message``).
    """

    __tablename__ = "lightnas_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    study: Mapped[str] = mapped_column(String(255), index=True)
    trial: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64), index=True)
    settings_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    result_json: Mapped[str] = mapped_column(Text, default="{}")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # its worker's beat interval
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeviceProfileRow(Base):
    """A device profile (``objectives.DeviceProfile``) as TOML text, by name."""

    __tablename__ = "lightnas_devices"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    toml: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class ProxyScoreRow(Base):
    """One zero-cost proxy score of an architecture (``value``: higher is better, ``-inf`` when
    it could not be computed). ``input_key`` hashes what the score depends on besides the
    architecture: input shape, classes, data source, batch size and seed (``input_json``)."""

    __tablename__ = "lightnas_proxy_scores"
    __table_args__ = (UniqueConstraint("spec_hash", "input_key", "proxy", name="uq_proxy_score"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec_hash: Mapped[str] = mapped_column(ForeignKey("lightnas_architectures.spec_hash"), index=True)
    input_key: Mapped[str] = mapped_column(String(64))
    input_json: Mapped[str] = mapped_column(Text)
    proxy: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class ClaimRow(Base):
    """An architecture being trained at one fidelity right now, by ``owner`` (one attempt of one trial).

    The owner refreshes ``heartbeat_at`` while it trains and deletes the row when it is done (its
    evaluation stored, or training failed or stopped). A row whose heartbeat is older than
    ``grace_s`` (the owner's heartbeat grace) belongs to a dead owner, and the next trial of the
    architecture takes it over. Rows are small and short-lived; nothing refers to them.
    """

    __tablename__ = "lightnas_claims"
    spec_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    fidelity_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    grace_s: Mapped[float] = mapped_column(Float)


def _v2_refinements(conn: Connection) -> None:
    """Version 2: the refinement lineage table (a no-op when ``create_all`` made it already)."""
    RefinementRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v3_jobs(conn: Connection) -> None:
    """Version 3: the job queue (a no-op when ``create_all`` made it already)."""
    JobRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v4_counted_targets(conn: Connection) -> None:
    """Version 4: ``info_json``, and targets converted to count networks within the budget."""
    insp = inspect(conn)
    if "info_json" not in {c["name"] for c in insp.get_columns("lightnas_studies")}:
        conn.execute(text("ALTER TABLE lightnas_studies ADD COLUMN info_json TEXT"))
    if not insp.has_table("trials"):
        return
    rows = conn.execute(text("SELECT name, target_trials, info_json FROM lightnas_studies")).all()
    for name, target, info_json in rows:
        finished = counted = 0
        for state, rejected, n in optuna_tables.count_by_state(conn, name):
            if str(getattr(state, "name", state)) in ("COMPLETE", "PRUNED"):
                finished += n
                counted += 0 if rejected else n
        new = counted + max(0, target - finished)
        info = json.loads(info_json) if info_json else {}
        info["target_converted"] = {"schema": 4, "old_target": target, "old_finished": finished,
                                    "counted": counted, "new_target": new}
        conn.execute(text("UPDATE lightnas_studies SET target_trials = :t, info_json = :i WHERE name = :n"),
                     {"t": new, "i": json.dumps(info), "n": name})


def _v5_devices_and_proxy_scores(conn: Connection) -> None:
    """Version 5: stored device profiles and the zero-cost proxy cache (a no-op for a table
    ``create_all`` made already)."""
    DeviceProfileRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
    ProxyScoreRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _v6_claims(conn: Connection) -> None:
    """Version 6: claims of architectures in training (a no-op when ``create_all`` made the table already)."""
    ClaimRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


#: version -> upgrade function(connection) from version-1. Version 1 is created by create_all.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _v2_refinements, 3: _v3_jobs, 4: _v4_counted_targets,
                                                       5: _v5_devices_and_proxy_scores, 6: _v6_claims}


def _aware(t: Any) -> Any:
    """A stored time as an aware UTC datetime (SQLite returns naive ones)."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)
