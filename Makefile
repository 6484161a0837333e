# The project's two commands: `make demo` and `make test`.  Both set up everything they need
# on a fresh machine (a virtualenv in .venv and the Debian packages), then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PURE_TESTS := tests/unit/dataplane tests/unit/test_native.py tests/integration/dataplane

.PHONY: deps system-deps test lint typecheck unit demo clean native

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	scripts/install-system-deps.sh test

deps: system-deps $(STAMP)

## The HTTP/1 hot path compiled with mypyc (ADR 0052); a no-op when the sources are unchanged.
native: deps
	$(BIN)/python scripts/build_native.py

lint: deps
	$(BIN)/ruff check src tests bench demo fuzz

typecheck: deps
	$(BIN)/mypy

## The whole suite: lint, types, unit, integration and network-namespace e2e tests.
## Then the data plane's tests once more on the pure-Python fallback (TULLE_PURE=1, ADR 0052).
test: deps lint typecheck native
	TULLE_EXPECT_COMPILED=1 $(BIN)/pytest -q -p no:cacheprovider
	TULLE_PURE=1 $(BIN)/pytest -q -p no:cacheprovider $(PURE_TESTS)

unit: deps native
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

## Two sample services meshed by Tulle sidecars on loopback, live traffic, metrics printed.
demo: deps native
	$(BIN)/python demo/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	rm -f src/tulle/_native_build.txt
	find src -name '*.so' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

-include bench/bench.mk
