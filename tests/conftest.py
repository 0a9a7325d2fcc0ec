"""Shared fixtures: a private ``$NAS_HOME``, SQLite and real-PostgreSQL storage URLs.

PostgreSQL: ``$NAS_TEST_POSTGRES_URL`` if set (``.ci/run`` sets it); otherwise, when the server
binaries are installed, a throwaway server is started for the session (temp dir, trust auth,
127.0.0.1 on a free port) and stopped at the end. Without either the PostgreSQL tests are
skipped -- except under CI (``$CI`` set), where that is a failure, so CI never skips them silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from lightnas_pg import PrivateServer, pg_bindir

if os.environ.get("PYTEST_XDIST_WORKER"):  # one test process per core (make test): one torch thread each,
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # and the processes a test starts inherit it
        os.environ.setdefault(_var, "1")

#: The `nas` command of this interpreter's environment, for tests that run it as a user does.
NAS = shutil.which("nas", path=str(Path(sys.executable).parent)) or "nas"


# --------------------------------------------------------------------------------------------- env


@pytest.fixture(scope="session", autouse=True)
def _nas_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``$NAS_HOME`` at a temp dir for the whole session: tests never touch ``~/.lightnas``."""
    home = tmp_path_factory.mktemp("nas_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAS_HOME", str(home))
        yield home


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL not available: {reason}"
    if _in_ci():
        pytest.fail(f"{message} (CI is set, so PostgreSQL tests may not be skipped)", pytrace=False)
    pytest.skip(message)


# ----------------------------------------------------------------------------------------- tiers

#: Fixtures that put a test in the slow tier (``make test-slow``; ``make test`` runs the rest): real
#: servers, browsers and clusters. Markers come from what a test uses, not from a hand-kept list.
SLOW_FIXTURES = {"postgres_url": "PostgreSQL", "private_postgres": "PostgreSQL", "chromium": "Chromium",
                 "local_ray": "Ray", "user_env": "a real process (signals, a user's shell)"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & {"postgres_url", "private_postgres"}:
            item.add_marker(pytest.mark.postgres)
        if used & SLOW_FIXTURES.keys() or item.get_closest_marker("postgres"):  # also storage_url's postgres
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A real local Ray of 2 CPUs for this test (about 6 s and 1 GB; the slow tier), shut down after."""
    import logging

    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------ waiting

#: Bound on every wait for a condition (the machine is shared and slow under load).
WAIT = 240.0


def wait_until(cond: Callable[[], object], what: str, timeout: float = WAIT, every: float = 0.05) -> object:
    """Poll ``cond`` until it gives something true (returned) or ``timeout`` passes (AssertionError
    naming ``what``): waiting on an observable state, never a sleep standing in for one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)  # polling a database, a log or /proc, not synchronising threads
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_server(proc: subprocess.Popen, base: str, timeout: float = 60.0) -> None:
    """Wait until the ``nas serve`` process ``proc`` answers ``GET {base}/health`` (bounded; its
    stderr in the failure if it exits first)."""
    import httpx

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, f"nas serve to answer at {base}", timeout=timeout, every=0.2)


def create_studies(url: str, *specs: object) -> None:
    """Create each study spec in the database at ``url`` (the Python API, as a service would)."""
    from nas.search import create_study
    from storage import Store

    store = Store(url)
    try:
        for s in specs:
            create_study(s, store)  # type: ignore[arg-type]
    finally:
        store.close()


# ------------------------------------------------------------------------------- postgres server


