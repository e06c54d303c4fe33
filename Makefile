# The two commands of the README: `make run` and `make test`.
# Each creates .venv with Python 3.11 on first use and installs pinned versions.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
LISTEN ?= 0.0.0.0:8001

.PHONY: run test lint unit proto models bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.run

## run: install and serve the bundled example repository on $(LISTEN)
run: $(VENV)/.run
	$(BIN)/sidecar serve --model-repository examples/models --listen $(LISTEN) --log-format text

## test: install, lint, type-check and run the whole test suite
test: lint unit

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(VENV)/.test
	$(BIN)/pytest

## proto: regenerate sidecar/rpc/proto from proto/
proto: $(VENV)/.test
	$(BIN)/python scripts/gen_proto.py

## models: regenerate examples/models
models: $(VENV)/.test
	$(BIN)/python examples/make_models.py

## bench: data-plane benchmark against its baselines (see docs/performance.md)
bench: $(VENV)/.test
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
