# offsetlab — every target creates .venv and installs what it needs on first use.
# torch is installed first, pinned: a plain `torch` requirement can pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Where a CPU build of torch comes from on machines without it on disk, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q
PORT   ?= 7860
# Notebooks executed by `make test` (nbmake, fast mode): all of them, tutorials and their
# worked solutions (solutions/).
NOTEBOOKS ?= $(sort $(wildcard notebooks/*.ipynb solutions/*.ipynb))

.PHONY: demo test fast-test lint lab panel bench toy clean help chromium

help:
	@echo "make demo   train an offset on the toy forget set and show before/after"
	@echo "make test   the whole suite (tests, notebooks, browser, real model, lint)"
	@echo "make lab    JupyterLab on notebooks/"
	@echo "make panel  the Gradio panel on http://127.0.0.1:$(PORT)"
	@echo "make bench  speed/memory benchmarks against their bounds (ratios; writes benchmarks/RESULTS.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# One stamp per set of extras; each is redone when pyproject.toml changes.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(PIP) "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -e .
	touch $@

$(VENV)/.lab: $(VENV)/.core
	$(PIP) -e ".[lab,app]"
	touch $@

# llama.cpp (the `serve` extra) compiles itself for the CPU it is built on (-march=native);
# on CPUs with AMX its AMX kernels crash on SmolLM2's Q4_1 weights (segmentation fault or
# general protection fault in ggml_backend_amx_mul_mat, the first token). GGML_NATIVE=OFF
# alone still compiled them in on a machine with AMX, so AMX and AVX-512 are switched off
# by name. It is built once per machine, into a wheel folder of its own (named for these
# flags, so an older build in the cache is never reused): pip's wheel cache would hand back
# a native build of the same version. It is installed as a binary only, so that pip never
# compiles a native one instead (as `pip install -e .[dev]` alone would).
LLAMA        := llama-cpp-python==0.3.36
LLAMA_FLAGS  := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/offsetlab/wheels/llama-avx2-noamx
$(VENV)/.serve: $(VENV)/.core
	@ls $(LLAMA_WHEELS)/llama_cpp_python-$(word 2,$(subst ==, ,$(LLAMA)))-*.whl >/dev/null 2>&1 || \
	  { echo "building llama.cpp (portable, no AMX; several minutes, once per machine)"; \
	    CMAKE_ARGS="$(LLAMA_FLAGS)" $(BIN)/python -m pip wheel --disable-pip-version-check -q \
	      --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "$(LLAMA)"; }
	$(PIP) --only-binary llama-cpp-python --find-links $(LLAMA_WHEELS) "$(subst ==,[server]==,$(LLAMA))"
	touch $@

$(VENV)/.dev: $(VENV)/.serve
	$(PIP) -e ".[lab,app,real,serve,dev]"
	touch $@

# Browser tests drive Debian's chromium (never a browser downloaded by playwright).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (browser tests will be skipped)"; fi; \
	fi

demo: $(VENV)/.core
	$(BIN)/offsetlab demo

# The suite runs on two workers (pytest-xdist): each test file stays on one worker, so its
# trained fixtures are built once (tests/conftest.py schedules by file).
test: $(VENV)/.dev chromium
	$(BIN)/ruff check offsetlab tests benchmarks notebooks solutions
	OFFSETLAB_FAST=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests $(NOTEBOOKS) --nbmake --durations=15

fast-test: $(VENV)/.dev
	$(BIN)/python -m pytest -q -x -m "not slow and not browser and not real" tests

lint: $(VENV)/.dev
	$(BIN)/ruff check offsetlab tests benchmarks notebooks solutions

lab: $(VENV)/.lab
	$(BIN)/jupyter lab notebooks

panel: $(VENV)/.lab
	$(BIN)/offsetlab panel --port $(PORT)

# Every row on the toy pair and SmolLM2 (about 15 min on 2 cores); the run is kept in
# benchmarks/RESULTS.md.
bench: $(VENV)/.dev
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/run_all.py --results benchmarks/RESULTS.md

toy: $(VENV)/.core
	$(BIN)/offsetlab toy build

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
