"""The one module that reads Optuna's tables with SQL of its own (issue 29: every such query in one
place, checked against Optuna's schema before the first use).

Optuna's storage API answers per trial; a few questions lightnas asks of whole studies would cost a
round trip per trial through it (counts by state with the over-budget ones apart, a page of trial
ids, which trials trained an architecture, RUNNING trials that never beat). They are answered here
in one query each, over the tables of Optuna's RDB schema (``optuna/storages/_rdb/models.py``):
``studies(study_id, study_name)``, ``trials(trial_id, number, study_id, state, datetime_start)``,
``trial_user_attributes(trial_id, key, value_json)`` and ``trial_heartbeats(trial_id)``.
:func:`check_schema` verifies that those columns exist (Optuna's ``version_info.schema_version`` is
named in the error), so an Optuna whose schema moved fails in one line instead of in a query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

__all__ = ["COUNTS_SQL", "FINETUNED_JSON", "NEEDED", "REJECTED_JSON", "check_schema", "count_by_state",
           "running_without_heartbeat", "trained_by", "trial_page"]

#: ``value_json`` of the status user attribute of a trial rejected over budget (json.dumps).
REJECTED_JSON = json.dumps("over_budget")
#: ``value_json`` of the status of a trial added by fine-tuning a supernet study's member (``nas study
#: finetune``): complete, but not a new network of the search, so not counted towards the target.
FINETUNED_JSON = json.dumps("finetuned")
#: The columns of Optuna's tables these queries read.
NEEDED: dict[str, tuple[str, ...]] = {
    "studies": ("study_id", "study_name"),
    "trials": ("trial_id", "number", "study_id", "state", "datetime_start"),
    "trial_user_attributes": ("trial_id", "key", "value_json"),
    "trial_heartbeats": ("trial_id",),
}
#: SQL counting a study's trials by state, over-budget (1) and fine-tuned (2) ones (user attribute ``status``) apart.
COUNTS_SQL = ("SELECT q.state, q.rejected, COUNT(*) FROM (SELECT t.state AS state, CASE WHEN a.value_json = "
              f"'{REJECTED_JSON}' THEN 1 WHEN a.value_json = '{FINETUNED_JSON}' THEN 2 ELSE 0 END AS rejected "
              "FROM trials t "
              "JOIN studies s ON s.study_id = t.study_id "
              "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'status' "
              "WHERE s.study_name = :n) q GROUP BY q.state, q.rejected")


def check_schema(conn: Connection) -> str | None:
    """None when Optuna's tables have every column :data:`NEEDED` (or do not exist yet: Optuna
    creates them), else one line naming what is missing and Optuna's schema version."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "trials" not in tables:
        return None
    missing = [f"{t}.{c}" for t, cols in NEEDED.items()
               for c in (cols if t not in tables else sorted(set(cols) - {x["name"] for x in insp.get_columns(t)}))]
    if not missing:
        return None
    version = "schema version unknown"
    if "version_info" in tables:
        row = conn.execute(text("SELECT schema_version, library_version FROM version_info")).first()
        if row is not None:
            version = f"schema {row[0]}, written by Optuna {row[1]}"
    return (f"Optuna's tables lack {', '.join(missing)} ({version}); lightnas reads them as Optuna 5 writes "
            "them: install the Optuna version lightnas requires")


def count_by_state(conn: Connection, name: str) -> Iterable[tuple[Any, int, int]]:
    """``(state, rejected, count)`` rows of study ``name``'s trials: ``rejected`` 1 for over-budget
    trials, 2 for fine-tuned ones, else 0."""
    return [(state, int(rejected), int(n)) for state, rejected, n in conn.execute(text(COUNTS_SQL), {"n": name})]


def trial_page(conn: Connection, name: str, *, after: int, states: tuple[str, ...] | None, limit: int) -> list[int]:
    """Ids of the trials of study ``name`` numbered above ``after`` (in ``states``), by number, at
    most ``limit``: keyset pagination that reads only one page."""
    sql = ("SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id "
           "WHERE s.study_name = :n AND t.number > :after")
    params: dict[str, Any] = {"n": name, "after": after, "limit": limit}
    if states:
        sql += " AND t.state IN (" + ", ".join(f":s{i}" for i in range(len(states))) + ")"
        params.update({f"s{i}": st for i, st in enumerate(states)})
    sql += " ORDER BY t.number LIMIT :limit"
    return [int(r[0]) for r in conn.execute(text(sql), params)]


def trained_by(conn: Connection, spec_hash: str) -> list[tuple[str, int]]:
    """``(study name, trial number)`` of the complete trials, in any study, whose user attribute
    ``status`` is "trained" and ``spec_hash`` this one, first first."""
    sql = text("SELECT s.study_name, t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
               "JOIN trial_user_attributes h ON h.trial_id = t.trial_id AND h.key = 'spec_hash' "
               "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'status' "
               "WHERE h.value_json = :h AND a.value_json = :trained AND t.state = 'COMPLETE' ORDER BY t.trial_id")
    return [(str(n), int(k)) for n, k in conn.execute(sql, {"h": json.dumps(spec_hash),
                                                             "trained": json.dumps("trained")})]


def running_without_heartbeat(conn: Connection, name: str, cutoff: Any) -> list[int]:
    """Ids of RUNNING trials of ``name`` with no heartbeat row that started before ``cutoff``
    (naive UTC, as Optuna 5 stores trial times)."""
    sql = text("SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id "
               "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
               "WHERE s.study_name = :n AND t.state = 'RUNNING' AND h.trial_id IS NULL "
               "AND t.datetime_start < :cutoff")
    return [int(r[0]) for r in conn.execute(sql, {"n": name, "cutoff": cutoff})]
