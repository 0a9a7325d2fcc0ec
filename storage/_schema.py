"""lightnas's own tables, beside Optuna's in the same database (SQLAlchemy 2).

Schema history (``lightnas_meta.schema_version``):

1. ``lightnas_studies``, ``lightnas_architectures``, ``lightnas_evaluations``, ``lightnas_artifacts``.

Upgrades are functions in ``MIGRATIONS`` applied in order; tables are never dropped.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1


def _now() -> dt.datetime:
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ArchitectureRow(Base):
    """An architecture by canonical spec hash."""

    __tablename__ = "lightnas_architectures"
    spec_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ArtifactRow(Base):
    """Binary artifacts (weights) in the database itself, so every worker of a distributed
    search reaches them without a shared filesystem. Networks here are kilobytes to a few MB."""

    __tablename__ = "lightnas_artifacts"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


#: version -> upgrade function(connection) from version-1. Version 1 is created by create_all.
MIGRATIONS: dict[int, object] = {}
