"""Bad input loses nothing, anywhere: the probe's categories kept as a test matrix.

Bad numbers (inf, nan, huge, negative, bool-as-int), bad strings (NUL, very long, non-UTF-8), bad
files (empty, truncated, corrupted, foreign) and bad places (unwritable, read-only, non-existent),
through the CLI (one line on stderr, exit code 2), the API (a 4xx with a one-line JSON message)
and the library (the one exception type of each layer). Every case checks that the database is
unchanged: byte for byte where it is a file, table by table otherwise, and not created where
there was none. Property-based tests (Hypothesis) throw arbitrary values at the study spec, budget
expressions and the data loaders' headers and contents.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from badinput_kit import (
    AUTH,
    BASE,
    TINY,
    TOKEN,
    assert_one_line,
    cifar_batch,
    cifar_dir,
    cli,
    create,
    fingerprint,
    idx_bytes,
    idx_dir,
    settle,
    unprivileged,
)
from conftest import NAS
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, text

from nas import NasError
from nas.search import make_spec
from nas.serve import ApiSettings, create_app
from objectives import BudgetError, DataError, load_dataset, parse_budget
from search_spaces import SpaceError, enumerate_choices, get_space, list_spaces, space_class
from storage import StorageError, Store


def bad_data_sources(root: Path) -> dict[str, tuple[str, str]]:
    """Data sources a user might point at: ``{case: (source, words the one line must contain)}``."""
    root.mkdir(parents=True, exist_ok=True)
    npz_bad = root / "bad.npz"
    npz_bad.write_bytes(b"PK\x03\x04 not really a zip")
    npz_nan = root / "nan.npz"
    np.savez(npz_nan, x_train=np.full((4, 6, 6), np.nan, np.float32), y_train=np.arange(4))
    npz_labels = root / "strlabels.npz"
    np.savez(npz_labels, x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.array(["a", "b", "c", "d"]))
    return {
        "idx with 0 images": (f"idx:{idx_dir(root / 'idx0', idx_bytes((0, 28, 28), 0x803, b''))}", "0 images"),
        "idx header overflowing": (f"idx:{idx_dir(root / 'idxbig', idx_bytes((2**31, 2**31, 2**31), 0x803, b''))}",
                                   "truncated"),
        "idx truncated": (f"idx:{idx_dir(root / 'idxcut', idx_bytes((4, 6, 6), 0x803, bytes(100)))}", "truncated"),
        "idx empty file": (f"idx:{idx_dir(root / 'idxempty', b'')}", "too short"),
        "idx wrong magic": (f"idx:{idx_dir(root / 'idxmagic', idx_bytes((4, 6, 6), 0x802, bytes(144)))}", "magic"),
        "cifar with 0 images": (f"cifar10:{cifar_dir(root / 'c0', cifar_batch(np.zeros((0, 3072), np.uint8), []))}",
                                "0 images"),
        "cifar string labels": (
            f"cifar10:{cifar_dir(root / 'cs', cifar_batch(np.zeros((2, 3072), np.uint8), ['a', 'b']))}", "labels"),
        "cifar ragged data": (f"cifar10:{cifar_dir(root / 'cr', {b'data': [[1, 2], [3]], b'labels': [0, 1]})}",
                              "regular array"),
        "cifar not a dict": (f"cifar10:{cifar_dir(root / 'cl', [1, 2, 3])}", "dict"),
        "npz not a zip": (f"npz:{npz_bad}", "cannot read"),
        "npz with NaN": (f"npz:{npz_nan}", "NaN"),
        "npz string labels": (f"npz:{npz_labels}", "labels"),
        "path with NUL": (f"idx:{root}/a\x00b", "NUL"),
        "path over the name limit": (f"idx:{root}/{'a' * 6000}", "longer than paths can be"),
        "missing directory": (f"idx:{root}/nowhere", "not a directory"),
    }


def test_bad_data_files_are_one_data_error_each(tmp_path: Path) -> None:
    for case, (source, needle) in bad_data_sources(tmp_path).items():
        with pytest.raises(DataError) as e:
            load_dataset(source)
        message = str(e.value)
        assert "\n" not in message and len(message) < 600, (case, message)
        assert needle.lower() in message.lower(), (case, message)


def test_bad_data_files_through_the_cli_and_the_api_write_nothing(tmp_path: Path) -> None:
    sources = bad_data_sources(tmp_path / "data")
    db = tmp_path / "nas.db"
    url = f"sqlite:///{db}"
    assert create(url, "keep") == 0
    settle(db)
    before = fingerprint(db)
    for case, (source, needle) in sources.items():
        code, _, err = cli("study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--data", source,
                           "--storage", url)
        assert_one_line(code, err, "data")
        assert needle.lower() in err.lower(), (case, err)
        assert fingerprint(db) == before, case
    api_db = tmp_path / "api.db"
    api_url = f"sqlite:///{api_db}"
    with TestClient(create_app(ApiSettings(storage=api_url, tokens=(TOKEN,), data_roots=(tmp_path,)))) as c:
        assert c.post("/studies", json={**BASE, "name": "keep", "target": 0}, headers=AUTH).status_code == 201
        settle(api_db)
        before = fingerprint(api_db)
        for case, (source, needle) in sources.items():
            r = c.post("/studies", json={**BASE, "name": "x", "data": source}, headers=AUTH)
            assert r.status_code == 422, (case, r.text)
            body = r.json()
            assert body["field"] == "data" and "\n" not in body["message"], (case, body)
            assert needle.lower() in body["message"].lower(), (case, body)
            assert fingerprint(api_db) == before, case


# --------------------------------------------------------------------------------------------- bad numbers, strings


BAD_FIELDS: list[tuple[str, object, str]] = [
    # (field path, value, the field named in the message)
    ("early_stop.\n", None, "early_stop.'\\n': unknown field"),  # a key with a newline: still one line
    ("fidelity.lr", math.inf, "fidelity.lr"),
    ("fidelity.lr", -math.inf, "fidelity.lr"),
    ("fidelity.lr", math.nan, "fidelity.lr"),
    ("fidelity.lr", -0.1, "fidelity.lr"),
    ("fidelity.lr", True, "fidelity.lr"),
    ("fidelity.epochs", 10**30, "fidelity.epochs"),
    ("fidelity.epochs", 0, "fidelity.epochs"),
    ("fidelity.epochs", True, "fidelity.epochs"),
    ("fidelity.epochs", 2.5, "fidelity.epochs"),
    ("fidelity.epochs", "8", "fidelity.epochs"),
    ("fidelity.train_fraction", math.nan, "fidelity.train_fraction"),
    ("fidelity.train_fraction", 1.5, "fidelity.train_fraction"),
    ("fidelity.batch_size", -64, "fidelity.batch_size"),
    ("seed", 2**32, "seed"),
    ("seed", 1180591620717411303424, "seed"),
    ("seed", -1, "seed"),
    ("seed", False, "seed"),
    ("trials", 2_000_000, "trials"),
    ("trials", True, "trials"),
    ("input_size", 10**6, "input_size"),
    ("input_size", 4096, "input_size: got 4096; accepted: 4 to 512 px"),  # resizing digits to it: ~82 GB
    ("device", "meta", "device"),  # no worker trains on it
    ("val_fraction", math.inf, "val_fraction"),
    ("budget_weights", {"params": math.nan}, "budget_weights.params"),
    ("budget_weights", {"params": True}, "budget_weights.params"),
    ("space_options", {"width_mult": math.inf}, "space_options"),
    ("early_stop", {"margin": math.nan}, "early_stop"),
    ("name", "a\x00b", "name"),
    ("name", "x" * 6000, "name"),
    ("name", "", "name"),
    ("budget", "params<=1\x00k", "budget"),
    ("budget", "flops<=" + "9" * 5000, "budget"),
    ("budget", "flops<=inf", "budget"),
    ("budget", "flops<=nan", "budget"),
    ("budget", "flops<=-5", "budget"),
    ("data", "digits\x00", "data"),
    ("space", "plain\x00", "space"),
    ("cost_device", "rpi4" * 2000, "cost_device"),
    ("device", "cuda:\x00", "device"),
    ("objectives", ["accuracy", "accuracy"], "objectives"),
    ("objectives", [], "objectives"),
]


def _with(field: str, value: object) -> dict[str, object]:
    body = json.loads(json.dumps(BASE))
    head, _, tail = field.partition(".")
    if tail:
        body[head] = {**body.get(head, {}), tail: value}
    else:
        body[head] = value
    return body


@pytest.mark.parametrize("field, value, named", BAD_FIELDS, ids=[f"{f}={str(v)[:20]!r}" for f, v, _ in BAD_FIELDS])
def test_a_bad_spec_field_is_one_line_naming_it(field: str, value: object, named: str) -> None:
    fields = _with(field, value)
    if field == "early_stop":
        fields["pruner"] = "pareto"
    with pytest.raises(NasError) as e:
        make_spec(**fields)
    message = str(e.value)
    assert "\n" not in message and message.startswith(named), message


def test_bad_spec_fields_through_the_api_and_toml_write_nothing(tmp_path: Path) -> None:
    api_db = tmp_path / "api.db"
    with TestClient(create_app(ApiSettings(storage=f"sqlite:///{api_db}", tokens=(TOKEN,)))) as c:
        assert c.post("/studies", json={**BASE, "name": "keep", "target": 0}, headers=AUTH).status_code == 201
        settle(api_db)
        before = fingerprint(api_db)
        for field, value, named in BAD_FIELDS:
            body = _with(field, value)
            if field == "early_stop":
                body["pruner"] = "pareto"
            # JSON as clients send it: 1e999 for infinity, NaN and Infinity as Python writes them.
            payload = json.dumps(body).replace("Infinity", "1e999")
            r = c.post("/studies", content=payload.encode(), headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == 422, (field, value, r.text)
            assert "\n" not in r.json()["message"] and r.json()["message"].startswith(named.split(".")[0]), r.text
            assert fingerprint(api_db) == before, (field, value)
        # Other bodies with numbers that are not: a refinement seed of false, a target of true, -1, 10**30.
        bad_other = [("patch", "/studies/keep", {"target": True}), ("patch", "/studies/keep", {"target": -1}),
                     ("patch", "/studies/keep", {"target": 10**30}), ("patch", "/studies/keep", {"target": 1.5})]
        for method, path, body in bad_other:
            r = getattr(c, method)(path, json=body, headers=AUTH)
            assert r.status_code == 422 and r.json()["field"] == "target", r.text
        assert fingerprint(api_db) == before
    db = tmp_path / "cli.db"
    url = f"sqlite:///{db}"
    assert create(url, "keep") == 0
    settle(db)
    before = fingerprint(db)
    toml_values = {"inf": "inf", "-inf": "-inf", "nan": "nan", "true": "true", "huge": "1" + "0" * 30}
    for field in ("lr", "epochs", "train_fraction"):
        for label, literal in toml_values.items():
            if (field, label) == ("lr", "huge"):
                continue  # a finite learning rate however large is the user's to choose (its trials fail as NaN)
            (tmp_path / "s.toml").write_text(f'name = "t"\nspace = "plain"\nbudget = "params<=12k"\n'
                                            f"[fidelity]\n{field} = {literal}\n")
            code, _, err = cli("study", "create", "--config", str(tmp_path / "s.toml"), "--storage", url)
            assert_one_line(code, err, f"fidelity.{field}")
            assert fingerprint(db) == before, (field, label)


CLI_BAD_ARGS: list[tuple[list[str], str]] = [
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--seed", "4294967296"], "seed"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--seed", "-1"], "seed"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--epochs", "abc"], "--epochs"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--epochs", "1e999"], "--epochs"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--train-fraction", "nan"],
     "train_fraction"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--train-fraction", "inf"],
     "train_fraction"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--trials", str(10**30)], "trials"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--option", "width_mult=inf"],
     "space_options"),
    (["study", "create", "x\x01y", "--space", "plain", "--budget", "params<=12k"], "name"),
    (["study", "create", "x" * 6000, "--space", "plain", "--budget", "params<=12k"], "name"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=" + "9" * 4000], "budget"),
    (["study", "run", "nosuch"], "unknown study 'nosuch'; studies here: b1"),
    (["pareto", "nosuch"], "unknown study 'nosuch'; studies here: b1"),
    (["study", "delete", "nosuch", "--yes"], "unknown study 'nosuch'"),
    (["study", "run", "b1", "--trials", "10", "--workers", "0"], "--workers"),
    (["study", "run", "b1", "--trials", "10", "--timeout", "-1"], "--timeout"),
    (["study", "run", "b1", "--trials", "10", "--timeout", "nan"], "--timeout"),
    (["study", "run", "b1", "--trials", "1"], "cannot go below"),
    (["study", "run", "b1", "--trials", "2000000"], "1,000,000"),
    (["study", "run", "b1", "--trials", str(10**30)], "1,000,000"),
    (["pareto", "b1", "--where", "flops<=1\x00"], "where"),
    (["pareto", "b1", "--where", "accuracy>=nan"], "where"),
    (["pareto", "b1", "--format", "xml"], "--format"),
    (["study", "list", "--format", "yaml"], "--format"),
    (["export", "b1", "--trial", "abc", "--to", "x"], "--trial"),
    (["export", "b1", "--trial", "0", "--to", "x", "--formats", ","], "--formats"),
    (["export", "b1", "--trial", "0", "--to", "x", "--formats", "pdf"], "--formats"),
    (["export", "b1", "--trial", str(10**30), "--to", "x"], "trial"),
    (["refine", "b1", "--trial", "0", "--seed", "-3"], "seed"),
    (["refine", "b1", "--trial", "0", "--temperature", "inf"], "temperature"),
    (["refine", "b1", "--trial", "0", "--margin", "nan"], "margin"),
    (["worker", "b1", "--heartbeat", "0"], "--heartbeat"),
    (["hardware", "cost", "--space", "plain", "--seed", "abc"], "--seed"),
    (["hardware", "cost", "--space", "plain", "--input", "1x0x8"], "--input"),
]


def test_bad_arguments_are_one_line_and_the_database_is_unchanged(db: Path) -> None:
    url = f"sqlite:///{db}"
    before = fingerprint(db)
    for args, needle in CLI_BAD_ARGS:
        code, _, err = cli(*args, "--storage", url) if args[0] != "hardware" else cli(*args)
        assert_one_line(code, err, needle)
        assert fingerprint(db) == before, args


def test_bad_config_files(tmp_path: Path) -> None:
    db = tmp_path / "nas.db"
    url = f"sqlite:///{db}"
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\nspace = "plain"\n'.encode("latin-1"))
    (tmp_path / "nul.toml").write_bytes(b'name = "a\x00"\nspace = "plain"\n')
    (tmp_path / "big.toml").write_text("# " + "x" * (2 << 20) + "\n")
    (tmp_path / "empty.toml").write_text("")
    cases = {"binary.toml": "not UTF-8", "latin1.toml": "not UTF-8", "nul.toml": "not valid TOML",
             "big.toml": "at most", "empty.toml": "name", str(tmp_path): "not a regular file",
             "/dev/zero": "not a regular file", str(tmp_path / "missing.toml"): "no such file"}
    for name, needle in cases.items():
        path = name if name.startswith("/") else str(tmp_path / name)
        code, _, err = cli("study", "create", "--config", path, "--storage", url)
        assert_one_line(code, err, needle)
        assert not db.exists(), name  # refused before the database is opened


# --------------------------------------------------------------------------------------------- numbers without a bound


#: Numbers with no upper bound (hours of work, or memory the machine does not have), a bool taken
#: for an int, NaN and infinity, empty places (``Path("")`` is the working directory): ``P`` stands
#: for a new directory under the test's own.
UNBOUNDED_ARGS: list[tuple[list[str], str]] = [
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--input-size", "4096"],
     "accepted: 4 to 512 px"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--device", "meta"],
     "no network trains on a 'meta' device"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--option", "max_depth=True"],
     "max_depth=True"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--option", "max_depth=1000000"],
     "at most 32 blocks per stage"),
    (["study", "create", "x", "--space", "plain", "--budget", "params<=12k", "--option",
      f"widths={tuple(range(8, 5008))}"], "widths: 5,000 values given; accepted: at most 8"),
    (["study", "create", "x", "--space", "mobilenetv2", "--budget", "params<=50k", "--option", "max_depth=32"],
     "accepted: at most 512"),
    (["export", "b1", "--trial", "0", "--to", "P", "--formats", "json", "--epochs", "1000000000"],
     "accepted: 1 to 10,000 epochs"),
    (["export", "b1", "--trial", "0", "--to", "", "--formats", "json"], "--to: empty"),
    (["report", "b1", "--to", " "], "--to: empty"),
    (["refine", "b1", "--trial", "0", "--queue", "--low-rank", "  "], "--low-rank: empty"),
    (["worker", "b1", "--until-done", "--poll-max", "nan"], "--poll-max: got nan"),
    (["worker", "b1", "--until-done", "--poll-max", "inf"], "--poll-max: got inf"),
    (["worker", "b1", "--until-done", "--connect-wait", "nan"], "--connect-wait: got nan"),
    (["hardware", "probe", "--to", "", "--n", "8"], "--to: empty"),
    (["hardware", "probe", "--to", "P", "--n", "8", "--classes", "1000000000"], "accepted: 2 to 1,000"),
    (["hardware", "probe", "--to", "P", "--n", "8", "--seed", "-1"], "--seed: got -1"),
    (["hardware", "probe", "--to", "P", "--n", "8", "--seed", str(2**40)], "--seed: got 1099511627776"),
    (["hardware", "cost", "--space", "plain", "--seed", "-1"], "--seed: got -1"),
    (["hardware", "cost", "--space", "plain", "--seed", str(2**40)], "accepted: an integer from 0 to 4,294,967,295"),
    (["hardware", "cost", "--space", "plain", "--classes", "1000000000"], "accepted: 1 to 10,000"),
    (["hardware", "calibrate", "--specs", "1000000000"], "to 2,000 probe networks"),
    (["hardware", "calibrate", "--specs", "16", "--rounds", "1", "--threads", "-1"], "--threads: got -1"),
    (["hardware", "calibrate", "--specs", "16", "--rounds", "1", "--device", "meta"], "--device"),
]


@pytest.mark.parametrize("args, needle", UNBOUNDED_ARGS, ids=[" ".join(a)[:60] for a, _ in UNBOUNDED_ARGS])
def test_numbers_without_a_bound_and_empty_places_are_one_line(db: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                               needle: str) -> None:
    monkeypatch.chdir(tmp_path)  # where an empty --to would write
    monkeypatch.setenv("NAS_HOME", str(tmp_path / "home"))  # where calibrate would write a profile
    before = fingerprint(db)
    args = [str(tmp_path / "P") if a == "P" else a for a in args]
    storage = [] if args[0] == "hardware" else ["--storage", f"sqlite:///{db}"]
    code, _, err = cli(*args, *storage)
    assert_one_line(code, err, needle)
    assert fingerprint(db) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("nas.db")) == [], "something written"


def test_an_input_size_whose_images_would_not_fit_in_memory_is_refused_before_resizing(tmp_path: Path) -> None:
    """9,000 small images at 512 px (the largest input_size) would take 8.8 GiB as float32: refused
    with the size that fits, before one is resized, and before the database is opened."""
    data = tmp_path / "many.npz"
    np.savez(data, x_train=np.zeros((9000, 8, 8), np.uint8), y_train=np.arange(9000) % 10)
    db = tmp_path / "nas.db"
    code, _, err = cli("study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--data",
                       f"npz:{data}", "--input-size", "512", "--storage", f"sqlite:///{db}")
    assert_one_line(code, err, "input_size: 9,000 images resized to a short side of 512 px would take 8.8 GiB")
    assert "accepted: at most 8 GiB of images (here input_size <= 488)" in err, err
    assert not db.exists()
    # A supernet's data go through the same resize, with the same bound.
    code, _, err = cli("supernet", "train", "sn", "--space", "plain", *TINY, "--data", f"npz:{data}",
                       "--input-size", "512", "--epochs", "1", "--storage", f"sqlite:///{db}")
    assert_one_line(code, err, "input_size: 9,000 images resized to a short side of 512 px would take 8.8 GiB")
    assert not db.exists()


#: Space options a budget check would work on for minutes or hours, or a bool taken for a depth.
SPACE_OPTIONS: list[tuple[str, dict[str, object], str]] = [
    ("plain", {"max_depth": 1_000_000}, "at most 32 blocks per stage"),
    ("resnet", {"widths": list(range(8, 5008))}, "widths: 5,000 values given; accepted: at most 8"),
    ("plain", {"max_depth": True}, "max_depth=True"),
    ("mobilenetv2", {"max_depth": 32}, "accepted: at most 512"),
    ("plain", {"widths": [8, 16, 24, 32, 40, 48, 56, 64], "max_depth": 16}, "accepted: at most 512"),
    ("plain", {"widths": [8, 10**9]}, "positive integers of at most 4,096"),
]


@pytest.mark.parametrize("via", ["toml", "api"])
@pytest.mark.parametrize("space, options, needle", SPACE_OPTIONS, ids=[f"{s} {o}"[:50] for s, o, _ in SPACE_OPTIONS])
def test_space_options_are_capped_in_toml_and_the_api(tmp_path: Path, via: str, space: str,
                                                      options: dict[str, object], needle: str) -> None:
    db = tmp_path / "nas.db"
    url = f"sqlite:///{db}"
    if via == "toml":
        config = tmp_path / "s.toml"
        values = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
        config.write_text(f'name = "x"\nspace = "{space}"\nbudget = "params<=50k"\nspace_options = {{ {values} }}\n')
        code, _, err = cli("study", "create", "--config", str(config), "--storage", url)
        assert_one_line(code, err, needle)
        assert err.startswith("error: space_options: "), err
        assert not db.exists()
        return
    with TestClient(create_app(ApiSettings(storage=url, tokens=(TOKEN,)))) as c:
        assert c.post("/studies", json={**BASE, "name": "keep", "target": 0}, headers=AUTH).status_code == 201
        settle(db)
        before = fingerprint(db)
        r = c.post("/studies", json={**BASE, "space": space, "space_options": options, "budget": "params<=50k"},
                   headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "space_options", r.text
        assert needle in r.json()["message"] and "\n" not in r.json()["message"], r.text
        assert fingerprint(db) == before


OPTION_NAMES = sorted({name for space in list_spaces() for name, _, _ in space_class(space).option_help()})
OPTION_VALUES = st.one_of(st.integers(-2, 10**7), st.booleans(), st.none(), st.floats(), st.text(max_size=4),
                          st.lists(st.integers(-1, 10**5) | st.booleans(), max_size=40),
                          st.lists(st.sampled_from([1, 3, 5, 7, 1.0, 0.5, 0.25, 0.125, "basic", "bottleneck"]),
                                   max_size=20))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(space=st.sampled_from(list_spaces()),
       options=st.dictionaries(st.sampled_from(OPTION_NAMES), OPTION_VALUES, max_size=4))
def test_any_space_options_give_a_bounded_space_or_one_line(space: str, options: dict[str, object]) -> None:
    """Whatever the options, a space is refused in one line or offers each stage at most 512
    choices from at most 16 starts (stem widths x block types): the budget check's dynamic
    programme visits each choice once per width entering a stage, so it stays within seconds."""
    try:
        s = get_space(space, input_shape=(1, 28, 28), **options)
    except SpaceError as e:
        assert "\n" not in str(e) and str(e).strip()
        return
    starts = [g for _, g in enumerate_choices(s.suggest_globals)]
    assert len(starts) <= 16, (options, len(starts))
    g = starts[0]
    cin = s.stem(g).out_channels
    for i in range(len(s.stage_strides)):
        choices = [stage for _, stage in enumerate_choices(lambda t, i=i, cin=cin: s.suggest_stage(t, i, g, cin))]
        assert len(choices) <= 512, (options, i, len(choices))
        assert all(len(stage.blocks) <= 32 for stage in choices)
        cin = choices[0].blocks[-1].out_channels


# --------------------------------------------------------------------------------------------- bad databases


def _foreign(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    return path


def _corrupt(src: Path, dst: Path, table: str) -> Path:
    """A copy of ``src`` whose page holding ``table``'s rows is overwritten (a damaged disk)."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    conn.execute("PRAGMA journal_mode=DELETE")
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(dst, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xde\xad" * (size // 2))
    return dst


READ_COMMANDS = [["study", "list"], ["study", "show", "b1"], ["pareto", "b1"], ["study", "run", "b1", "--quiet"],
                 ["study", "delete", "b1", "--yes"], ["report", "b1", "--to", "REPORT"],
                 ["export", "b1", "--trial", "0", "--to", "EXPORT"], ["study", "enqueue", "b1", "--from", "b1"],
                 ["refine", "b1", "--trial", "0", "--queue"]]


def test_commands_never_create_or_change_a_database_that_is_not_lightnas(trained_db: Path, tmp_path: Path) -> None:
    files = {
        "missing file": (tmp_path / "typo.db", "does not exist"),
        "empty file": (tmp_path / "empty.db", "is empty"),
        "truncated to 0 bytes": (tmp_path / "truncated.db", "is empty"),
        "another application's database": (_foreign(tmp_path / "invoices.db"), "no lightnas tables"),
        "not a database at all": (tmp_path / "junk.db", "not a SQLite database"),
        "a directory": (tmp_path / "adir", "not a file"),
        "a corrupted header page": (tmp_path / "header.db", "not a SQLite database"),
    }
    (tmp_path / "empty.db").write_bytes(b"")
    shutil.copy(trained_db, tmp_path / "truncated.db")
    os.truncate(tmp_path / "truncated.db", 0)
    (tmp_path / "junk.db").write_bytes(os.urandom(8192))
    (tmp_path / "adir").mkdir()
    shutil.copy(trained_db, tmp_path / "header.db")
    with open(tmp_path / "header.db", "r+b") as f:
        f.write(b"\x00" * 100)
    n = 0
    for case, (path, needle) in files.items():
        before = fingerprint(path) if path.is_file() else (None, None)
        for command in READ_COMMANDS:
            args = [a.replace("REPORT", str(tmp_path / "rep")).replace("EXPORT", str(tmp_path / "exp"))
                    for a in command]
            code, _, err = cli(*args, "--storage", f"sqlite:///{path}")
            assert_one_line(code, err, needle)
            assert (fingerprint(path) if path.is_file() else (None, None)) == before, (case, command)
            assert not (tmp_path / "typo.db").exists(), command
            n += 1
        assert not list(tmp_path.glob("*.db-wal")), case
    # A worker or a server may start on an empty database (a deployment's first start), never on
    # another application's; creating a study there is explicit, and allowed.
    invoices = tmp_path / "invoices.db"
    before = fingerprint(invoices)
    code, _, err = cli("worker", "--until-done", "--storage", f"sqlite:///{invoices}")
    assert_one_line(code, err, "belongs to another application")
    with pytest.raises(StorageError, match="another application"):
        create_app(ApiSettings(storage=f"sqlite:///{invoices}", tokens=(TOKEN,)))
    assert fingerprint(invoices) == before
    assert cli("study", "create", "mine", "--space", "plain", "--budget", "params<=12k", *TINY,
               "--storage", f"sqlite:///{invoices}")[0] == 0
    conn = sqlite3.connect(invoices)
    assert conn.execute("SELECT total FROM invoices").fetchall() == [(9.5,)]  # theirs kept, ours beside
    conn.close()
    assert cli("worker", "--until-done", "--no-jobs", "--storage", f"sqlite:///{tmp_path / 'fresh.db'}")[0] == 0


def test_a_damaged_database_is_one_line_naming_the_file(trained_db: Path, tmp_path: Path) -> None:
    n = 0
    for table in ("studies", "lightnas_studies", "trials", "trial_user_attributes"):
        path = _corrupt(trained_db, tmp_path / f"broken-{table}.db", table)
        before = fingerprint(path)
        for command in (["study", "show", "b1"], ["pareto", "b1"], ["study", "list"]):
            code, _, err = cli(*command, "--storage", f"sqlite:///{path}")
            assert_one_line(code, err, str(path))
            assert "malformed" in err or "not a database" in err, err
            assert fingerprint(path) == before
            n += 1


def test_read_only_places(db: Path, tmp_path: Path) -> None:
    prefix = unprivileged()
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_db = ro_dir / "nas.db"
    shutil.copy(db, ro_db)
    ro_db.chmod(0o444)
    before = fingerprint(ro_db)
    env = {**os.environ, "NAS_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, NAS, *args], capture_output=True, text=True, env=env, timeout=300)

    r = run("study", "create", "x", "--space", "plain", "--budget", "params<=12k", *TINY, "--storage",
            f"sqlite:///{ro_db}")
    assert_one_line(r.returncode, r.stderr, "read-only")
    assert fingerprint(ro_db) == before
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    for target in (out / "x", Path("/proc/x"), Path("/dev/null/x"), db):
        r = run("export", "b1", "--trial", "0", "--to", str(target), "--storage", f"sqlite:///{db}")
        assert_one_line(r.returncode, r.stderr, "--to")
    assert not (out / "x").exists()


# --------------------------------------------------------------------------------------------- unreadable rows


def _poison(db: Path, name: str) -> None:
    """A stored spec that no longer validates (as an older lightnas wrote a non-finite number)."""
    conn = sqlite3.connect(db)
    conn.execute("UPDATE lightnas_studies SET spec_json = ? WHERE name = ?",
                 (json.dumps({"name": name, "space": "plain", "fidelity": {"lr": None}}), name))
    conn.commit()
    conn.close()


def test_one_unreadable_study_never_takes_the_others_down(db: Path) -> None:
    url = f"sqlite:///{db}"
    assert create(url, "good") == 0
    _poison(db, "b1")
    code, out, _ = cli("study", "list", "--format", "json", "--storage", url)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["good"]["unreadable"] is None and rows["good"]["space"] == "plain"
    assert "fidelity.lr" in rows["b1"]["unreadable"] and rows["b1"]["within_budget"] == 2
    for command in (["study", "show", "b1"], ["pareto", "b1"], ["study", "run", "b1"], ["export", "b1", "--trial",
                                                                                         "0", "--to", "x"]):
        code, _, err = cli(*command, "--storage", url)
        assert_one_line(code, err, "stored spec cannot be read")
    with TestClient(create_app(ApiSettings(storage=url, tokens=(TOKEN,)))) as c:
        listed = c.get("/studies")
        assert listed.status_code == 200
        by_name = {s["name"]: s for s in listed.json()["studies"]}
        assert by_name["good"]["unreadable"] is None and "fidelity.lr" in by_name["b1"]["unreadable"]
        assert c.get("/studies/b1").json()["unreadable"]
        for path in ("/studies/b1/pareto", "/studies/b1/trials", "/studies/b1/trials/0"):
            r = c.get(path)
            assert r.status_code == 409 and "DELETE /studies/b1" in r.json()["message"], (path, r.text)
        assert c.delete("/studies/b1", headers=AUTH).status_code == 204
        assert [s["name"] for s in c.get("/studies").json()["studies"]] == ["good"]
    _poison(db, "good")
    assert cli("study", "delete", "good", "--yes", "--storage", url)[0] == 0
    assert json.loads(cli("study", "list", "--format", "json", "--storage", url)[1]) == []


# --------------------------------------------------------------------------------------------- the API's edges


def test_api_edges_are_documented_and_exact(db: Path) -> None:
    url = f"sqlite:///{db}"
    with TestClient(create_app(ApiSettings(storage=url, tokens=(TOKEN,)))) as c:
        before = fingerprint(db)
        r = c.put("/studies", headers=AUTH)
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST", r.headers
        r = c.post("/studies/b1", headers=AUTH)
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"DELETE", "GET", "PATCH"}
        r = c.post("/studies", content=b'{"name": "\xc3\x28"}', headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] == "body", r.text
        r = c.post("/studies/b1/trials/0/refine", json={"seed": False}, headers=AUTH)
        assert r.status_code == 422 and r.json()["field"] == "seed", r.text
        r = c.post("/studies/b1/trials/0/refine", content=b'{"temperature": 1e999}',
                   headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert fingerprint(db) == before
        schema = c.get("/openapi.json").json()
        for path, ops in schema["paths"].items():
            for method, op in ops.items():
                if method == "get" and path != "/health":  # open reads: a token is optional
                    assert {} in op["security"], (path, op.get("security"))
                if method in ("post", "patch", "delete"):
                    assert {} not in op["security"], (path, method)
                if "requestBody" in op:
                    assert "400" in op["responses"], (path, method)
    with TestClient(create_app(ApiSettings(storage=url, tokens=(TOKEN,), protect_reads=True))) as c:
        schema = c.get("/openapi.json").json()
        assert {} not in schema["paths"]["/studies"]["get"]["security"]


# --------------------------------------------------------------------------------------------- properties

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=6)
FIELDS = ["name", "space", "space_options", "data", "budget", "budget_weights", "objectives", "sampler", "pruner",
          "early_stop", "inherit_weights", "seed", "device", "cost_device", "trials", "fit_space", "fit_resolution",
          "input_size", "val_fraction", "fidelity", "proxy", "proxy_candidates", "no_such_field"]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_value_of_any_spec_field_gives_a_spec_or_one_line(field: str, value: object) -> None:
    base = {"name": "p", "space": "plain", "budget": "params<=12k"}
    try:
        spec = make_spec(**{**base, field: value})
    except NasError as e:
        assert "\n" not in str(e) and str(e).strip()
        return
    json.loads(spec.to_json())  # what validates is storable, and reads back
    assert type(spec).model_validate_json(spec.to_json()) == spec


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=40), st.text(alphabet="flopsparamkKMGiB<=>.-+e0123456789 _", max_size=40)))
def test_any_budget_text_gives_a_budget_or_one_line(expression: str) -> None:
    try:
        budget = parse_budget(expression)
    except BudgetError as e:
        assert "\n" not in str(e) and str(e).strip()
        return
    assert budget.limits and all(math.isfinite(v) and v > 0 for v in budget.limits.values()), budget.limits
    assert parse_budget(str(budget)).limits == budget.limits


