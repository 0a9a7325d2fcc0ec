"""Studies and what one trial does: the study spec, creating a study (budget first, warm starts),
the trial objective and its record, samplers and early stopping, weight inheritance, and the
Pareto front."""

from __future__ import annotations

from ._create import StudyPlan, create_study, describe_plan, plan_study, prepare_study, store_study
from ._demo import DEMO_BUDGET, demo_spec
from ._early import EarlyStop, Peer, best_by, dominators, peers_of, rung_epochs
from ._inherit import pick_parent
from ._objective import CONSTRAINTS_KEY, TrialObjective, load_context
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
from ._proxy import ProxyScorer, study_correlations
from ._record import Status, TrialRecord, damaged_trials, record_of, status_of
from ._samplers import make_pruner, make_sampler, resolve_sampler
from ._spec import (
    PROXY_NAMES,
    PRUNERS,
    SAMPLERS,
    SINGLE_METRIC_PRUNERS,
    Fidelity,
    StudySpec,
    load_spec_file,
    make_spec,
    one_line_error,
    validation_error,
)
from ._studies import (
    DataShape,
    StudyEntry,
    check_study_exists,
    delete_study,
    get_study_spec,
    list_studies,
    parse_stored_spec,
    study_data,
    study_info,
)
from ._supernet import (
    SUPERNET_PREFIX,
    get_supernet,
    list_supernets,
    load_supernet,
    make_supernet_spec,
    prepare_supernet,
    require_supernet,
    supernet_study_fields,
    train_stored_supernet,
)
from ._warm import arch_from_doc, warm_start

__all__ = [
    "CONSTRAINTS_KEY",
    "DEMO_BUDGET",
    "PROXY_NAMES",
    "PRUNERS",
    "SAMPLERS",
    "SINGLE_METRIC_PRUNERS",
    "SUPERNET_PREFIX",
    "DataShape",
    "EarlyStop",
    "Peer",
    "ProxyScorer",
    "Fidelity",
    "Status",
    "StudyEntry",
    "StudyPlan",
    "StudySpec",
    "TrialObjective",
    "TrialRecord",
    "damaged_trials",
    "arch_from_doc",
    "best_by",
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
    "get_supernet",
    "list_studies",
    "list_supernets",
    "load_context",
    "load_spec_file",
    "load_supernet",
    "make_pruner",
    "make_sampler",
    "make_spec",
    "make_supernet_spec",
    "one_line_error",
    "validation_error",
    "pareto_rows",
    "past_drop",
    "peers_of",
    "pick_parent",
    "parse_stored_spec",
    "plan_study",
    "prepare_supernet",
    "record_of",
    "refined_points",
    "require_supernet",
    "resolve_sampler",
    "rung_epochs",
    "status_of",
    "study_correlations",
    "study_data",
    "study_info",
    "supernet_study_fields",
    "test_accuracy",
    "train_stored_supernet",
    "warm_start",
    "where_filter",
]
