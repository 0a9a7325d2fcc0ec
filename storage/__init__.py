"""The SQL store: Optuna's RDBStorage for trials plus lightnas's own tables, one database URL."""

from __future__ import annotations

from ._retry import retry
from ._schema import (
    SCHEMA_VERSION,
    ArchitectureRow,
    ArtifactRow,
    Base,
    EvaluationRow,
    JobRow,
    Meta,
    ProxyScoreRow,
    RefinementRow,
    StudyRow,
)
from ._store import (
    DEFAULT_URL,
    JOB_STATES,
    OPEN_MODES,
    RetryTrial,
    StorageError,
    Store,
    error_hint,
    error_line,
    is_transient,
    normalize_url,
)

__all__ = ["DEFAULT_URL", "JOB_STATES", "OPEN_MODES", "SCHEMA_VERSION", "ArchitectureRow", "ArtifactRow", "Base",
           "EvaluationRow", "JobRow", "Meta", "ProxyScoreRow", "RefinementRow", "RetryTrial", "StorageError", "Store",
           "StudyRow", "error_hint", "error_line", "is_transient", "normalize_url", "retry"]
