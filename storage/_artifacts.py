"""The artifact repository: weights and files by key, compressed."""

from __future__ import annotations

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
