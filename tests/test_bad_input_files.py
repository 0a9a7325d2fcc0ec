"""Files a user names that are not regular files, are enormous, loop or nest without end (issue 28, section 3).

Wherever a command reads a file because a user named it (``--enqueue``, ``study enqueue --spec``,
``hardware fit --measurements``, ``hardware cost --device`` and ``--spec``, ``--cost-device``,
``--config``, a profile in ``$NAS_HOME/devices``), a FIFO or ``/dev/zero`` is refused at once
("not a regular file") and a file over the size cap is refused with the cap; a symbolic link
loop, binary bytes and JSON or TOML nested thousands of levels deep are one line each. Over the
API a cost profile is a name, never a path of the server: the answer neither hangs nor tells
whether a file exists. A call that blocks on a FIFO is released (a writer opens and closes it)
and fails the test, instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from badinput_kit import AUTH, BASE, TINY, TOKEN, assert_one_line, cli, create, fingerprint, settle
from fastapi.testclient import TestClient

from nas.serve import ApiSettings, create_app
from objectives import get_device
from storage import Store

#: Seconds a refusal may take at most: it takes milliseconds, a read of a FIFO never ends.
WAIT = 60.0
#: Over every size cap of a file a user names (the largest, --measurements: 64 MiB); sparse, so instant.
ENORMOUS = (64 << 20) + 1
DEEP = 5000  # levels of nesting: past Python's recursion limit in json and tomllib


def _release(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` (in its open or its read) go on: a writer opens and closes it."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader is waiting
        return
    os.close(fd)


def at_once(fn: Callable[[], Any], *fifos: Path) -> Any:
    """``fn()``, which must return within :data:`WAIT` seconds; one still blocked on ``fifos`` is
    released and the test fails."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(WAIT)
    if worker.is_alive():
        for fifo in fifos:
            _release(fifo)
        worker.join(WAIT)
        pytest.fail(f"still running after {WAIT:.0f} s: blocked reading a file")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _file(tmp_path: Path, kind: str) -> Path:
    """A path of ``kind``: ``fifo`` (a named pipe with no writer), ``dev-zero`` (a symbolic link to
    /dev/zero named like a JSON file) or ``enormous`` (a sparse file over every cap)."""
    path = tmp_path / f"bad-{kind}.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(ENORMOUS)
    return path


#: Commands that read a file a user names: FILE stands for it, URL for the database.
READERS: dict[str, list[str]] = {
    "study create --enqueue": ["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY,
                               "--enqueue", "FILE", "--storage", "URL"],
    "study enqueue --spec": ["study", "enqueue", "keep", "--spec", "FILE", "--storage", "URL"],
    "hardware fit --measurements": ["hardware", "fit", "myboard", "--measurements", "FILE", "--no-store"],
    "hardware cost --device": ["hardware", "cost", "--space", "plain", "--device", "FILE"],
    "hardware cost --spec": ["hardware", "cost", "--spec", "FILE"],
    "study create --cost-device": ["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY,
                                   "--cost-device", "FILE", "--storage", "URL"],
    "study create --config": ["study", "create", "--config", "FILE", "--storage", "URL"],
}


