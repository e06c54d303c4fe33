# The two commands of the README: `make run` and `make test`.
# Each creates .venv with Python 3.11 on first use and installs pinned versions.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

# `make run`: the three addresses (the sidecar's defaults), the repository it
# serves (a scratch copy of examples/models, made once) and its state directory
# (empty: the sidecar's default, one per repository). A second instance needs
# other ports, and another MODELS or a STATE_DIR of its own.
LISTEN         ?= 0.0.0.0:8001
CONTROL_LISTEN ?= 127.0.0.1:8002
METRICS_LISTEN ?= 0.0.0.0:8003
MODELS         ?= .run/models
STATE_DIR      ?=
# `make ctl ARGS="..."`: a `sidecar ctl` command for the sidecar `make run` serves
ARGS           ?= status
CONTROL        := $(subst 0.0.0.0:,127.0.0.1:,$(CONTROL_LISTEN))

.PHONY: run ctl test lint unit test-deps proto models bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.run

# The scratch copy `make run` serves: examples/models stays as committed.
$(MODELS):
	mkdir -p $(dir $(MODELS:/=))
	cp -R examples/models $(MODELS:/=)

## run: install and serve a scratch copy of the example repository on $(LISTEN)
run: $(VENV)/.run | $(MODELS)
	@echo "serving $(MODELS) (a copy of examples/models; rm -rf $(MODELS) to start over)."
	@echo "publish a version: write $(MODELS)/<model>/<N>/model.onnx (e.g. cp -R $(MODELS)/tiny/1 $(MODELS)/tiny/3)."
	@echo "control it from another terminal: make ctl ARGS=\"status\" (or $(BIN)/sidecar ctl --address $(CONTROL) status)."
	$(BIN)/sidecar serve --model-repository $(MODELS) --listen $(LISTEN) \
	  --control-listen $(CONTROL_LISTEN) --metrics-listen $(METRICS_LISTEN) \
	  $(if $(STATE_DIR),--state-dir $(STATE_DIR)) --log-format text

## ctl: run `sidecar ctl $(ARGS)` against the sidecar of `make run` (CONTROL_LISTEN)
ctl: $(VENV)/.run
	@$(BIN)/sidecar ctl --address $(CONTROL) $(ARGS)

## test: install, lint, type-check and run the whole test suite
test: lint unit

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(VENV)/.test test-deps
	$(BIN)/pytest

# The programs the tests run for real besides Python: etcd (tests/etcd_server.py),
# Debian's etcd-server, installed when missing (as root, with apt-get). A policy-rc.d
# that forbids starting services keeps the package's own default instance (on
# 2379/2380) from starting during the install; the tests use free ports anyway.
test-deps:
	@command -v etcd >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || { \
	    echo "etcd is not on PATH: install it (Debian: apt-get install etcd-server)" >&2; exit 1; }; \
	  echo "installing etcd-server (Debian) for the tests"; \
	  policy=/usr/sbin/policy-rc.d; own=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' >$$policy; chmod 755 $$policy; own=1; fi; \
	  apt-get update -q >/tmp/sidecar-test-deps.log 2>&1 \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server \
	       >>/tmp/sidecar-test-deps.log 2>&1; rc=$$?; \
	  [ -z "$$own" ] || rm -f $$policy; \
	  [ $$rc = 0 ] || { tail -20 /tmp/sidecar-test-deps.log >&2; \
	    echo "installing etcd-server failed (log: /tmp/sidecar-test-deps.log)" >&2; exit 1; }; \
	  command -v etcd >/dev/null 2>&1 || { echo "etcd-server installed, but no etcd on PATH" >&2; exit 1; }; \
	}

## proto: regenerate sidecar/rpc/proto and sidecar/fleet/proto from proto/
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