def _admin_conninfo(url: str, dbname: str | None = None) -> dict[str, object]:
    """psycopg connect() kwargs for a SQLAlchemy URL (optionally another database on the server)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    kwargs: dict[str, object] = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username or "postgres",
        "dbname": dbname or u.database or "postgres",
        "connect_timeout": 5,
    }
    if u.password:
        kwargs["password"] = u.password
    return kwargs


def _wait_ready(url: str, timeout: float, log: Path | None = None) -> None:
    """Poll until the server accepts a connection (bounded); raise with the last error otherwise."""
    import psycopg

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(**_admin_conninfo(url, "postgres")) as conn:  # type: ignore[arg-type]
                conn.execute("select 1")
            return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.05)  # back-off between polls, not synchronisation
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"PostgreSQL at {url} not ready after {timeout:.0f}s: {last}\n{tail}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://``) of a real PostgreSQL server for the session."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        _unavailable(f"psycopg is not installed ({exc})")

    env_url = os.environ.get("NAS_TEST_POSTGRES_URL", "").strip()
    if env_url:
        # Explicitly configured: it must work, never skip.
        _wait_ready(env_url, 15.0)
        yield env_url
        return

    bindir = pg_bindir()
    if bindir is None:
        _unavailable("NAS_TEST_POSTGRES_URL is unset and no server binaries were found "
                     "(pg_config --bindir, /usr/lib/postgresql/*/bin); install the `postgresql` package")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` OS user to run initdb as")

    server = PrivateServer(bindir)
    try:
        try:
            url = server.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(f"could not start a private server from {bindir}: {exc}")
        yield url
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this test's own (``.url``), which the test may stop and start again.

    Needs the server binaries (the session server may be an external one that tests must not restart).
    """
    bindir = pg_bindir()
    if bindir is None:
        _unavailable("no server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)")
    server = PrivateServer(bindir)
    try:
        try:
            server.url = server.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(f"could not start a private server from {bindir}: {exc}")
        yield server
    finally:
        server.stop()


def _drop_database(admin: dict[str, object], name: str) -> None:
    import psycopg

    with psycopg.connect(**admin, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                     "where datname = %s and pid <> pg_backend_pid()", (name,))
        conn.execute(f'drop database if exists "{name}"')


