"""Refining searched architectures (docs/methods.md section 2): dynamic channel pruning with a threshold
search, layer fusion with knowledge distillation, and LightLayers (low rank) to a budget."""

from __future__ import annotations

from ._pipeline import RefineEvent, check_parent, parent_trials, refine_trial
from ._settings import METHODS, PAPER_EPOCHS, RefineSettings, make_settings, settings_key, settings_record
from ._threshold import ThresholdSearch, threshold_search

__all__ = ["METHODS", "PAPER_EPOCHS", "RefineEvent", "RefineSettings", "ThresholdSearch", "check_parent",
           "make_settings", "parent_trials", "refine_trial", "settings_key", "settings_record", "threshold_search"]
