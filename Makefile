# The project's two commands: `make demo` and `make test`.  Both set up everything they need
# on a fresh machine (a virtualenv in .venv and the Debian packages), then run.
SHELL := /bin/bash
PYTHON ?=
# (empty: scripts/venv.sh picks the distribution's CPython when it is usable, ADR 0124)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PURE_TESTS := tests/unit/dataplane tests/unit/test_native.py tests/integration/dataplane

.PHONY: deps system-deps venv-base test lint typecheck unit demo clean native

$(STAMP): pyproject.toml scripts/venv.sh
	test -x $(BIN)/python || "$$(PYTHON='$(PYTHON)' scripts/venv.sh pick)" -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	scripts/install-system-deps.sh test

## A .venv made with another interpreter than the one scripts/venv.sh picks is made again.
venv-base: system-deps
	PYTHON='$(PYTHON)' scripts/venv.sh check $(VENV)

# The libnghttp2 HTTP/2 engine's C half (cffi, ADR 0051): built in place, never committed.
NG2 := src/tulle/dataplane/protocols/ng2
NG2_STAMP := $(NG2)/.stamp-built
$(NG2_STAMP): $(STAMP) $(NG2)/shim.c $(NG2)/build.py
	$(BIN)/python -m tulle.dataplane.protocols.ng2.build
	touch $@

deps: system-deps venv-base $(STAMP) $(NG2_STAMP)

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

## `tulle demo`: a meshed shop in network namespaces (sidecars, a node agent, mTLS, a canary,
## gRPC, retries), live traffic until Ctrl-C; without root the loopback demo (docs/demo.md).
## DEMO_SECONDS=N stops after N seconds, DEMO_RPS=N sets the load (both read by `tulle demo`).
demo: deps native
	$(BIN)/tulle demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	rm -f $(NG2)/_ng2*.so $(NG2_STAMP)
	rm -f src/tulle/_native_build.txt src/tulle/_native_types.txt src/tulle/_native_profile.txt
	find src -name '*.so' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

-include bench/bench.mk
