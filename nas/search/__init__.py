"""Studies and what one trial does: the study spec, creating a study (budget first, warm starts),
the trial objective and its record, samplers and early stopping, weight inheritance, and the
Pareto front."""

from __future__ import annotations

from ._create import StudyPlan, create_study, describe_plan, plan_study, prepare_study, store_study
from ._demo import DEMO_BUDGET, demo_spec
from ._early import EarlyStop, Peer, best_by, dominators, peers_of, rung_epochs
from ._inherit import Parent, pick_parent
from ._objective import CONSTRAINTS_KEY, StudyContext, TrialObjective, load_context, objective_values
from ._pareto import (
    dominates,
    front_trials,
    pareto_mask,
    pareto_rows,
    past_drop,
    refined_points,
    test_accuracy,
    where_filter,
)
from ._proxy import ProxySampler, ProxyScorer, study_correlations
from ._record import Status, TrialRecord, damaged_trials, record_of, status_of
from ._samplers import make_pruner, make_sampler, resolve_sampler
from ._spec import (
    OBJECTIVES,
    PROXY_NAMES,
    PRUNERS,
    SAMPLERS,
    SINGLE_METRIC_PRUNERS,
    Fidelity,
    StudySpec,
    load_spec_file,
    make_spec,
    one_line_error,
)
from ._studies import (
    DataShape,
    StudyEntry,
    check_name_free,
    check_study_exists,
    delete_study,
    get_study_spec,
    list_studies,
    parse_stored_spec,
    study_data,
    study_info,
)
from ._warm import WarmStart, arch_from_doc, cheapest_anchors, plan_warm_start, read_spec_file, warm_start

__all__ = [
    "CONSTRAINTS_KEY",
    "DEMO_BUDGET",
    "OBJECTIVES",
    "PROXY_NAMES",
    "PRUNERS",
    "SAMPLERS",
    "SINGLE_METRIC_PRUNERS",
    "DataShape",
    "EarlyStop",
    "Parent",
    "Peer",
    "ProxySampler",
    "ProxyScorer",
    "Fidelity",
    "Status",
    "StudyContext",
    "StudyEntry",
    "StudyPlan",
    "StudySpec",
    "TrialObjective",
    "TrialRecord",
    "damaged_trials",
    "WarmStart",
    "arch_from_doc",
    "best_by",
    "cheapest_anchors",
    "check_name_free",
    "check_study_exists",
    "create_study",
    "prepare_study",
    "store_study",
    "delete_study",
    "demo_spec",
    "describe_plan",
    "dominates",
    "dominators",
    "front_trials",
    "pareto_mask",
    "get_study_spec",
    "list_studies",
    "load_context",
    "load_spec_file",
    "make_pruner",
    "make_sampler",
    "make_spec",
    "objective_values",
    "one_line_error",
    "pareto_rows",
    "past_drop",
    "peers_of",
    "pick_parent",
    "parse_stored_spec",
    "plan_study",
    "plan_warm_start",
    "read_spec_file",
    "record_of",
    "refined_points",
    "resolve_sampler",
    "rung_epochs",
    "status_of",
    "study_correlations",
    "study_data",
    "study_info",
    "test_accuracy",
    "warm_start",
    "where_filter",
]
