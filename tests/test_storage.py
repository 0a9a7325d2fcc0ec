"""One storage suite, run against SQLite and a real PostgreSQL (the ``storage_url`` fixture)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from storage import SCHEMA_VERSION, Meta, StorageError, Store, normalize_url


def _open(url: str, q) -> None:
    try:
        Store(url).close()
        q.put("ok")
    except Exception as e:  # reported to the parent, which asserts on it
        q.put(f"{type(e).__name__}: {e}")


def test_concurrent_first_time_creation_does_not_fail(storage_url):
    # Several processes creating the tables of an empty database at once race (Optuna too);
    # every one must end up with a working store.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(storage_url, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    results = [q.get(timeout=5) for _ in procs]
    assert results == ["ok"] * 4
    store = Store(storage_url)
    assert store.schema_version == SCHEMA_VERSION
    store.close()


def test_reopening_keeps_data_and_schema_version(storage_url):
    s = Store(storage_url)
    s.put_architecture("a" * 64, "plain", '{"x": 1}')
    s.put_architecture("a" * 64, "plain", '{"x": 1}')  # idempotent
    s.put_artifact("weights/k", b"\x00\x01" * 1000)
    s.close()
    again = Store(storage_url)
    assert again.get_architecture("a" * 64) == '{"x": 1}'
    assert again.get_artifact("weights/k") == b"\x00\x01" * 1000
    assert again.get_artifact("nope") is None
    again.close()


def test_duplicate_evaluation_returns_the_first(storage_url):
    s = Store(storage_url)
    s.put_architecture("b" * 64, "plain", "{}")
    kw = dict(cost={"flops": 1.0}, seconds=1.0, epochs_run=2, curve=[0.5, 0.6], artifact_key=None)
    first = s.put_evaluation("b" * 64, "fk", {"epochs": 2}, val_accuracy=0.6, **kw)
    second = s.put_evaluation("b" * 64, "fk", {"epochs": 2}, val_accuracy=0.9, **kw)
    assert first.val_accuracy == second.val_accuracy == 0.6
    s.set_test_accuracy("b" * 64, "fk", 0.55)
    assert s.get_evaluation("b" * 64, "fk").test_accuracy == 0.55
    s.close()


def test_a_page_of_trials_reads_as_get_trial_does(storage_url):
    # The API's trials pages are read in one batched query; every field must be what Optuna's
    # own per-trial read gives, in the page's order, and only the page's trials.
    import optuna

    s = Store(storage_url)
    study = optuna.create_study(study_name="p", storage=s.optuna, directions=["maximize", "minimize"])
    other = optuna.create_study(study_name="q", storage=s.optuna)
    for i in range(7):
        t = study.ask()
        t.suggest_int("w", 1, 64)
        t.suggest_categorical("block", ["plain", "light"])
        t.set_user_attr("curve", [0.1 * i, 0.2 * i])
        if i == 3:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        elif i != 6:
            study.tell(t, [0.1 * i, float(i)])
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    ids = s.trial_page("p", after=-1, limit=10)
    assert len(ids) == 7
    page = [ids[4], ids[0], ids[6], ids[3]]
    assert s.trials_by_id("p", page) == [s.optuna.get_trial(i) for i in page]
    assert [t.number for t in s.trials_by_id("p", ids[2:5])] == [2, 3, 4]
    assert s.trials_by_id("p", []) == []
    s.close()


def test_newer_schema_is_refused_not_recreated(storage_url):
    s = Store(storage_url)
    with s.session() as sess:
        sess.get(Meta, "schema_version").value = str(SCHEMA_VERSION + 1)
    s.put_architecture("c" * 64, "plain", "{}")
    s.close()
    with pytest.raises(StorageError, match="newer than this lightnas"):
        Store(storage_url)


@pytest.mark.parametrize("url, needle", [
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("sqlite:////no/such/dir/nas.db", "does not exist"),
    ("not a url", "cannot parse"),
])
def test_bad_urls(url, needle):
    with pytest.raises(StorageError, match=needle):
        normalize_url(url)


def test_unreachable_postgres_is_one_line():
    with pytest.raises(StorageError) as e:
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert "cannot connect" in str(e.value) and "\n" not in str(e.value)


def test_default_url_and_env(monkeypatch):
    monkeypatch.delenv("NAS_STORAGE", raising=False)
    assert normalize_url(None) == "sqlite:///nas.db"
    monkeypatch.setenv("NAS_STORAGE", "postgres://u@h/db")
    assert normalize_url(None) == "postgresql+psycopg://u@h/db"


def test_an_optuna_schema_without_the_columns_lightnas_reads_is_one_line(tmp_path: Path) -> None:
    """Every query of Optuna's tables lives in one adapter (storage/_optuna_tables.py), checked at
    open: an Optuna whose tables moved fails in one line naming what is missing, not in a query."""
    import sqlite3

    from conftest import nas_cli

    db = tmp_path / "nas.db"
    Store(f"sqlite:///{db}").close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE trial_heartbeats")
    conn.execute("ALTER TABLE trials DROP COLUMN datetime_start")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=r"lack trials\.datetime_start, trial_heartbeats\.trial_id \(schema 1"):
        Store(f"sqlite:///{db}")
    code, _, err = nas_cli("study", "list", "--storage", f"sqlite:///{db}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Optuna's tables lack" in err, err
