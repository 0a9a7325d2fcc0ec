"""The artifact repository: weights and files by key."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ._repository import Repository
from ._schema import (
    ArtifactRow,
)


class ArtifactsRepo(Repository):
    """Blobs by key (weights, int8 models, deploy reports)."""

    def put_artifact(self, key: str, data: bytes) -> None:
        """Insert or replace; two workers writing the same key at once both succeed."""
        def go() -> None:
            with self.session() as s:
                row = s.get(ArtifactRow, key)
                if row is None:
                    s.add(ArtifactRow(key=key, data=data, size=len(data)))
                else:
                    row.data, row.size = data, len(data)
        try:
            go()
        except IntegrityError:  # inserted by another worker between our read and write
            go()

    def get_artifact(self, key: str) -> bytes | None:
        with self.session() as s:
            row = s.get(ArtifactRow, key)
            return bytes(row.data) if row else None

    # ================================================================== refinements
    # Candidates of post-search refinement (``nas refine``) with their lineage; see
    # ``storage._schema.RefinementRow``. Added in schema version 2.

    def put_artifacts(self, items: dict[str, bytes | None]) -> None:
        """Insert, replace (``bytes``) or delete (``None``) several artifacts in one transaction:
        a reader (or a process killed meanwhile) sees all of them changed or none. Records kept as
        artifacts under one name (a supernet's record, weights and checkpoint) stay consistent."""
        def go() -> None:
            with self.session() as s:
                for key, data in items.items():
                    row = s.get(ArtifactRow, key)
                    if data is None:
                        if row is not None:
                            s.delete(row)
                    elif row is None:
                        s.add(ArtifactRow(key=key, data=data, size=len(data)))
                    else:
                        row.data, row.size = data, len(data)
        try:
            go()
        except IntegrityError:  # a key inserted by another writer between our read and write
            go()

    def artifact_keys(self, prefix: str) -> dict[str, int]:
        """The keys of the artifacts starting with ``prefix``, in order, with their sizes in bytes
        (the data are not read)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = select(ArtifactRow.key, ArtifactRow.size).where(ArtifactRow.key.like(f"{escaped}%", escape="\\"))
        with self.session() as s:
            return {str(k): int(n) for k, n in s.execute(q.order_by(ArtifactRow.key))}