@contextlib.contextmanager
def fresh_database(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty, uniquely named database on the server of ``postgres_url``; dropped on exit."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nas_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_conninfo(postgres_url, "postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(f'create database "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, empty, uniquely named database on the session server; dropped afterwards."""
    with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture
def fresh_postgres_url(pg_database: str) -> str:
    """Alias of ``pg_database``."""
    return pg_database


# --------------------------------------------------------------------------------------- storage


def trials_of(url: str, name: str) -> list:
    """Every trial of study ``name`` as the database holds it now (a fresh connection)."""
    import optuna

    from storage import Store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(url)
    try:
        return optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    finally:
        store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/nas.db"


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of ``nas`` run as a real process, as a user's shell runs it (its own
    ``$NAS_HOME``, no ``$NAS_STORAGE``): for tests that need the process itself (signals, exit
    status by a signal). Using it puts a test in the slow tier."""
    env = {**os.environ, "NAS_HOME": str(tmp_path / "home")}
    env.pop("NAS_STORAGE", None)
    return env


@pytest.fixture
def store(storage_url: str) -> Iterator[object]:
    """A :class:`storage.Store` on ``storage_url`` (SQLite, and PostgreSQL in the slow tier), closed after."""
    from storage import Store

    s = Store(storage_url)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], ids=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest) -> str:
    """Each storage test runs on SQLite and on a fresh PostgreSQL database (server started lazily)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_database"))


def add_known_result(store, name: str, *, epochs: int, accuracy: float = 1.0, hw_cost: float = 0.0) -> int:
    """Record a finished architecture in study ``name`` with Optuna's ``add_trial``, as a user who
    knows one would: a flat validation curve at ``accuracy`` and cost ``hw_cost`` (e.g. a perfect,
    free network that every other trial is measured against). Returns its trial number."""
    import optuna

    study = optuna.load_study(study_name=name, storage=store.optuna)
    study.add_trial(optuna.trial.create_trial(
        params={}, distributions={}, values=[accuracy, hw_cost],
        user_attrs={"status": "trained", "spec_hash": "known-" + "0" * 58, "val_accuracy": accuracy,
                    "curve": [accuracy] * epochs, "cost": {"hw_cost": hw_cost, "flops": 0.0, "params": 0.0},
                    "epochs_run": epochs}))
    return study.trials[-1].number


# --------------------------------------------------------------------------------------- browser

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright downloads no browser here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """A headless Debian chromium driven by Playwright for Python (``playwright.sync_api.Browser``).

    Missing chromium or Playwright: a skip with the fix, except under CI, where it is a failure."""
    missing = None
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            missing = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if _in_ci():
            pytest.fail(f"browser tests need {missing} (CI is set, so they may not be skipped)", pytrace=False)
        pytest.skip(missing)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def is_local(url: str) -> bool:
    """The URL stays on this machine: http(s)/ws(s) to 127.0.0.1, or a blob:/data: URL of the page."""
    from urllib.parse import urlsplit

    scheme = urlsplit(url).scheme
    if scheme == "blob":
        return is_local(url[len("blob:"):])
    if scheme in ("data", "about"):
        return True
    return scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname == "127.0.0.1"


def record_requests(context) -> list:
    """Every request the browser context makes (pages, fetches, workers), as Playwright requests;
    one that would leave 127.0.0.1 is aborted (and stays in the list for the test to see)."""
    seen: list = []
    context.on("request", lambda request: seen.append(request))
    context.route(lambda url: not is_local(url), lambda route: route.abort())
    return seen


def nas(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``nas ARGS`` as a user runs it: a process in ``cwd`` with its own ``$NAS_HOME``; raises
    with its output when it fails and ``check``."""
    env = {**os.environ, "NAS_HOME": str(cwd / "home")}
    env.pop("NAS_STORAGE", None)
    r = subprocess.run([NAS, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"nas {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def nas_here(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """:func:`nas` in this process (where a process of its own adds nothing: a refusal, a query):
    run in ``cwd`` with ``$NAS_HOME`` there and ``$NAS_STORAGE`` unset, both restored after."""
    saved = {k: os.environ.get(k) for k in ("NAS_HOME", "NAS_STORAGE")}
    old = os.getcwd()
    os.environ["NAS_HOME"] = str(cwd / "home")
    os.environ.pop("NAS_STORAGE", None)
    os.chdir(cwd)
    try:
        code, out, err = nas_cli(*args)
    finally:
        os.chdir(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if check and code != 0:
        raise AssertionError(f"nas {' '.join(args)} -> {code}\n{out}\n{err}")
    return subprocess.CompletedProcess(["nas", *args], code, out, err)


def nas_cli(*args: str) -> tuple[int, str, str]:
    """``nas ARGS`` in this process (the installed entry point's ``main``): exit code, stdout,
    stderr. The one in-process runner; tests that need a real process (signals, a user's
    environment) run :data:`NAS` as a subprocess."""
    import io

    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ a trained study


def settle(db: Path) -> None:
    """Fold the WAL into the file so that a read cannot change its bytes by checkpointing."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


#: The tiny plain space of the trained study below, as CLI options.
TINY_OPTIONS = ["--option", "max_depth=1", "--option", "widths=(8,16)", "--option", "kernels=(3,)", "--option",
                "hidden=(0,)"]


@pytest.fixture(scope="module")
def trained_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with a study 'b1' of two trained networks (weights stored), settled."""
    root = tmp_path_factory.mktemp("trained")
    db = root / "nas.db"
    url = f"sqlite:///{db}"
    assert nas_cli("study", "create", "b1", "--space", "plain", "--data", "digits", "--budget", "params<=12k",
               "--epochs", "1", "--trials", "2", "--device", "cpu", *TINY_OPTIONS, "--storage", url)[0] == 0
    assert nas_cli("study", "run", "b1", "--quiet", "--storage", url)[0] == 0
    settle(db)
    return db


@pytest.fixture
def db(trained_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "nas.db"
    shutil.copy(trained_db, copy)
    return copy
