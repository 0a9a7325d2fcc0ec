"""Typed errors: an error carries its field and its message; the CLI prints the flag, the API returns the
field, and nothing parses a message (issue 29, item 3)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
from conftest import nas_cli
from fastapi.testclient import TestClient

import nas
import objectives
import search_spaces
import storage
from nas.search import make_spec, pareto_rows
from nas.serve import ApiSettings, create_app
from nas.workers import check_run_args
from search_spaces import InputError

ROOT = Path(__file__).resolve().parents[1]

#: Every error class bad user input can raise, by its public face.
INPUT_ERRORS = [search_spaces.SpaceError, search_spaces.SpecError, objectives.DataError, objectives.BudgetError,
                objectives.DeviceError, objectives.MeasurementError, objectives.ProxyError, objectives.DeployError,
                storage.StorageError, nas.NasError, nas.UnknownStudy, nas.UnreadableStudy, nas.StudyExists]


@pytest.mark.parametrize("cls", INPUT_ERRORS, ids=lambda c: c.__name__)
def test_every_input_error_carries_a_field_and_a_message(cls):
    assert issubclass(cls, InputError) and issubclass(cls, ValueError)  # callers catch ValueError still
    e = cls("must be between 1 and 10, got 0", field="trials")
    assert (e.message, e.field, e.argument) == ("must be between 1 and 10, got 0", "trials", True)
    assert str(e) == "trials: must be between 1 and 10, got 0"  # a library user's one line: the field leads
    assert str(cls("no field")) == "no field" and cls("no field").field is None
    back = pickle.loads(pickle.dumps(e))  # from a worker process: the field comes along
    assert type(back) is cls and (back.message, back.field, str(back)) == (e.message, e.field, str(e))


def test_an_error_of_another_layer_is_carried_not_reparsed():
    inner = objectives.MeasurementError("got 'x', accepted: fp32", field="dtype")
    assert (nas.NasError.of(inner).field, nas.NasError.of(inner).message) == ("dtype", inner.message)
    plain = nas.NasError.of(objectives.BudgetError("flops: 'abc' is not a number"), "where")
    assert (plain.field, plain.message) == ("where", "flops: 'abc' is not a number")


def test_library_errors_name_the_argument_as_a_field_not_a_flag(tmp_path):
    with pytest.raises(nas.NasError) as e:
        check_run_args(trials=0)
    assert e.value.field == "trials" and e.value.message.startswith("must be between 1 and ")
    with pytest.raises(nas.NasError) as e:
        check_run_args(workers_per_device=0)
    assert e.value.field == "workers_per_device" and "--" not in str(e.value)
    with pytest.raises(InputError) as e:
        objectives.check_out_dir("  ")
    assert (e.value.field, e.value.message.split(";")[0]) == ("to", "empty")
    with pytest.raises(nas.NasError) as e:
        objectives.read_user_text(tmp_path, "config", 1 << 10, error=nas.NasError)
    assert e.value.field == "config" and e.value.message.startswith(f"{tmp_path} is not a regular file")


def test_a_spec_field_is_a_key_of_the_document_not_an_argument():
    with pytest.raises(nas.NasError) as e:
        make_spec(name="s", space="plain", budget="flops<=abc")
    assert (e.value.field, e.value.argument) == ("budget", False)
    assert str(e.value) == "budget: flops: 'abc' is not a number; write e.g. 5M, 100k, 256KiB, 0.5"
    with pytest.raises(nas.NasError) as e:
        make_spec(name="s", space="plain", budget="params<=20k", fidelity={"epochs": 0})
    assert e.value.field == "fidelity.epochs" and not e.value.argument


def test_the_cli_prints_the_flag_from_the_field():
    code, _, err = nas_cli("demo", "--trials", "0")
    assert code == 2 and err.strip() == "error: --trials: must be between 1 and 1,000,000, got 0", err
    code, _, err = nas_cli("study", "run", "nosuch", "--backend", "ray", "--max-concurrent", "0")
    assert code == 2 and err.strip() == "error: --max-concurrent: must be an integer >= 1, got 0", err
    # A key of the study spec (it may come from a --config file) is printed as it is.
    code, _, err = nas_cli("study", "create", "s", "--space", "plain", "--budget", "flops<=abc",
                           "--storage", "sqlite:///:memory:")
    assert code == 2 and err.strip() == "error: budget: flops: 'abc' is not a number; write e.g. 5M, 100k, " \
                                        "256KiB, 0.5", err


def test_the_api_returns_the_field_the_error_carries(tmp_path):
    write = "w-" + "a" * 30
    auth = {"Authorization": f"Bearer {write}"}
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    study = {"name": "s1", "space": "plain", "budget": "params<=20k", "trials": 2, "target": 0,
             "space_options": {"max_depth": 1, "widths": [8], "hidden": [0]}, "fidelity": {"epochs": 1}}
    with TestClient(create_app(ApiSettings(storage=url, tokens=(write,)))) as c:
        r = c.post("/studies", json={**study, "trials": 0}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "trials", r.text
        assert r.json()["message"].startswith("trials: "), r.text
        r = c.post("/studies", json={**study, "budget": "flops<=abc"}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "budget", r.text
        assert c.post("/studies", json=study, headers=auth).status_code == 201
        again = c.post("/studies", json=study, headers=auth)
        assert again.status_code == 409 and again.json()["field"] == "name", again.text
        r = c.get("/studies/s1/pareto", params={"where": "flops<<3"})
        assert r.status_code == 422 and r.json()["field"] == "where", r.text
        assert r.json()["message"].startswith("where: ") and "--" not in r.json()["message"], r.text
    with pytest.raises(nas.NasError) as e:
        pareto_rows("s1", storage.Store(url), where="flops<<3")
    assert e.value.field == "where"


#: A message that starts with a CLI flag and a colon (``"--trials: ..."``): the CLI's words, not a library's.
FLAG_PREFIX = re.compile(r"--[a-z][a-z0-9-]*:")


def _error_heads(tree: ast.AST) -> list[tuple[int, str]]:
    """The first literal text of every message given to an error (a call of ``...Error(...)``, or of a
    parameter ``error(...)``), with its line."""
    heads = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if not (name.endswith("Error") or name == "error"):
            continue
        first = node.args[0]
        if isinstance(first, ast.JoinedStr) and first.values:
            first = first.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            heads.append((node.lineno, first.value))
    return heads


def test_no_library_message_names_a_flag_as_its_field():
    """Only ``nas.cli`` writes ``--flag:``; everywhere else an error carries ``field="flag"``, and the API
    never parses or strips a message to find one."""
    found = []
    for package in ("search_spaces", "objectives", "storage", "nas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("nas/cli/"):
                continue
            for line, head in _error_heads(ast.parse(path.read_text(), rel)):
                if FLAG_PREFIX.match(head):
                    found.append(f"{rel}:{line}: {head!r}")
    assert not found, "\n".join(found)
    serve = "\n".join(p.read_text() for p in sorted((ROOT / "nas" / "serve").rglob("*.py")))
    assert "field_of" not in serve and 'removeprefix("--")' not in serve


def test_the_guard_sees_a_flag_written_into_a_message():
    tree = ast.parse('raise NasError(f"--trials: must be >= 1, got {trials}")\nraise error("--to: empty")')
    assert [h for _, h in _error_heads(tree) if FLAG_PREFIX.match(h)] == ["--trials: must be >= 1, got ", "--to: empty"]
