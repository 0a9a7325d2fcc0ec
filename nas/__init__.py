"""Orchestration and faces of lightnas: studies, runners, refinement, the ``nas`` CLI and the API."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
