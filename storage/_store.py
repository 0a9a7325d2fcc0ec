"""The SQL store: Optuna's ``RDBStorage`` for trials plus lightnas's tables, one database URL.

``Store(url)`` opens (and on first use creates) both. Creating the tables of an empty database
from several processes at once races on SQLite and PostgreSQL (Optuna 5 too): every creation
step here is retried with backoff, so a worker that meets the race waits and goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    ResourceClosedError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from search_spaces import InputError

from . import _optuna_tables as optuna_tables
from ._artifacts import ArtifactsRepo
from ._evaluations import EvaluationsRepo, ProxyCacheRepo
from ._jobs import JobsRepo
from ._retry import retry
from ._schema import (
    JOB_STATES,
    MIGRATIONS,
    SCHEMA_VERSION,
    Base,
    Meta,
    _utcnow,
)
from ._studies import ProfilesRepo, StudiesRepo

__all__ = ["DEFAULT_URL", "JOB_STATES", "OPEN_MODES", "RetryTrial", "Store", "StorageError", "error_hint",
           "error_line", "is_transient", "normalize_url"]

DEFAULT_URL = "sqlite:///nas.db"
#: How a :class:`Store` may treat the database it opens:
#: ``existing``: it must exist and be lightnas's (every command but creation: nothing is created);
#: ``serve``: lightnas's, or empty (its tables are created: a service's first start), never another
#: application's; ``create``: tables are created if missing, also beside another application's
#: (a user explicitly creating a study there).
OPEN_MODES = ("existing", "serve", "create")
_OUR_TABLE = "lightnas_meta"
T = TypeVar("T")


class StorageError(InputError):
    """Bad storage URL, unreachable database, or incompatible schema.

    ``transient`` is true when the cause was the database being unreachable (worth waiting for)
    rather than a request that will fail again (bad password, missing database, bad URL).
    """

    def __init__(self, message: str, *, transient: bool = False, field: str | None = None,
                 argument: bool = True) -> None:
        super().__init__(message, field=field, argument=argument)
        self.transient = transient


#: SQLSTATEs of a server that is away for now: connection exceptions (class 08), shutdown,
#: start-up, too many connections.
_TRANSIENT_SQLSTATES = ("57P01", "57P02", "57P03", "53300")
_TRANSIENT_TEXT = ("connection", "could not connect", "server closed", "terminating", "database is locked",
                   "timeout", "timed out", "refused", "the database system is")


def is_transient(e: BaseException) -> bool:
    """Whether ``e`` means the database is unreachable for now, so that waiting and retrying
    helps: a lost or refused connection, a server shutting down or starting, a locked SQLite
    file. Authentication failures, missing databases or tables, constraint violations and
    read-only files are not."""
    if isinstance(e, StorageError):
        return e.transient
    if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        e = e.__cause__  # Optuna wraps the driver's error raised at commit
    if isinstance(e, (PendingRollbackError, DisconnectionError, PoolTimeoutError, ResourceClosedError)):
        return True  # a session or pool left over from a dropped connection
    if not isinstance(e, DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    code = getattr(e.orig, "sqlstate", None)
    if code:
        return str(code).startswith("08") or code in _TRANSIENT_SQLSTATES
    if isinstance(e, (OperationalError, InterfaceError)):
        text = str(e.orig or e).lower()
        # The server answered at connect time (psycopg gives no SQLSTATE then): a bad password,
        # a missing database or role is final; a server starting, stopping or full is not.
        if "fatal:" in text and not any(t in text for t in ("the database system is", "too many",
                                                             "remaining connection slots", "terminating")):
            return False
        return any(t in text for t in _TRANSIENT_TEXT)
    return False


def normalize_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else ``$NAS_STORAGE``, else ``sqlite:///nas.db``.

    ``postgresql://`` and ``postgres://`` are taken as ``postgresql+psycopg://`` (psycopg 3).

    Raises:
        StorageError: unparsable URL or a database other than SQLite and PostgreSQL.
    """
    raw = url or os.environ.get("NAS_STORAGE") or DEFAULT_URL
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://"):]
    accepted = "accepted: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
    try:
        u = make_url(raw)
    except ArgumentError:
        raise StorageError(f"cannot parse storage URL {_masked(raw)!r}; {accepted}") from None
    except ValueError as e:  # SQLAlchemy reads the port with int(): 'host:notaport', 'host:', '[::1'
        port = str(e).partition(": ")[2].strip("'") if "int()" in str(e) else str(e)
        raise StorageError(f"storage URL {_masked(raw)!r}: the port {port[:40]!r} is not a number; accepted: a "
                           "port from 1 to 65535, e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/DB") from None
    if u.port is not None and not 1 <= u.port <= 65535:
        raise StorageError(f"storage URL {_masked(raw)!r}: port {u.port} is out of range; accepted: a port from 1 "
                           "to 65535, e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/DB")
    backend = u.get_backend_name()
    if backend == "postgresql":
        if u.drivername in ("postgresql", "postgresql+psycopg2"):
            u = u.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if u.database and u.database != ":memory:":
            parent = Path(u.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise StorageError(f"storage URL {raw!r}: directory {parent} does not exist")
    else:
        raise StorageError(f"unsupported database {backend!r} in storage URL; accepted: sqlite:///PATH or "
                           "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
    return u.render_as_string(hide_password=False)


def _masked(raw: str) -> str:
    """A storage URL as typed, its password (``user:PASSWORD@``) masked, for a message about a URL that
    does not parse (so :meth:`Store.display_url` cannot mask it)."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw)


def _creation_race(e: BaseException) -> bool:
    """Whether ``e`` is what two processes creating the same tables at once meet: a duplicate
    table or type (PostgreSQL's catalog unique violation), SQLite's "already exists"."""
    return isinstance(e, IntegrityError) or "already exists" in error_line(e).lower()


_DATABASE_ERRORS = (OperationalError, IntegrityError, DBAPIError, optuna.exceptions.StorageInternalError)


def _retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run ``fn``, retrying creation races and unreachable databases with jittered backoff
    (:func:`storage.retry`); any other database error (a read-only file, a corrupted one, a missing
    permission) at once, as a :class:`StorageError`."""
    try:
        return retry(fn, retryable=lambda e: isinstance(e, _DATABASE_ERRORS) and (is_transient(e) or _creation_race(e)),
                     attempts=attempts, delay=0.1, max_delay=5.0, jitter=True)
    except _DATABASE_ERRORS as e:
        raise StorageError(f"{what} failed: {error_line(e)}{error_hint(error_line(e))}",
                           transient=is_transient(e)) from None


def error_line(e: BaseException) -> str:
    """The first line of a database error's message (the driver's, under Optuna's and
    SQLAlchemy's wrappers), for one-line messages and logs."""
    if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Several worker processes share one file: wait for locks instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    # Pre-ping replaces connections a server restart killed; the timeouts and TCP keepalives keep
    # a silently dropped connection (network partition) from hanging a worker for minutes.
    return {"pool_pre_ping": True, "pool_recycle": 1800, "pool_size": 2, "max_overflow": 4,
            "connect_args": {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                             "keepalives_interval": 10, "keepalives_count": 3}}


class RetryTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Queue a failed trial's parameters again (``failed_trial`` / ``retry_history`` as in Optuna).

    Unlike Optuna's callback, the new trial starts clean: the failed attempt's user attributes
    (its worker, a partial status) and constraint values are not copied; the objective sets
    them again.
    """

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if self._max_retry is not None and self._max_retry < len(history):
            return
        study.add_trial(optuna.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={"failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                          "retry_history": history}))


class Store(StudiesRepo, ProfilesRepo, EvaluationsRepo, ProxyCacheRepo, ArtifactsRepo, JobsRepo):
    """One database: Optuna trials (``self.optuna``) and lightnas's tables.

    Args:
        url: storage URL (see :func:`normalize_url`).
        mode: what may be opened (:data:`OPEN_MODES`): ``existing`` refuses a missing, empty or
            foreign database and creates nothing; ``serve`` creates the tables of an empty one;
            ``create`` (the default) creates them in any database.
        heartbeat_interval: seconds between a running trial's heartbeats; a trial whose
            heartbeat is older than ``grace_period`` is failed by the next worker and retried
            (``RetryFailedTrialCallback``) up to ``max_retry`` times.

    Raises:
        StorageError: bad URL, database unreachable, schema newer than this code, or a database
            ``mode`` must not open (missing, empty, damaged, another application's).
    """

    def __init__(self, url: str | None = None, *, heartbeat_interval: int = 10, grace_period: int | None = 30,
                 max_retry: int = 3, mode: str = "create") -> None:
        if mode not in OPEN_MODES:
            raise ValueError(f"mode must be one of {', '.join(OPEN_MODES)}, got {mode!r}")
        self.url = normalize_url(url)
        self.mode = mode
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}  # per lock name: the threads of this process queue here
        self._file = _sqlite_file(self.url)  # the SQLite file (None for PostgreSQL or in memory)
        self._wal_existed = self._file is not None and _has_wal_files(self._file)
        if self.url.startswith("sqlite"):
            # Looked at read-only before SQLAlchemy connects: connecting creates a missing file, and
            # the WAL pragma rewrites the header of a database that is not ours.
            _check_tables(self.url, mode, _sqlite_tables(self.url, mode))
        if self._file is not None:
            _OPEN_FILES[self._file] = _OPEN_FILES.get(self._file, 0) + 1
        # A database file this process may not write, read by an ``existing`` open while no connection
        # has it open (no -wal, no -shm): read as immutable, so that the read leaves no -wal and -shm
        # files beside it (a read-only connection cannot remove them); a write is refused as read-only.
        engine_url = self.url
        if mode == "existing" and self._file is not None and not self._wal_existed \
                and os.path.isfile(self._file) and not os.access(self._file, os.W_OK):
            engine_url = f"sqlite:///{Path(self._file).as_uri()}?mode=ro&immutable=1&uri=true"
        self.engine: Engine = create_engine(engine_url, **_engine_kwargs(self.url))
        if self.url.startswith("sqlite"):
            # WAL lets many workers share the file; switching a database to it rewrites its header,
            # so an ``existing`` open (a read) leaves the journal mode as it finds it.
            event.listen(self.engine, "connect", _sqlite_pragmas if mode != "existing" else _sqlite_wait)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            tables = _table_names(self.engine, self.url)
        except StorageError:
            self.engine.dispose()
            self._release_file()
            raise
        try:
            _check_tables(self.url, mode, tables)
            creating = _OUR_TABLE not in tables
            _retry(self._init_schema, "creating lightnas tables" if creating else "opening lightnas tables")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = RetryTrial(max_retry=max_retry)
                self.optuna = _retry(lambda: optuna.storages.RDBStorage(
                    engine_url, engine_kwargs=_engine_kwargs(self.url), heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, heartbeat_stale_trial_callback=callback,
                    skip_table_creation=not creating and "studies" in tables),
                    "creating Optuna tables" if creating else "opening Optuna tables")
            with self.engine.connect() as conn:
                mismatch = optuna_tables.check_schema(conn)
            if mismatch is not None:
                raise StorageError(f"storage {self.url}: {mismatch}")
        except BaseException:
            self.engine.dispose()
            self._release_file()
            raise

    # ------------------------------------------------------------------ schema
    def _init_schema(self) -> None:
        existing = self.mode == "existing"
        if not existing:  # an ``existing`` open (every command but creation) never creates what is missing
            Base.metadata.create_all(self.engine, checkfirst=True)
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            where = self.display_url(self.url)
            damaged = "a damaged lightnas database; accepted: one 'nas study create' wrote (restore it from a copy)"
            if row is None:
                if existing:
                    raise StorageError(f"storage {where}: lightnas_meta has no schema_version row ({damaged})")
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            try:
                version = int(str(row.value).strip())
            except ValueError:
                version = -1
            if version < 1:
                raise StorageError(f"storage {where}: schema version {str(row.value)[:40]!r} is not one lightnas "
                                   f"writes (1 to {SCHEMA_VERSION}); {damaged}")
            if existing and version == SCHEMA_VERSION:
                missing = sorted(set(Base.metadata.tables) - set(inspect(s.connection()).get_table_names()))
                if missing:
                    raise StorageError(f"storage {where}: schema version {version} without its table(s) "
                                       f"{', '.join(missing)} ({damaged})")
            if version > SCHEMA_VERSION:
                raise StorageError(f"database schema version {version} is newer than this lightnas "
                                   f"({SCHEMA_VERSION}); upgrade lightnas")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](s.connection())  # type: ignore[operator]
                row.value = str(v)

    @property
    def schema_version(self) -> int:
        with self.session() as s:
            row = s.get(Meta, "schema_version")
            return int(row.value) if row else 0

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()
        self.optuna.remove_session()
        self.optuna.engine.dispose()
        self._release_file()

    def _release_file(self) -> None:
        """After the last connection of this store closed: remove the ``-wal`` and ``-shm`` files a
        SQLite connection that could not finish (a damaged or read-only file) left beside a database
        that had none (:func:`_drop_leftover_wal`), so that a refused read leaves nothing behind."""
        if self._file is None or self._file not in _OPEN_FILES:
            return
        _OPEN_FILES[self._file] -= 1
        if _OPEN_FILES[self._file] <= 0:
            del _OPEN_FILES[self._file]
        _drop_leftover_wal(self._file, self._wal_existed)

    @classmethod
    def open_if_exists(cls, url: str | None = None, **kwargs: Any) -> Store | None:
        """The lightnas database at ``url`` opened as ``existing``, or None when there is none yet
        (no SQLite file, an empty database or another application's); creates and writes nothing,
        so a command can check a request against the database before it creates one.

        Raises:
            StorageError: bad URL, database unreachable or damaged.
        """
        url = normalize_url(url)
        if url.startswith("sqlite"):
            tables = _sqlite_tables(url, "existing")
        else:
            engine = create_engine(url, **_engine_kwargs(url))
            try:
                tables = _table_names(engine, url)
            finally:
                engine.dispose()
        if tables is None or _OUR_TABLE not in tables:
            return None
        return cls(url, mode="existing", **kwargs)

    @staticmethod
    def display_url(url: str) -> str:
        """``url`` with the password masked, for logs."""
        return make_url(url).render_as_string(hide_password=True)

    # ------------------------------------------------------------------ coordination
    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """A lock shared by every process using this database (held for milliseconds).

        PostgreSQL: a session advisory lock (released by the server if the holder dies), so
        workers on several hosts serialise. SQLite: ``flock`` on ``<db file>.lock`` (SQLite
        databases are shared by processes of one host only). The threads of one process (the
        API's request threads) queue on a lock of this process first, so that threads waiting
        for the database's lock never hold every connection of the pool while its holder needs one.
        """
        with self._guard:
            local = self._locks.setdefault(name, threading.RLock())
        with local:
            yield from self._database_lock(name)

    def _database_lock(self, name: str) -> Iterator[None]:
        if self.is_postgres:
            key = zlib.crc32(f"lightnas:{name}".encode()) - 2**31
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    with contextlib.suppress(SQLAlchemyError):  # a dead connection released it already
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
            return
        import fcntl

        database = make_url(self.url).database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{Path(database).expanduser()}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def study_counts(self, name: str) -> dict[str, int]:
        """Trials of study ``name`` by state, read fresh, plus ``REJECTED``: the COMPLETE ones
        rejected over the budget before training (they are in ``COMPLETE`` too), ``FINETUNED``
        (only when there are some): the COMPLETE ones added by fine-tuning members of a supernet
        study, and ``COUNTED``: COMPLETE + PRUNED - REJECTED - FINETUNED, the networks evaluated
        within the budget that a study's target counts."""
        out: dict[str, int] = {"REJECTED": 0}
        finetuned = 0
        with self.engine.connect() as conn:
            for state, rejected, n in optuna_tables.count_by_state(conn, name):
                key = str(getattr(state, "name", state))
                out[key] = out.get(key, 0) + int(n)
                if rejected == 1 and key == "COMPLETE":
                    out["REJECTED"] += int(n)
                elif rejected == 2 and key == "COMPLETE":
                    finetuned += int(n)
        if finetuned:
            out["FINETUNED"] = finetuned
        out["COUNTED"] = out.get("COMPLETE", 0) + out.get("PRUNED", 0) - out["REJECTED"] - finetuned
        return out

    def trial_page(self, name: str, *, after: int = -1, states: tuple[str, ...] | None = None,
                   limit: int = 50) -> list[int]:
        """Ids of the trials of study ``name`` numbered above ``after`` (in ``states``), by number,
        at most ``limit``: keyset pagination that reads only one page."""
        with self.engine.connect() as conn:
            return optuna_tables.trial_page(conn, name, after=after, states=states, limit=limit)

    def trials_by_id(self, name: str, ids: list[int]) -> list[optuna.trial.FrozenTrial]:
        """The trials with these ids, in that order, read in one batched query (Optuna's own loader,
        ``RDBStorage._get_trials``, which selects the page and its params, values and attributes
        together) instead of one ``get_trial`` round trip per trial; per-trial reads if this Optuna
        has no such loader. Ids no longer present are left out."""
        if not ids:
            return []
        batch = getattr(self.optuna, "_get_trials", None)
        if batch is None:
            return [self.optuna.get_trial(i) for i in ids]
        study_id = self.optuna.get_study_id_from_name(name)
        # Optuna's loader takes "ids in this set, or any id above trial_id_greater_than": pass the
        # largest id its INTEGER column can hold (PostgreSQL refuses a larger literal), so that only
        # the set is read.
        by_id = {t._trial_id: t for t in batch(study_id, None, set(ids), 2**31 - 1)}
        return [by_id[i] for i in ids if i in by_id]

    def trained_by(self, spec_hash: str) -> list[tuple[str, int]]:
        """``(study name, trial number)`` of the complete trials, in any study of this database, that
        trained the architecture ``spec_hash`` themselves (user attribute ``status`` "trained"), first
        first: who made the weights a trial that reused them exports."""
        with self.engine.connect() as conn:
            return optuna_tables.trained_by(conn, spec_hash)

    def insert_trials(self, study_id: int, trials: list[optuna.trial.FrozenTrial]) -> list[int] | None:
        """Store finished ``trials`` in Optuna study ``study_id`` in one transaction (all or none), as
        ``create_new_trial(study_id, template_trial=t)`` would one by one; their new ids, or None when this
        database takes no such batch (PostgreSQL: store them with ``create_new_trial``). See
        :func:`storage._optuna_tables.insert_trials`."""
        with self.engine.begin() as conn:
            if not optuna_tables.can_insert(conn):
                return None
            return optuna_tables.insert_trials(conn, study_id, trials)

    def running_without_heartbeat(self, name: str, older_than: float) -> list[int]:
        """Ids of RUNNING trials of ``name`` that never recorded a heartbeat and started more
        than ``older_than`` seconds ago (their process died between ask and its first beat;
        Optuna's stale check skips trials without heartbeats)."""
        import datetime as dt

        # Optuna (>= 5.0) stores trial times as naive UTC, whatever the writing host's time zone.
        cutoff = _utcnow().replace(tzinfo=None) - dt.timedelta(seconds=older_than)
        with self.engine.connect() as conn:
            return optuna_tables.running_without_heartbeat(conn, name, cutoff)



def _some(tables: set[str], n: int = 5) -> str:
    names = sorted(tables)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _table_names(engine: Engine, url: str) -> set[str]:
    """The tables of the database behind ``engine``.

    Raises:
        StorageError: the database cannot be reached (``transient`` when worth waiting for).
    """
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    except SQLAlchemyError as e:
        raise StorageError(f"cannot connect to storage {Store.display_url(url)}: {error_line(e)}"
                           f"{error_hint(error_line(e))}", transient=is_transient(e)) from None


def _check_tables(url: str, mode: str, tables: set[str] | None) -> None:
    """Refuse what ``mode`` must not touch: a database without lightnas's tables for ``existing``
    (``tables`` None: no file yet), another application's (tables, none of ours) for ``serve``."""
    if tables is not None and _OUR_TABLE in tables:
        return
    where = Store.display_url(url)
    accepted = "accepted: a database that 'nas study create' wrote (check --storage or $NAS_STORAGE)"
    if mode == "existing":
        what = (f"has no lightnas tables (it holds {_some(tables)})" if tables
                else "does not exist" if tables is None else "is empty: it has no lightnas studies")
        raise StorageError(f"storage {where} {what}; {accepted}")
    if mode == "serve" and tables:
        raise StorageError(f"storage {where} belongs to another application (it holds {_some(tables)}, none of "
                           "lightnas's tables); accepted: an empty database or a lightnas one; 'nas study create' "
                           "may add lightnas's tables to it explicitly")


#: SQLite files this process has a :class:`Store` open on (resolved path -> how many).
_OPEN_FILES: dict[str, int] = {}


def _sqlite_file(url: str) -> str | None:
    """The resolved path of a SQLite URL's database file; None for PostgreSQL or an in-memory one."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    try:
        return str(Path(database).expanduser().resolve())
    except (OSError, RuntimeError):
        return None


def _has_wal_files(path: str) -> bool:
    return os.path.lexists(f"{path}-wal") or os.path.lexists(f"{path}-shm")


def _drop_leftover_wal(path: str, existed: bool) -> None:
    """Remove the ``-wal`` and ``-shm`` files that a SQLite connection of this process made beside
    ``path`` and could not remove itself: a read-only connection, or one that met a damaged
    database (SQLite's last connection removes them only when it may write and its checkpoint
    succeeds). Only when they were not there before (``existed``) and the file may be written: a
    connection that may write opens and closes the database, which is how SQLite itself removes
    them when no other connection uses them (it leaves them while one does). A file this process
    may not write is read as immutable instead, which makes none (see :class:`Store`).
    """
    import sqlite3

    if existed or not _has_wal_files(path) or _OPEN_FILES.get(path):
        return
    if not (os.access(path, os.W_OK) and os.access(os.path.dirname(path) or ".", os.W_OK)):
        return
    try:
        conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=rw", uri=True)
    except sqlite3.Error:
        return
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error:  # a damaged file: opening the WAL was enough
        pass
    finally:
        conn.close()


def _sqlite_tables(url: str, mode: str) -> set[str] | None:
    """The tables of a SQLite database file, read without writing anything; None when there is no
    file yet, and an empty set for an empty file (which SQLite would make a database of).

    Raises:
        StorageError: the file is not a SQLite database, is damaged, or cannot be read.
    """
    import sqlite3

    database = make_url(url).database
    if not database or database == ":memory:":
        return None if mode == "existing" else set()
    path = Path(database).expanduser()
    if not path.exists():
        return None
    if not path.is_file():
        raise StorageError(f"storage {path}: not a file; accepted: sqlite:///PATH of a database file")
    # Never open() the file itself: closing any descriptor of a file drops every POSIX lock this
    # process holds on it, SQLite's included (a WAL database's other users could then delete its
    # log under our connections). stat() for the size; SQLite judges the rest.
    try:
        if path.stat().st_size == 0:
            return set()
    except OSError as e:
        raise StorageError(f"storage {path}: cannot read ({e.strerror})") from None
    uri = path.resolve().as_uri()
    existed = _has_wal_files(str(path.resolve()))
    # Read-only; a WAL database in a read-only directory cannot make its -shm file, and is then
    # read as immutable (enough to list its tables). A file this process may not write, which no
    # connection has open, is read as immutable at once: a read-only connection would leave -wal
    # and -shm files beside it.
    immutable_only = not existed and not os.access(path, os.W_OK)
    for options in ("mode=ro&immutable=1",) if immutable_only else ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"{uri}?{options}", uri=True)
            try:
                return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                conn.close()
                # a read-only connection leaves the -wal and -shm of a WAL database it opened behind
                _drop_leftover_wal(str(path.resolve()), existed)
        except sqlite3.OperationalError as e:
            if "immutable" in options or not any(t in str(e) for t in ("readonly", "unable to open")):
                raise StorageError(f"storage {path}: {e}{error_hint(str(e))}") from None
        except sqlite3.DatabaseError as e:
            if "file is not a database" in str(e):
                raise StorageError(f"storage {path}: not a SQLite database ({e}); accepted: a database that "
                                   "'nas study create' wrote") from None
            raise StorageError(f"storage {path}: {e}{error_hint(str(e))}") from None
    raise AssertionError("unreachable")


def error_hint(message: str) -> str:
    """What a user can do about a database error, from its text ('' when nothing useful)."""
    text = message.lower()
    if "readonly" in text.replace(" ", "") or "read-only" in text:
        return " (the file or its directory is read-only; accepted: a database file you may write)"
    if "malformed" in text or "not a database" in text:
        return " (a damaged file; restore it from a copy)"
    if "disk is full" in text or "no space" in text:
        return " (the disk is full)"
    return ""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_wait(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()
