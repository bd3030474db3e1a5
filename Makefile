# Two commands: `make demo` and `make test`. Both set up everything first (system packages, virtualenv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixai-installed
SOUNDFONT := /usr/share/sounds/sf2/FluidR3_GM.sf2
PYTEST_ARGS ?=

.PHONY: help setup system-deps demo test dev check benchmarks db-stop clean

help:
	@echo "make demo    set up, then run the main job end to end on the embedded defaults"
	@echo "make test    set up, then run the whole test suite"
	@echo "make dev     Dagster UI + daemon on http://127.0.0.1:3000 against the same instance"
	@echo "make check   dg check defs + ruff"
	@echo "make benchmarks   the benchmarks in mixai_pipeline_tests/benchmarks (JSON)"

setup: system-deps $(STAMP)

# ffmpeg (probing, previews), fluidsynth + the GM SoundFont (demo audio). apt-get update first.
system-deps:
	@need=""; \
	command -v ffmpeg >/dev/null 2>&1 || need="$$need ffmpeg"; \
	command -v fluidsynth >/dev/null 2>&1 || need="$$need fluidsynth"; \
	[ -f $(SOUNDFONT) ] || need="$$need fluid-soundfont-gm"; \
	if [ -n "$$need" ]; then \
	  echo "Installing system packages:$$need"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "Need root to install:$$need (apt-get install$$need)" >&2; exit 1; fi; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$need; \
	fi

# torch first, from the local CPU wheel: asked for by another package it would pull GBs of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# librosa's numba kernels compiled and cached once, here, in one process: left to the first runs, parallel
	# processes compiling the same kernels at once corrupted numba's on-disk cache (workers then segfaulted).
	$(BIN)/python -c "import mixai_pipeline.lib.pipeline.warm"
	touch $(STAMP)

demo: setup
	$(BIN)/mixai demo

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

dev: setup
	$(BIN)/mixai dev

check: setup
	$(BIN)/dg check defs
	$(BIN)/ruff check mixai_pipeline mixai_pipeline_tests

benchmarks: setup
	$(BIN)/python -m mixai_pipeline_tests.benchmarks

db-stop:
	$(BIN)/mixai db stop

clean: db-stop
	rm -rf .mixai