def _load_in(root: Path, source: str) -> None:
    try:
        data = load_dataset(source)
    except DataError as e:
        assert "\n" not in str(e) and str(e).strip()
        return
    assert data.sizes["train"] > 0 and data.num_classes >= 1
    assert all(math.isfinite(float(x.abs().max())) for x in (data.x_train, data.x_val, data.x_test))


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 12), min_size=0, max_size=4),
       magic=st.sampled_from([0x803, 0x801, 0x80B, 0x0, 0xFFFFFFFF]),
       body=st.binary(max_size=600), labels=st.binary(max_size=40), gz=st.booleans())
def test_any_idx_header_and_body_gives_a_dataset_or_one_line(dims: list[int], magic: int, body: bytes,
                                                            labels: bytes, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body
        label_file = idx_bytes((len(labels),), 0x801, labels)
        for name, payload in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", label_file),
                              ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", label_file)):
            if gz:
                with gzip.open(root / f"{name}.gz", "wb") as f:
                    f.write(payload)
            else:
                (root / name).write_bytes(payload)
        _load_in(root, f"idx:{root}")


ARRAYS = st.one_of(
    st.builds(lambda n, v: np.full((n, 3072), v % 256, np.uint8), st.integers(0, 6), st.integers(0, 255)),
    st.builds(lambda n: np.zeros((n, 3072), np.float32), st.integers(1, 3)),
    st.builds(lambda n: np.zeros((n, 7), np.uint8), st.integers(1, 3)),
    st.lists(st.lists(st.integers(0, 255), max_size=4), max_size=3), st.text(max_size=5), st.none(), st.integers())


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=ARRAYS, labels=st.one_of(st.lists(st.integers(-3, 12), max_size=7), st.lists(st.text(max_size=2),
                                                                                            max_size=7),
                                     st.lists(st.floats(), max_size=4), st.none(), st.text(max_size=4)),
       keys=st.sampled_from([(b"data", b"labels"), (b"data",), ("data", "labels"), ()]))
