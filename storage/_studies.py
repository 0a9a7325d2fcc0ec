"""Repositories of studies and of the device profiles stored with them."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from ._repository import Repository
from ._schema import (
    DeviceProfileRow,
    JobRow,
    StudyRow,
    _utcnow,
)


class StudiesRepo(Repository):
    """Rows of ``lightnas_studies``: a study's spec, target and creation figures."""

    def add_study(self, name: str, spec_json: str, target: int, info: str | None = None) -> None:
        with self.session() as s:
            s.add(StudyRow(name=name, spec_json=spec_json, target_trials=target, info_json=info))

    def get_study(self, name: str) -> StudyRow | None:
        with self.session() as s:
            return s.get(StudyRow, name)

    def list_studies(self) -> list[StudyRow]:
        with self.session() as s:
            return list(s.scalars(select(StudyRow).order_by(StudyRow.created_at, StudyRow.name)))

    def set_target(self, name: str, target: int) -> None:
        with self.session() as s:
            s.execute(update(StudyRow).where(StudyRow.name == name).values(target_trials=target))

    def delete_study(self, name: str) -> bool:
        """Remove the study's row and all its jobs (a running one's worker then finds it gone and
        stops recording; a study created later under the name starts with none). False when
        there was no row to remove (another client deleted it first)."""
        with self.session() as s:
            removed = s.execute(delete(StudyRow).where(StudyRow.name == name)).rowcount  # type: ignore[attr-defined]
            s.execute(delete(JobRow).where(JobRow.study == name))
        return bool(removed)


class ProfilesRepo(Repository):
    """Device profiles stored in the database (name -> TOML), shared by every worker of its studies."""

    def save_device_profile(self, name: str, toml: str) -> None:
        """Store (or replace) the device profile ``name`` as its TOML text."""
        with self.session() as s:
            row = s.get(DeviceProfileRow, name)
            if row is None:
                s.add(DeviceProfileRow(name=name, toml=toml))
            else:
                row.toml = toml
                row.updated_at = _utcnow()

    def device_profiles(self) -> dict[str, str]:
        """Every stored device profile: name -> TOML text."""
        with self.session() as s:
            return {r.name: r.toml for r in s.scalars(select(DeviceProfileRow).order_by(DeviceProfileRow.name))}
