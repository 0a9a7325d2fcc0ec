"""lightnas: neural architecture search for lightweight CNNs under hardware budgets.

The public face of the ``nas`` package; the rooms behind it:

- :mod:`nas.search`: the study spec, creating a study (budget first, warm starts), the trial
  objective and its record, samplers, early stopping, weight inheritance, the Pareto front;
- :mod:`nas.refine`: dynamic pruning, layer fusion with distillation, LightLayers;
- :mod:`nas.workers`: the worker loop, local processes, refinement jobs, liveness, and the Ray
  Tune backend (:mod:`nas.workers.ray`);
- :mod:`nas.serve`: the HTTP API; :mod:`nas.cli`: the ``nas`` command;
- export (spec JSON, weights, ONNX) and report (the Pareto plot).

Names are loaded on first use, so ``import nas`` (and ``nas --help``) stays fast.

Example:
    >>> import nas  # doctest: +SKIP
    >>> spec = nas.make_spec(name="s1", space="plain", budget="params<=50k")  # doctest: +SKIP
    >>> nas.create_study(spec, Store("sqlite:///nas.db"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from search_spaces import InputError

from ._errors import NasError, StudyExists, Terminated, TrialInterrupted, UnknownStudy, UnreadableStudy
from ._version import __version__

#: Public name -> the module it lives in.
_LAZY = {
    **dict.fromkeys(["DataShape", "EarlyStop", "Fidelity", "Status", "StudyEntry", "StudyPlan", "StudySpec",
                     "TrialObjective", "TrialRecord", "create_study", "delete_study", "describe_plan",
                     "get_study_spec", "list_studies", "load_spec_file", "make_spec", "pareto_rows", "plan_study",
                     "record_of", "study_data", "warm_start"], "nas.search"),
    **dict.fromkeys(["RefineEvent", "RefineSettings", "make_settings", "refine_trial"], "nas.refine"),
    **dict.fromkeys(["Progress", "progress", "queue_refinement", "run_study", "run_worker"], "nas.workers"),
    **dict.fromkeys(["RayOptions", "run_ray"], "nas.workers.ray"),
    **dict.fromkeys(["ApiSettings", "create_app"], "nas.serve"),
    **dict.fromkeys(["EXPORT_FORMATS", "export_onnx", "export_refined", "export_trial"], "nas._export"),
    **dict.fromkeys(["load_arch", "load_network", "weights_key"], "nas._artifacts"),
    "write_report": "nas._report",
}

__all__ = ["InputError", "NasError", "StudyExists", "Terminated", "TrialInterrupted", "UnknownStudy",
           "UnreadableStudy", "__version__",
           *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
