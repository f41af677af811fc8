# Vigil — every entry point a developer or CI needs.  `make demo` and `make test` are the Quickstart.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
VIGIL     := $(BIN)/vigil
STAMP     := $(VENV)/.installed

.PHONY: install compile uncompiled demo test test-tools test-unit test-integration check lint typecheck schemas bench bench-runtime clean broker-stop

# The per-event paths, compiled by mypyc into C extensions beside their sources (see
# src/vigil/compiled.py): rebuilt whenever one of them changes.
COMPILED := \
	src/vigil/detect/fields.py src/vigil/detect/engine.py src/vigil/detect/intel.py \
	src/vigil/detect/kinds/base.py src/vigil/detect/kinds/common.py \
	src/vigil/detect/kinds/deviation.py src/vigil/detect/kinds/exposure.py \
	src/vigil/detect/kinds/intel.py src/vigil/detect/kinds/linked.py \
	src/vigil/detect/kinds/lookalike.py src/vigil/detect/kinds/propagation.py \
	src/vigil/detect/kinds/sequence.py src/vigil/detect/kinds/threshold.py \
	src/vigil/stream/app.py src/vigil/stream/alignment.py src/vigil/stream/state.py \
	src/vigil/stream/windows.py \
	src/vigil/sim/benign.py src/vigil/sim/draws.py src/vigil/sim/factory.py src/vigil/sim/publish.py
# Modules written in C (each has a Python twin that runs when it is not built; see its header).
NATIVE := src/vigil/stream/_slide.c
# VIGIL_COMPILE=0 (no C compiler at hand, or to debug in the sources): every module as Python.
VIGIL_COMPILE ?= 1
COMPILED_STAMP := $(VENV)/.compiled-$(VIGIL_COMPILE)

install: $(STAMP) $(COMPILED_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

compile: $(COMPILED_STAMP)

# An extension not built from what its source holds now (src/vigil/compiled.py `stale`: by
# contents, not times; a source put back with an older time passed as built) is rebuilt.
ifneq ($(VIGIL_COMPILE),0)
ifneq ($(wildcard $(COMPILED_STAMP)),)
ifneq ($(shell cd src && ../$(BIN)/python -m vigil.compiled --stale 2>/dev/null),)
.PHONY: $(COMPILED_STAMP)
endif
endif
endif

# mypyc reads the project's mypy settings; its C files (one per module, compiled on every CPU:
# see src/vigil/compiled.py) go to src/build/ (ignored by git).
$(COMPILED_STAMP): $(STAMP) $(COMPILED) $(NATIVE) src/vigil/compiled.py
	rm -f $(VENV)/.compiled-*
	@if [ "$(VIGIL_COMPILE)" = 0 ]; then \
		echo "VIGIL_COMPILE=0: the sources run uncompiled"; \
		find src -name '*.so' -delete; find src -name '.*.built' -delete; rm -rf src/build; \
	else \
		echo "compiling $(words $(COMPILED)) modules with mypyc (about two minutes on two cores)"; \
		: "Every extension made afresh: one of a module no longer in COMPILED would still run."; \
		find src -name '*.so' -delete; find src -name '.*.built' -delete; \
		touch $(VENV)/.compile-began; \
		( cd src && ../$(BIN)/python -m vigil.compiled $(patsubst src/%,%,$(COMPILED) $(NATIVE)) ) > $(VENV)/mypyc.log 2>&1 \
			|| { tail -40 $(VENV)/mypyc.log; exit 1; }; \
	fi
	@: "Dated when the build began: a source edited while it ran is newer, and rebuilt next time."
	@if [ -e $(VENV)/.compile-began ]; then touch -r $(VENV)/.compile-began $@; else touch $@; fi
	@rm -f $(VENV)/.compile-began

uncompiled:
	find src -name '*.so' -delete; find src -name '.*.built' -delete
	rm -rf src/build $(VENV)/.compiled-*

demo: install
	$(VIGIL) demo

# Test files run in parallel, each worker process with a broker of its own: most of an
# integration test's time is spent waiting (rebalances, transaction timeouts, restarts), so three
# workers fit on two cores.  --max-worker-restart 0: a worker that crashes ends the run with the
# crash named, rather than a replacement run that waited for ever after it.
TEST_WORKERS ?= 3

test: install test-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0 tests

# The Kafka jars and the anvil node, fetched once before the workers start (see the script).
test-tools: install
	$(BIN)/python -m tests.prepare_tools

test-unit: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0 tests/unit

test-integration: install test-tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 0 tests/integration

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
