"""The HTTP API (``nas serve``): studies, targets, Pareto queries, trials, exports and refinement
requests over the same database the workers use. It never trains."""

from __future__ import annotations

from ._app import create_app
from ._settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
