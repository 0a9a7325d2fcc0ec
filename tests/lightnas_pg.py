"""The one PostgreSQL bootstrap: a throwaway cluster in a temp dir on 127.0.0.1, used by the test
fixtures (tests/conftest.py) and by CI (``.ci/run``), standard library only (CI runs it with the
system ``python3`` before the project is installed).

    python3 tests/lightnas_pg.py start --dir DIR [--createdb NAME]   # prints the SQLAlchemy URL
    python3 tests/lightnas_pg.py stop --dir DIR                      # stops it and removes DIR
    python3 tests/lightnas_pg.py bindir                              # where the server binaries are

As root the server runs as the ``postgres`` OS user (``runuser``); the unix socket lives in the
temp dir (keep its path short); fsync, synchronous commit and full-page writes are off (a test
server: speed over durability).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT = 60.0  # seconds to wait for a started server to accept connections
_OPTS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def pg_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl/postgres: ``pg_config --bindir``, then
    ``/usr/lib/postgresql/*/bin`` (newest first), then the ``PATH``; None if none has them."""
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A throwaway PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only.

    ``start()`` returns its SQLAlchemy URL (database ``postgres``); ``shutdown()`` /
    ``start_again()`` stop it and start it on the same port and data (an outage);
    ``stop()`` stops it and removes the directory.
    """

    def __init__(self, bindir: Path, tmp: Path | None = None) -> None:
        self.bindir = bindir
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        # mkdtemp under /tmp (not pytest's deep tmp dirs): the unix-socket path must stay short.
        self.tmp = tmp if tmp is not None else Path(tempfile.mkdtemp(prefix="lightnas-pg-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
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

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _pg_ctl_start(self, port: int) -> subprocess.CompletedProcess[str]:
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.tmp} {_OPTS}"
        self.started = True
        return self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                         "-w", "-t", str(int(READY_TIMEOUT)), "-o", opts)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll ``pg_isready`` until the server accepts connections (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                  "-U", "postgres", "-t", "1"], capture_output=True, timeout=30)
            if res.returncode == 0:
                return
            time.sleep(0.05)  # back-off between polls, not synchronisation
        raise RuntimeError(f"PostgreSQL on 127.0.0.1:{self.port} not ready after {timeout:.0f}s\n{self._tail()}")

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
            port = free_port()
            res = self._pg_ctl_start(port)
            if res.returncode == 0:
                self.port = port
                break
            errors.append(f"port {port}: {res.stdout}{res.stderr}")
        else:
            raise RuntimeError("pg_ctl start failed:\n" + "\n".join(errors) + "\n" + self._tail())
        self.wait_ready()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        return self.url

    def createdb(self, name: str) -> str:
        """Create database ``name``; its URL."""
        res = subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              "postgres", name], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {res.stdout}{res.stderr}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def shutdown(self) -> None:
        """Stop the server (fast: connections are cut), keeping its data for :meth:`start_again`."""
        res = self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {res.stdout}{res.stderr}")

    def start_again(self) -> None:
        """Start the stopped server on the same port."""
        res = self._pg_ctl_start(self.port)
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}")
        self.wait_ready()

    def stop(self) -> None:
        """Stop the server (fast, else immediate) and remove its directory."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "bindir"])
    p.add_argument("--dir", type=Path, help="the server's directory (created by start)")
    p.add_argument("--createdb", default=None, help="start: also create this database and print its URL")
    args = p.parse_args(argv)
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH)",
              file=sys.stderr)
        return 1
    if args.action == "bindir":
        print(bindir)
        return 0
    if args.dir is None:
        p.error(f"{args.action}: --dir is required")
    server = PrivateServer(bindir, args.dir)
    if args.action == "stop":
        server.started = True
        server.stop()
        return 0
    try:
        url = server.start()
        if args.createdb:
            url = server.createdb(args.createdb)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