def test_any_cifar_batch_gives_a_dataset_or_one_line(data: object, labels: object, keys: tuple) -> None:
    batch = {keys[0]: data, **({keys[1]: labels} if len(keys) > 1 else {})} if keys else [data, labels]
    with tempfile.TemporaryDirectory() as tmp:
        _load_in(Path(tmp), f"cifar10:{cifar_dir(Path(tmp), batch)}")


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=5),
       dtype=st.sampled_from(["uint8", "float32", "float64", "int64", "bool", "complex64"]),
       fill=st.sampled_from([0, 1, 255, math.nan, math.inf]),
       labels=st.one_of(st.lists(st.integers(-2, 9), max_size=6), st.lists(st.floats(), max_size=6),
                        st.lists(st.booleans(), max_size=6)),
       with_test=st.booleans())
def test_any_npz_gives_a_dataset_or_one_line(shape: list[int], dtype: str, fill: float, labels: list,
                                             with_test: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with np.errstate(invalid="ignore"):
            x = np.full(shape, fill).astype(dtype)
        arrays = {"x_train": x, "y_train": np.array(labels)}
        if with_test:
            arrays.update(x_test=x, y_test=np.array(labels))
        np.savez(Path(tmp) / "d.npz", **arrays)
        _load_in(Path(tmp), f"npz:{Path(tmp) / 'd.npz'}")


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS + ["target", "enqueue", "warm_start"]), value=JSON)
@example(field="space_options", value={"\n": None})  # found by Hypothesis: a key with a line break, named on one line
def test_any_create_request_is_201_or_a_4xx_that_writes_nothing(api_probe: tuple[TestClient, Path], field: str,
                                                                value: object) -> None:
    c, db = api_probe
    before = fingerprint(db)
    body = {**BASE, "name": "probe", "target": 0, field: value}
    r = c.post("/studies", content=json.dumps(body, allow_nan=True).encode(),
               headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code in (201, 400, 409, 422), r.text
    if r.status_code == 201:
        assert c.delete(f"/studies/{r.json()['name']}", headers=AUTH).status_code == 204
        return
    message = r.json()["message"]
    assert "\n" not in message and message.strip()
    assert fingerprint(db) == before


@pytest.fixture(scope="module")
def api_probe(tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("probe") / "api.db"
    with TestClient(create_app(ApiSettings(storage=f"sqlite:///{db}", tokens=(TOKEN,)))) as c:
        assert c.post("/studies", json={**BASE, "name": "keep", "target": 0}, headers=AUTH).status_code == 201
        yield c, db


@pytest.mark.postgres
def test_postgres_reads_create_nothing_and_foreign_databases_are_refused(pg_database: str) -> None:
    def tables() -> list[str]:
        engine = create_engine(pg_database)
        try:
            return sorted(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    for command in READ_COMMANDS[:4]:
        code, _, err = cli(*command, "--storage", pg_database)
        assert_one_line(code, err, "is empty")
    # A refused creation is checked before the database is opened: not even lightnas's tables.
    code, _, err = cli("study", "create", "x", "--space", "plain", "--budget", "flops<=1", "--storage", pg_database)
    assert_one_line(code, err, "below what space 'plain'")
    assert tables() == []
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"))
    engine.dispose()
    code, _, err = cli("study", "show", "b1", "--storage", pg_database)
    assert_one_line(code, err, "no lightnas tables (it holds invoices)")
    code, _, err = cli("worker", "--until-done", "--storage", pg_database)
    assert_one_line(code, err, "belongs to another application")
    assert tables() == ["invoices"]
    code, _, err = cli("study", "create", "x", "--space", "plain", "--budget", "flops<=1M", "--warm-start", "theirs",
                       "--storage", pg_database)
    assert_one_line(code, err, "unknown study 'theirs'")
    assert tables() == ["invoices"]
    assert create(pg_database, "mine") == 0  # explicit: lightnas's tables beside theirs
    assert "invoices" in tables() and "lightnas_studies" in tables()
    store = Store(pg_database, mode="existing")
    assert [r.name for r in store.list_studies()] == ["mine"]
    store.close()
