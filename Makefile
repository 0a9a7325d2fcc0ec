# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use: CPU torch first (so nothing pulls CUDA wheels), then lightnas.
# `make test` (and `make install`, what CI runs) adds the deploy extra (converter and device runtimes: the int8
# tests need them); `make demo` does without it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_STAMP := $(VENV)/.installed-deploy

.PHONY: demo test test-slow test-all install lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ray,api]"
	touch $(STAMP)

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,ray,api,deploy]"
	touch $(DEPLOY_STAMP)

install: $(DEPLOY_STAMP)

demo: $(STAMP)
	$(BIN)/nas demo

# Tests in tiers: `make test` (the README's command) runs the fast tier (everything not marked slow);
# `make test-slow` the rest (networks trained, conversions, PostgreSQL/Ray/browser flows marked slow);
# `make test-all` both, as CI does (.ci/run), each with its 20 slowest tests listed.
# The fast tier runs on every core (pytest-xdist, one process per core; each keeps torch to one thread, so
# the machine's torch threads never exceed its cores); the slow tier runs its servers and clusters one at a time.
test: $(DEPLOY_STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not slow" --durations=20

test-slow: $(DEPLOY_STAMP)
	$(BIN)/python -m pytest -q -m "slow" --durations=20

test-all: test test-slow

lint: $(DEPLOY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