@pytest.fixture
def keep_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database with one study 'keep' (settled), and a private $NAS_HOME for what a command might write."""
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))
    db = tmp_path / "nas.db"
    assert create(f"sqlite:///{db}", "keep") == 0
    settle(db)
    return db


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "enormous"])
@pytest.mark.parametrize("reader", list(READERS))
def test_a_file_that_is_not_a_regular_file_or_is_enormous_is_refused_at_once(keep_db: Path, tmp_path: Path,
                                                                              reader: str, kind: str) -> None:
    bad = _file(tmp_path, kind)
    args = [str(bad) if a == "FILE" else f"sqlite:///{keep_db}" if a == "URL" else a for a in READERS[reader]]
    before = fingerprint(keep_db)
    code, _, err = at_once(lambda: cli(*args), bad)
    assert_one_line(code, err, "at most 64 MiB" if reader.endswith("--measurements") else "at most")
    assert ("is not a regular file" if kind != "enormous" else f"{ENORMOUS:,} bytes") in err, err
    assert str(bad) in err, err
    assert fingerprint(keep_db) == before
    assert not (tmp_path / "home" / "devices").exists()  # hardware fit wrote no profile


def test_profiles_in_nas_home_that_cannot_be_read_are_skipped_in_one_line_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_HOME", str(tmp_path))
    devices = tmp_path / "devices"
    devices.mkdir()
    os.mkfifo(devices / "pipe.toml")
    (devices / "zero.toml").symlink_to("/dev/zero")
    (devices / "loop.toml").symlink_to(devices / "loop.toml")
    with open(devices / "huge.toml", "wb") as f:
        f.truncate(5 << 20)  # over the 4 MiB of a profile
    (devices / "deep.toml").write_text("name = " + "[" * DEEP + "]" * DEEP + "\n")
    (devices / "mine.toml").write_text(get_device("rpi4").model_copy(update={"name": "mine"}).to_toml())
    bad = {"pipe": "not a regular file", "zero": "not a regular file", "loop": "symbolic link loop",
           "huge": "at most 4 MiB", "deep": "nested too deeply"}
    code, out, err = at_once(lambda: cli("hardware", "profiles", "--format", "json"), devices / "pipe.toml")
    assert code == 0, err
    names = {row["name"] for row in json.loads(out)}
    assert {"rpi4", "cortex-m7", "mine"} <= names and not names & set(bad), names
    lines = err.strip().splitlines()
    assert len(lines) == len(bad), err
    for name, needle in bad.items():
        assert any(f"'{name}'" in line and needle in line for line in lines), (name, err)
    # Costing with one of them, or creating a study on it, is one line too (and never blocks).
    for name, needle in bad.items():
        for args in (["hardware", "cost", "--space", "plain", "--device", name],
                     ["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--cost-device",
                      name, "--storage", f"sqlite:///{tmp_path / 'nas.db'}"]):
            code, _, err = at_once(lambda args=args: cli(*args), devices / "pipe.toml")
            assert_one_line(code, err, needle)
    assert not (tmp_path / "nas.db").exists()


def test_symbolic_link_loops_are_one_line(keep_db: Path, tmp_path: Path) -> None:
    loop = tmp_path / "LOOP"
    loop.symlink_to(loop)
    url = f"sqlite:///{keep_db}"
    before = fingerprint(keep_db)
    cases = [(["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--data", f"npz:{loop}",
               "--storage", url], "symbolic link loop"),
             (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--data", f"idx:{loop}",
               "--storage", url], "symbolic link loop"),
             (["study", "list", "--storage", f"sqlite:///{loop}"], "symbolic link loop"),
             (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--storage",
               f"sqlite:///{loop}"], "symbolic link loop"),
             (["worker", "--until-done", "--storage", f"sqlite:///{loop}"], "symbolic link loop"),
             (["serve", "--insecure", "--storage", f"sqlite:///{loop}"], "symbolic link loop"),
             (["hardware", "cost", "--space", "plain", "--device", str(loop)], "symbolic link loop"),
             (["study", "create", "--config", str(loop), "--storage", url], "symbolic link loop")]
    for args, needle in cases:
        code, _, err = cli(*args)
        assert_one_line(code, err, needle)
        assert fingerprint(keep_db) == before, args


#: File contents no reader can use: bytes that are not UTF-8, JSON or TOML nested thousands of levels deep.
BINARY = bytes(range(128, 256)) * 8
DEEP_JSON = ("[" * DEEP + "]" * DEEP).encode()
DEEP_TOML = ("name = " + "[" * DEEP + "]" * DEEP + "\n").encode()
CONTENTS = [
    ("study create --enqueue", BINARY, "not UTF-8"),
    ("study create --enqueue", DEEP_JSON, "nested too deeply"),
    ("study enqueue --spec", BINARY, "not UTF-8"),
    ("study enqueue --spec", DEEP_JSON, "nested too deeply"),
    ("hardware cost --spec", BINARY, "not UTF-8"),
    ("hardware cost --spec", DEEP_JSON, "nested too deeply"),
    ("hardware cost --device", DEEP_TOML, "nested too deeply"),
    ("study create --cost-device", DEEP_TOML, "nested too deeply"),
    ("study create --config", DEEP_TOML, "too deeply"),
]


@pytest.mark.parametrize("reader, content, needle", CONTENTS,
                         ids=[f"{r} {'binary' if c is BINARY else 'deep'}" for r, c, _ in CONTENTS])
def test_binary_bytes_and_deep_nesting_are_one_line(keep_db: Path, tmp_path: Path, reader: str, content: bytes,
                                                    needle: str) -> None:
    path = tmp_path / ("file.toml" if content is DEEP_TOML else "file.json")
    path.write_bytes(content)
    args = [str(path) if a == "FILE" else f"sqlite:///{keep_db}" if a == "URL" else a for a in READERS[reader]]
    before = fingerprint(keep_db)
    code, _, err = cli(*args)
    assert_one_line(code, err, needle)
    assert fingerprint(keep_db) == before


# --------------------------------------------------------------------------------------------- the API


def test_the_api_takes_a_cost_profile_by_name_never_a_server_path(tmp_path: Path) -> None:
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    real = tmp_path / "real.toml"  # a valid profile file on the server: still not something a client may name
    real.write_text(get_device("rpi4").model_copy(update={"name": "real"}).to_toml())
    db = tmp_path / "api.db"
    with TestClient(create_app(ApiSettings(storage=f"sqlite:///{db}", tokens=(TOKEN,)))) as c:
        assert c.post("/studies", json={**BASE, "name": "keep", "target": 0}, headers=AUTH).status_code == 201
        settle(db)
        before = fingerprint(db)
        answers = {}
        for value in (str(fifo), "/dev/zero", str(real), str(tmp_path / "missing.toml"), "real.toml",
                      "../devices/rpi4", str(tmp_path)):
            r = at_once(lambda value=value: c.post("/studies", json={**BASE, "cost_device": value}, headers=AUTH), fifo)
            assert r.status_code == 422 and r.json()["field"] == "cost_device", (value, r.text)
            answers[value] = r.json()["message"].replace(repr(value[:100]), "VALUE")
            assert fingerprint(db) == before, value
        assert len(set(answers.values())) == 1, answers  # the same answer whether a file is there or not
        assert "never a path" in next(iter(answers.values()))


def test_the_api_takes_profiles_of_its_database_and_skips_unreadable_server_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_HOME", str(tmp_path))
    (tmp_path / "devices").mkdir()
    os.mkfifo(tmp_path / "devices" / "pipe.toml")
    db = tmp_path / "api.db"
    url = f"sqlite:///{db}"
    assert create(url, "keep") == 0
    store = Store(url)
    store.save_device_profile("dbboard", get_device("rpi4").model_copy(update={"name": "dbboard"}).to_toml())
    store.close()
    with TestClient(create_app(ApiSettings(storage=url, tokens=(TOKEN,)))) as c:
        r = c.post("/studies", json={**BASE, "cost_device": "dbboard"}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["cost_device"] == "dbboard"
        settle(db)
        before = fingerprint(db)
        r = c.post("/studies", json={**BASE, "name": "b2", "cost_device": "nosuch"}, headers=AUTH)
        assert r.status_code == 422 and "dbboard" in r.json()["message"] and "rpi4" in r.json()["message"], r.text
        r = at_once(lambda: c.post("/studies", json={**BASE, "name": "b2", "cost_device": "pipe"}, headers=AUTH),
                    tmp_path / "devices" / "pipe.toml")
        assert r.status_code == 422 and r.json()["field"] == "cost_device", r.text
        assert "not a regular file" in r.json()["message"] and "\n" not in r.json()["message"]
        assert fingerprint(db) == before
