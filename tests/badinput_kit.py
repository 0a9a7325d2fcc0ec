"""What the bad-input tests share (tests/test_bad_input*.py): a fingerprint of a SQLite file, the
one-line assertion, tiny study settings and writers of damaged data files. A helper module, not a
test module: test modules never import each other."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
from conftest import TINY_OPTIONS, nas_cli, settle  # noqa: F401 - settle is part of the kit

TOKEN = "t-" + "x" * 30
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = TINY_OPTIONS  # the tiny plain space of conftest's trained study, as CLI options
BASE = {"name": "b1", "space": "plain", "budget": "params<=12k", "trials": 2, "device": "cpu",
        "space_options": {"max_depth": 1, "widths": [8, 16], "kernels": [3], "hidden": [0]},
        "fidelity": {"epochs": 1}}


# --------------------------------------------------------------------------------------------- helpers


def fingerprint(db: Path) -> tuple[str | None, dict[str, list[str]] | None]:
    """(md5 of the file, every row of every table), or (None, None) when there is no file."""
    if not db.exists():
        return None, None
    digest = hashlib.md5(db.read_bytes()).hexdigest()
    if db.stat().st_size == 0:
        return digest, {}
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in sorted(tables)}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        rows = None  # a damaged file: its bytes say it all
    return digest, rows


#: ``nas`` in this process: (exit code, stdout, stderr) -- conftest's one in-process runner.
cli = nas_cli


def create(url: str, name: str) -> int:
    """``nas study create NAME`` of a tiny plain space on digits; the exit code."""
    return cli("study", "create", name, "--space", "plain", "--budget", "params<=12k", *TINY, "--storage", url)[0]


def assert_one_line(code: int, err: str, needle: str = "") -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert needle.lower() in err.lower(), (needle, err)


def unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to ignore file permissions (root in CI:
    setpriv drops CAP_DAC_OVERRIDE), so that read-only files and directories are read-only."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: read-only files cannot be made read-only for root")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


# --------------------------------------------------------------------------------------------- bad files


def idx_bytes(array_shape: tuple[int, ...], magic: int, body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array_shape) + body


def idx_dir(root: Path, images: bytes, labels: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ok_x = idx_bytes((4, 6, 6), 0x803, bytes(144))
    ok_y = idx_bytes((4,), 0x801, bytes([0, 1, 0, 1]))
    for name, payload in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels or ok_y),
                          ("t10k-images-idx3-ubyte", ok_x), ("t10k-labels-idx1-ubyte", ok_y)):
        with gzip.open(root / f"{name}.gz", "wb") as f:
            f.write(payload)
    return root


def cifar_dir(root: Path, batch: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def cifar_batch(data: object, labels: object) -> dict[bytes, object]:
    return {b"data": data, b"labels": labels}
