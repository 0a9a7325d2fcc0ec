"""docker-compose.yml, Dockerfile and .dockerignore: what a user of ``docker compose up --scale worker=N`` relies on.

No Docker engine is needed: the compose file is read with PyYAML (anchors, merge keys and
``${VAR:-default}`` interpolation resolved here the way Compose does), and, when a Compose
binary is installed (``docker compose`` or Debian's ``docker-compose``), validated by it. Under
CI (``$CI`` set) the binary must be there -- ``.ci/run`` installs it -- so that test never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from storage import normalize_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
UP_SERVICES = {"postgres", "api", "worker", "dashboard"}  # what `docker compose up` starts
LIGHTNAS = ("api", "worker", "dashboard", "nas")  # services running the lightnas image

_VAR = re.compile(r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
                  r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        if m.group("op") == ":-":
            return env.get(name) or m.group("default")
        if m.group("op") == "-":
            return env.get(name, m.group("default"))
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def dockerfile_entrypoint() -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    assert len(lines) == 1, lines
    return yaml.safe_load(lines[0].removeprefix("ENTRYPOINT"))  # JSON (exec) form is valid YAML


def argv(service: dict[str, Any]) -> list[str]:
    """The process a container of ``service`` runs: entrypoint + command, through ``sh -c`` wrappers."""
    entry = service.get("entrypoint", dockerfile_entrypoint())
    command = service.get("command", [])
    assert isinstance(entry, list) and isinstance(command, list), "use the exec (list) form"
    full = entry + command
    if full[:2] == ["sh", "-c"] and len(full) > 3:  # sh -c 'SCRIPT ... exec PROG "$@"' $0 ARGS...
        script, args = full[2], full[4:]
        m = re.search(r'exec (\S+) "\$@"$', script)
        assert m, f"a sh -c wrapper must end in exec PROG \"$@\": {script!r}"
        return [m.group(1), *args]
    return full


def option(args: list[str], name: str) -> str:
    assert name in args, (name, args)
    return args[args.index(name) + 1]


def worker_url(doc: dict[str, Any]) -> str:
    return option(argv(doc["services"]["worker"]), "--storage")


def dashboard_url(doc: dict[str, Any]) -> str:
    args = argv(doc["services"]["dashboard"])
    assert args[0] == "optuna-dashboard"
    return args[1]


def seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------------ the file


def test_up_starts_postgres_api_workers_and_dashboard():
    doc = load()
    up = {name for name, svc in doc["services"].items() if not svc.get("profiles")}
    assert up == UP_SERVICES
    for name in LIGHTNAS:
        svc = doc["services"][name]
        assert svc["image"] == doc["services"]["worker"]["image"] and svc["build"] == "."


def test_postgres_has_a_healthcheck_and_keeps_its_data_in_a_named_volume():
    doc = load()
    pg = doc["services"]["postgres"]
    assert pg["image"].startswith("postgres:15")
    assert pg["environment"] == {"POSTGRES_USER": "lightnas", "POSTGRES_PASSWORD": "lightnas",
                                 "POSTGRES_DB": "lightnas"}
    test = pg["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "pg_isready" in " ".join(test[1:])
    assert "-U lightnas" in " ".join(test) and "-d lightnas" in " ".join(test)
    volume, target = pg["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data" and volume in doc["volumes"]  # named, survives `down`
    assert "ports" not in pg  # only this project's containers reach the database


def test_workers_scale_and_wait_for_a_healthy_database():
    doc = load()
    worker = doc["services"]["worker"]
    # A fixed container name or host port would make `--scale worker=N` fail for N > 1.
    assert "container_name" not in worker and "ports" not in worker
    assert argv(worker)[:2] == ["nas", "worker"]
    assert worker["restart"] == "unless-stopped"
    assert 30 <= seconds(worker["stop_grace_period"]) <= 600  # time to stop a trial at its next epoch
    for name in LIGHTNAS:
        assert doc["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("env", [{}, {"POSTGRES_PASSWORD": "s3cret"}], ids=["default", "password-override"])
def test_workers_dashboard_and_cli_use_the_one_postgres_database(env):
    doc = load(env)
    url = worker_url(doc)
    assert dashboard_url(doc) == url  # the dashboard shows the workers' database
    for name in LIGHTNAS:  # and one-off `nas` commands default to it ($NAS_STORAGE)
        assert doc["services"][name]["environment"]["NAS_STORAGE"] == url, name
    pg = doc["services"]["postgres"]["environment"]
    u = make_url(url)
    assert u.drivername == "postgresql+psycopg" and u.host == "postgres" and (u.port or 5432) == 5432
    assert (u.username, u.password, u.database) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert u.password == env.get("POSTGRES_PASSWORD", "lightnas")
    assert normalize_url(url) == url  # lightnas takes it as it is


def test_dashboard_is_published_on_8080_and_serves_all_interfaces_in_its_container():
    doc = load()
    args = argv(doc["services"]["dashboard"])
    assert option(args, "--host") == "0.0.0.0" and option(args, "--port") == "8080"
    ports = doc["services"]["dashboard"]["ports"]
    assert [p.rsplit(":", 1)[1] for p in ports] == ["8080"]
    assert ports[0].split(":")[-2] == "8080"  # host port by default
    assert load({"DASHBOARD_PORT": "9999"})["services"]["dashboard"]["ports"][0].split(":")[-2] == "9999"
    # The sh wrapper first creates the tables (optuna-dashboard crashes on an empty database).
    assert doc["services"]["dashboard"]["entrypoint"][2].startswith("nas study list")


def test_api_runs_nas_serve_published_on_loopback_and_never_writable_without_a_token():
    doc = load()
    api = doc["services"]["api"]
    args = argv(api)
    assert args[:2] == ["nas", "serve"] and option(args, "--host") == "0.0.0.0"
    port = option(args, "--port")
    assert api["ports"] == [f"127.0.0.1:8000:{port}"]  # only this host by default
    assert load({"API_BIND": "0.0.0.0", "API_PORT": "9000"})["services"]["api"]["ports"] == [f"0.0.0.0:9000:{port}"]
    env = load({"NAS_API_TOKEN": "t" * 32})["services"]["api"]["environment"]
    assert env["NAS_API_TOKEN"] == "t" * 32 and env["NAS_STORAGE"] == worker_url(doc)
    # The wrapper: no token -> --read-only (never --insecure); a token -> serve as configured.
    script = api["entrypoint"][2].replace("$$", "$")
    assert "--insecure" not in script
    for token, read_only in (("", True), ("t" * 32, False)):
        out = subprocess.run(["sh", "-c", script.replace('exec nas "$@"', 'printf "%s\\n" "$@"'), "nas",
                              *api["command"]], env={"NAS_API_TOKEN": token, "PATH": os.environ["PATH"]},
                             capture_output=True, text=True, check=True)
        assert ("--read-only" in out.stdout.split()) is read_only, out
        assert ("starts read-only" in out.stderr) is read_only
    health = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/health" in health


def test_dockerfile_builds_a_cpu_non_root_image_with_the_nas_entrypoint():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert re.search(r'pip install "\.\[ray,api,dashboard\]"', text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile_entrypoint() == ["nas"]
    assert re.search(r"NAS_HOME=/data", text) and re.search(r'^VOLUME \["/data"\]', text, re.M)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"ray", "api", "dashboard"} <= extras.keys()
    assert any(r.startswith("optuna-dashboard") for r in extras["dashboard"])


def test_dockerignore_keeps_local_state_out_of_the_image():
    rules = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", "*.db", "**/__pycache__", ".pytest_cache", "nas_runs"} <= rules
    for needed in ("pyproject.toml", "README.md", "nas", "storage", "objectives", "search_spaces"):
        assert needed not in rules  # the build needs them (README.md is the package's readme)


# ------------------------------------------------------------------------------- the validator


def _in_ci() -> bool:  # as tests/conftest.py
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        with_plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if with_plugin.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = compose_command()
    if cmd is None:
        message = "no Compose binary (`docker compose` plugin or `apt-get install docker-compose`)"
        if _in_ci():
            pytest.fail(f"{message}; CI is set, so the compose validation may not be skipped", pytrace=False)
        pytest.skip(message)
    return cmd


def run_compose(compose: list[str], path: Path, *args: str, env: dict[str, str] | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DASHBOARD_", "NAS_WORKER"))}
    full_env.update(env or {})
    return subprocess.run([*compose, "-f", str(path), *args], capture_output=True, text=True, timeout=120,
                          cwd=path.parent, env=full_env, stdin=subprocess.DEVNULL)


def test_compose_validates_the_file(compose):
    res = run_compose(compose, COMPOSE, "config", "-q")
    assert res.returncode == 0, res.stderr


def test_compose_reads_it_as_these_tests_do(compose):
    """Compose's own resolved config (anchors, merges, variables) agrees with the PyYAML reading."""
    res = run_compose(compose, COMPOSE, "config", env={"POSTGRES_PASSWORD": "s3cret"})
    assert res.returncode == 0, res.stderr
    resolved = interpolate(yaml.safe_load(res.stdout), {})  # its output is a compose file too ($$ escaped)
    assert {n for n, svc in resolved["services"].items() if not svc.get("profiles")} == UP_SERVICES
    assert worker_url(resolved) == dashboard_url(resolved) == worker_url(load({"POSTGRES_PASSWORD": "s3cret"}))
    assert ":s3cret@" in worker_url(resolved)
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"


def test_compose_rejects_a_broken_file(compose, tmp_path):
    """The validator is not a no-op: an unknown key or a wrong type fails it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:", 1))
    res = run_compose(compose, broken, "config", "-q")
    assert res.returncode != 0 and "stop_grace_periode" in res.stdout + res.stderr
