"""What a refinement run does: its settings (the paper's epoch ratios kept, the counts settings)
and the key that identifies a run (so a rerun continues it)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from objectives import parse_budget

from .._errors import NasError
from .._fields import REFINE, declare
from ..search import StudySpec

__all__ = ["METHODS", "PAPER_EPOCHS", "RefineSettings", "make_settings", "settings_key", "settings_record"]

METHODS = ("baseline", "prune", "fuse", "low_rank")
#: The paper's fine-tuning epochs (320), short (50) and long (200) fusion fine-tuning, patience (20).
PAPER_EPOCHS = {"finetune": 320, "short": 50, "long": 200, "patience": 20}


class RefineSettings(BaseModel):
    """What a refinement run does. Everything here is part of the run's key.

    Example:
        >>> s = RefineSettings(finetune_epochs=16)
        >>> (s.short_epochs, s.long_epochs, s.patience)
        (3, 10, 1)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    epochs: int = declare(REFINE["epochs"], ge=1, le=100_000)
    reuse_weights: bool = declare(REFINE["reuse_weights"])
    finetune_epochs: int = declare(REFINE["finetune_epochs"], ge=1, le=100_000)
    margin: float = declare(REFINE["margin"], ge=0.0, lt=1.0)
    iterations: int = declare(REFINE["iterations"], ge=1, le=100)
    max_drop: float = declare(REFINE["max_drop"], ge=0.0, lt=1.0)
    long_every: int = declare(REFINE["long_every"], ge=1, le=1000)
    temperature: float = declare(REFINE["temperature"], gt=0.0)
    alpha: float = declare(REFINE["alpha"], ge=0.0, le=1.0)
    lr: float = declare(REFINE["lr"], gt=0.0)
    weight_decay: float = declare(REFINE["weight_decay"], ge=0.0)
    batch_size: int = declare(REFINE["batch_size"], ge=1, le=65_536)
    min_channels: int = declare(REFINE["min_channels"], ge=1)
    low_rank: str | None = declare(REFINE["low_rank"])
    seed: int = declare(REFINE["seed"], ge=0, le=2**32 - 1)

    @field_validator("low_rank")
    @classmethod
    def _low_rank(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parse_budget(v)  # BudgetError is a ValueError: reported on this field
        return v.strip()

    def _scaled(self, paper: int) -> int:
        return max(1, math.ceil(self.finetune_epochs * paper / PAPER_EPOCHS["finetune"]))

    @property
    def short_epochs(self) -> int:
        return self._scaled(PAPER_EPOCHS["short"])

    @property
    def long_epochs(self) -> int:
        return self._scaled(PAPER_EPOCHS["long"])

    @property
    def patience(self) -> int:
        return self._scaled(PAPER_EPOCHS["patience"])


def make_settings(**fields: Any) -> RefineSettings:
    """Validate settings; raises :class:`NasError` with one line naming the field."""
    try:
        return RefineSettings(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown setting; accepted: {', '.join(RefineSettings.model_fields)}"
        raise NasError(msg, field=loc, argument=False) from None


def settings_record(settings: RefineSettings, study_spec: StudySpec) -> dict[str, Any]:
    """The settings as stored: what the run does plus the data it did it on."""
    return {**settings.model_dump(), "data": study_spec.data, "data_seed": study_spec.seed,
            "val_fraction": study_spec.val_fraction,
            "short_epochs": settings.short_epochs, "long_epochs": settings.long_epochs,
            "patience": settings.patience}


def settings_key(settings: RefineSettings, study_spec: StudySpec, parent_spec_hash: str) -> str:
    """Key of a run: its settings, data and parent architecture (a study deleted and created again
    under the same name, with another architecture at the same trial number, starts afresh)."""
    text = json.dumps({**settings_record(settings, study_spec), "parent": parent_spec_hash}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
