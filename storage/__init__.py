"""The SQL store: Optuna's RDBStorage for trials plus lightnas's own tables (issue 3 builds it)."""

from __future__ import annotations

__all__: list[str] = []
