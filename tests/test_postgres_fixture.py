"""The PostgreSQL fixtures give a real, usable server and an empty database per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

_seen_databases: list[str] = []


def _table_names(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_server_is_real_postgresql(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("select version()")).scalar_one()
        assert "PostgreSQL" in version
        assert engine.dialect.name == "postgresql"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_fresh_database_is_usable(pg_database: str) -> None:
    engine = sa.create_engine(pg_database)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("create table trial (id serial primary key, score double precision, name text)"))
            conn.execute(sa.text("insert into trial (score, name) values (:s, :n)"),
                         [{"s": 0.5, "n": "a"}, {"s": 0.75, "n": "b"}])
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select name, score from trial order by id")).all()
            current = conn.execute(sa.text("select current_database()")).scalar_one()
        assert [tuple(r) for r in rows] == [("a", 0.5), ("b", 0.75)]
        assert current == sa.engine.make_url(pg_database).database
    finally:
        engine.dispose()
    _seen_databases.append(pg_database)


@pytest.mark.postgres
def test_each_test_gets_a_distinct_empty_database(pg_database: str) -> None:
    # Runs after test_fresh_database_is_usable (file order): its table must not be visible here.
    assert _table_names(pg_database) == []
    assert pg_database not in _seen_databases
    _seen_databases.append(pg_database)


@pytest.mark.postgres
def test_used_databases_are_dropped(postgres_url: str) -> None:
    if not _seen_databases:
        pytest.skip("no earlier pg_database test ran in this session")
    import psycopg

    u = sa.engine.make_url(postgres_url)
    names = [sa.engine.make_url(url).database for url in _seen_databases]
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                         dbname=u.database, connect_timeout=5) as conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
    assert not existing.intersection(names)


@pytest.mark.parametrize("other", ["x"])  # exercise storage_url alongside another parameter
def test_storage_url_covers_both_backends(storage_url: str, other: str) -> None:
    engine = sa.create_engine(storage_url)
    try:
        assert engine.dialect.name in ("sqlite", "postgresql")
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (v text)"))
            conn.execute(sa.text("insert into t values (:v)"), {"v": other})
        with engine.connect() as conn:
            assert conn.execute(sa.text("select v from t")).scalar_one() == other
    finally:
        engine.dispose()


def test_nas_home_is_private() -> None:
    home = Path(os.environ["NAS_HOME"])
    assert home.is_dir()
    assert home != Path.home() / ".lightnas"
