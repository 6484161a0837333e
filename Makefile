# The project's two commands: `make demo` and `make test`.  Both set up everything they need
# on a fresh machine (a virtualenv in .venv and the Debian packages), then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: deps system-deps test lint typecheck unit demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	scripts/install-system-deps.sh test

# The libnghttp2 HTTP/2 engine's C half (cffi, ADR 0051): built in place, never committed.
NG2 := src/tulle/dataplane/protocols/ng2
NG2_STAMP := $(NG2)/.stamp-built
$(NG2_STAMP): $(STAMP) $(NG2)/shim.c $(NG2)/build.py
	$(BIN)/python -m tulle.dataplane.protocols.ng2.build
	touch $@

deps: system-deps $(STAMP) $(NG2_STAMP)

lint: deps
	$(BIN)/ruff check src tests bench demo fuzz

typecheck: deps
	$(BIN)/mypy

## The whole suite: lint, types, unit, integration and network-namespace e2e tests.
test: deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

unit: deps
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

## `tulle demo`: a meshed shop in network namespaces (sidecars, a node agent, mTLS, a canary,
## gRPC, retries), live traffic until Ctrl-C; without root the loopback demo (docs/demo.md).
## DEMO_SECONDS=N stops after N seconds, DEMO_RPS=N sets the load (both read by `tulle demo`).
demo: deps
	$(BIN)/tulle demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	rm -f $(NG2)/_ng2*.so $(NG2_STAMP)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

-include bench/bench.mk
