"""The one module that reads Optuna's tables with SQL of its own (issue 29: every such query in one
place, checked against Optuna's schema before the first use).

Optuna's storage API answers per trial; a few questions lightnas asks of whole studies would cost a
round trip per trial through it (counts by state with the over-budget ones apart, a page of trial
ids, which trials trained an architecture, RUNNING trials that never beat). They are answered here
in one query each, over the tables of Optuna's RDB schema (``optuna/storages/_rdb/models.py``):
``studies(study_id, study_name)``, ``trials(trial_id, number, study_id, state, datetime_start)``,
``trial_user_attributes(trial_id, key, value_json)`` and ``trial_heartbeats(trial_id)``.

One write: :func:`insert_trials` stores a batch of finished trials in one transaction (a supernet study's
trials take milliseconds; Optuna's ``create_new_trial`` with a template costs a few queries per
parameter and attribute, ~150 ms a trial). It writes the rows Optuna's own template path writes
(``trials``, ``trial_params``, ``trial_values``, ``trial_user_attributes``, ``trial_system_attributes``,
``trial_intermediate_values``), numbering each trial as Optuna does (the study's trials with a smaller
id) and storing datetimes as naive UTC; SQLite only (PostgreSQL's enum columns need typed casts):
:func:`can_insert` says whether a connection takes it.
:func:`check_schema` verifies that those columns exist (Optuna's ``version_info.schema_version`` is
named in the error), so an Optuna whose schema moved fails in one line instead of in a query.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

__all__ = ["COUNTS_SQL", "FINETUNED_JSON", "NEEDED", "REJECTED_JSON", "can_insert", "check_schema",
           "count_by_state", "insert_trials", "running_without_heartbeat", "trained_by", "trial_page"]

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
#: The columns :func:`insert_trials` writes (checked by :func:`check_schema` with :data:`NEEDED`).
WRITTEN: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "trial_params": ("trial_id", "param_name", "param_value", "distribution_json"),
    "trial_values": ("trial_id", "objective", "value", "value_type"),
    "trial_user_attributes": ("trial_id", "key", "value_json"),
    "trial_system_attributes": ("trial_id", "key", "value_json"),
    "trial_intermediate_values": ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
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
    needed = {t: NEEDED.get(t, ()) + tuple(c for c in WRITTEN.get(t, ()) if c not in NEEDED.get(t, ()))
              for t in [*NEEDED, *(t for t in WRITTEN if t not in NEEDED)]}
    missing = [f"{t}.{c}" for t, cols in needed.items()
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


def can_insert(conn: Connection) -> bool:
    """Whether :func:`insert_trials` writes to this connection's database (SQLite)."""
    return conn.dialect.name == "sqlite"


def _utc(d: Any) -> Any:
    """A naive local datetime (a FrozenTrial's) as the naive UTC Optuna 5 stores."""
    import datetime as dt

    return None if d is None else d.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _float_repr(value: float) -> tuple[float | None, str]:
    """Optuna's stored form of a value or intermediate value: (number or NULL, FINITE | INF_POS | INF_NEG | NAN)."""
    import math

    if math.isnan(value):
        return None, "NAN"
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def insert_trials(conn: Connection, study_id: int, trials: Iterable[Any]) -> list[int]:
    """Store finished ``trials`` (``optuna.trial.FrozenTrial``) in study ``study_id``, in the caller's
    transaction, as Optuna's ``create_new_trial(study_id, template_trial=t)`` would; returns their new ids.
    Call inside ``engine.begin()``: the batch is stored whole or not at all."""
    from optuna.distributions import distribution_to_json
    from sqlalchemy import DateTime, bindparam

    new_trial = text("INSERT INTO trials (study_id, state, datetime_start, datetime_complete) "
                     "VALUES (:s, :state, :ds, :dc) RETURNING trial_id").bindparams(
        bindparam("ds", type_=DateTime()), bindparam("dc", type_=DateTime()))
    number = text("UPDATE trials SET number = (SELECT COUNT(*) FROM trials p WHERE p.study_id = :s "
                  "AND p.trial_id < :t) WHERE trial_id = :t")
    param = text("INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
                 "VALUES (:t, :n, :v, :d)")
    value = text("INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (:t, :o, :v, :k)")
    inter = text("INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                 "intermediate_value_type) VALUES (:t, :o, :v, :k)")
    attr = {table: text(f"INSERT INTO {table} (trial_id, key, value_json) VALUES (:t, :k, :v)")
            for table in ("trial_user_attributes", "trial_system_attributes")}
    ids = []
    for t in trials:
        if not t.state.is_finished():
            raise ValueError(f"trial {t.number} is {t.state.name}: only finished trials are inserted")
        tid = int(conn.execute(new_trial, {"s": study_id, "state": t.state.name, "ds": _utc(t.datetime_start),
                                           "dc": _utc(t.datetime_complete)}).scalar_one())
        conn.execute(number, {"s": study_id, "t": tid})
        rows = [{"t": tid, "n": k, "v": t.distributions[k].to_internal_repr(v),
                 "d": distribution_to_json(t.distributions[k])} for k, v in t.params.items()]
        if rows:
            conn.execute(param, rows)
        vals = t.values or []
        if vals:
            conn.execute(value, [{"t": tid, "o": i, "v": r[0], "k": r[1]}
                                 for i, r in enumerate(map(_float_repr, vals))])
        if t.intermediate_values:
            conn.execute(inter, [{"t": tid, "o": step, "v": r[0], "k": r[1]}
                                 for step, r in ((s_, _float_repr(v)) for s_, v in t.intermediate_values.items())])
        for table, attrs in (("trial_user_attributes", t.user_attrs), ("trial_system_attributes", t.system_attrs)):
            if attrs:
                conn.execute(attr[table], [{"t": tid, "k": k, "v": json.dumps(v)} for k, v in attrs.items()])
        ids.append(tid)
    return ids
