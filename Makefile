# slimfx: `make demo` and `make test` work from a fresh clone (they create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint bench-overhead clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the local CPU wheel: letting pip resolve it pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0
	$(BIN)/python -m pip install -q -e ".[dev,tvm]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m slimfx.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check slimfx tests benchmarks

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/pass_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
