"""Shared fixtures: a private ``$NAS_HOME``, SQLite and real-PostgreSQL storage URLs.

PostgreSQL: ``$NAS_TEST_POSTGRES_URL`` if set (``.ci/run`` sets it); otherwise, when the server
binaries are installed, a throwaway server is started for the session (temp dir, trust auth,
127.0.0.1 on a free port) and stopped at the end. Without either the PostgreSQL tests are
skipped -- except under CI (``$CI`` set), where that is a failure, so CI never skips them silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

PG_READY_TIMEOUT = 60.0  # seconds to wait for a started server to accept connections
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


# ------------------------------------------------------------------------------- postgres server


def _pg_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl/pg_isready, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))

    def version_key(path: str) -> tuple[int, ...]:
        part = Path(path).parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit()) or (0,)

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class _PrivateServer:
    """A throwaway PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # mkdtemp under /tmp (not pytest's deep tmp dirs): the unix-socket path must stay short.
        self.tmp = Path(tempfile.mkdtemp(prefix="lightnas-pg-"))
        self.data = self.tmp / "data"
        self.log = self.tmp / "postgres.log"
        self.started = False
        self.port = 0
        self.url = ""
        if self.as_root:
            import pwd

            pw = pwd.getpwnam("postgres")  # KeyError if there is no such user
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)

    def _cmd(self, *args: str) -> list[str]:
        prefix = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"] if self.as_root else []
        return prefix + list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)

    def start(self) -> str:
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                  "--encoding=UTF8", "--no-sync"]
        res = self._run(*initdb, "--locale=C.UTF-8")
        if res.returncode != 0:  # C.UTF-8 missing on some systems
            res = self._run(*initdb)
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

        errors = []
        for _ in range(3):  # the probed port may be taken before postgres binds it
            port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {self.tmp} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            self.started = True
            res = self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                            "-w", "-t", str(int(PG_READY_TIMEOUT)), "-o", opts)
            if res.returncode == 0:
                self.port = port
                break
            errors.append(f"port {port}: {res.stdout}{res.stderr}")
        else:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError("pg_ctl start failed:\n" + "\n".join(errors) + "\n" + tail)

        url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        _wait_ready(url, PG_READY_TIMEOUT, self.log)
        return url

    def _pg_ctl_start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        res = self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                        "-w", "-t", str(int(PG_READY_TIMEOUT)), "-o", opts)
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}")

    def shutdown(self) -> None:
        """Stop the server (fast: connections are cut), keeping its data for :meth:`start_again`."""
        res = self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {res.stdout}{res.stderr}")

    def start_again(self) -> None:
        """Start the stopped server on the same port."""
        self._pg_ctl_start()
        _wait_ready(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres", PG_READY_TIMEOUT, self.log)

    def stop(self) -> None:
        try:
            if self.started and (self.data / "postmaster.pid").exists():
                pg_ctl = str(self.bindir / "pg_ctl")
                try:
                    res = self._run(pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", timeout=60)
                    ok = res.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                if not ok:
                    self._run(pg_ctl, "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "10", timeout=30)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


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

    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("NAS_TEST_POSTGRES_URL is unset and no server binaries were found "
                     "(pg_config --bindir, /usr/lib/postgresql/*/bin); install the `postgresql` package")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` OS user to run initdb as")

    server = _PrivateServer(bindir)
    try:
        try:
            url = server.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(f"could not start a private server from {bindir}: {exc}")
        yield url
    finally:
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[_PrivateServer]:
    """A PostgreSQL server of this test's own (``.url``), which the test may stop and start again.

    Needs the server binaries (the session server may be an external one that tests must not restart).
    """
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("no server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)")
    server = _PrivateServer(bindir)
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


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, empty, uniquely named database on the session server; dropped afterwards."""
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


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``nas ARGS`` in-process: (exit code, stdout, stderr)."""
    from nas.cli import main

    with pytest.raises(SystemExit) as e:
        main([*args])
        raise SystemExit(0)
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err
