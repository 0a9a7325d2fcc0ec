"""The PostgreSQL fixtures give a real, usable server and an empty database per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import fresh_database


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
def test_each_database_is_fresh_usable_distinct_and_dropped(postgres_url: str) -> None:
    """The ``pg_database`` fixture's life (:func:`conftest.fresh_database`), in one test: no test
    depends on another having run before it."""
    import psycopg

    with fresh_database(postgres_url) as first:
        engine = sa.create_engine(first)
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
            assert current == sa.engine.make_url(first).database
        finally:
            engine.dispose()
        with fresh_database(postgres_url) as second:
            assert second != first
            assert _table_names(second) == [], "the first database's table must not be visible"
    u = sa.engine.make_url(postgres_url)
    names = {sa.engine.make_url(url).database for url in (first, second)}
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                         dbname=u.database, connect_timeout=5) as conn:
        existing = {row[0] for row in conn.execute("select datname from pg_database")}
    assert not existing & names, "used databases are dropped"


@pytest.mark.postgres
def test_the_fixture_gives_an_empty_database(pg_database: str) -> None:
    assert _table_names(pg_database) == []
    assert sa.engine.make_url(pg_database).database.startswith("nas_test_")


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
