# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use: CPU torch first (so nothing pulls CUDA wheels), then lightnas.
# `make test` (and `make install`, what CI runs) adds the deploy extra (converter and device runtimes: the int8
# tests need them); `make demo` does without it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_STAMP := $(VENV)/.installed-deploy

.PHONY: demo test install lint bench clean

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

test: $(DEPLOY_STAMP)
	$(BIN)/python -m pytest -q

lint: $(DEPLOY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
