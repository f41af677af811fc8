# Vigil — every entry point a developer or CI needs.  `make demo` and `make test` are the Quickstart.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
VIGIL     := $(BIN)/vigil
STAMP     := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration check lint typecheck schemas bench bench-runtime clean broker-stop

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

demo: install
	$(VIGIL) demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

check: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

schemas: install
	$(VIGIL) schemas export schemas

bench: install
	$(BIN)/python -m benchmarks.run all

bench-runtime: install
	$(BIN)/python -m benchmarks.run runtime

broker-stop:
	-$(VIGIL) broker stop

clean: broker-stop
	rm -rf .vigil
