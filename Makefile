# Two commands for a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
export PYTHONDONTWRITEBYTECODE := 1
# fastai/torch use every core by default; keep BLAS from oversubscribing them.
export OMP_NUM_THREADS ?= $(shell nproc)

.PHONY: setup test test-unit test-integration test-gui test-reliability lint demo bench docs clean

setup:
	@bash tools/bootstrap.sh

lint: setup
	$(VENV)/bin/ruff check napari_decrappify tests docs tools
	$(VENV)/bin/lint-imports

test: setup lint
	$(PY) -m pytest tests/unit -q -p no:xvfb
	$(PY) -m pytest tests/integration -q -p no:xvfb
	$(PY) -m pytest tests/reliability -q -p no:xvfb
	$(PY) -m pytest tests/gui -q

test-unit: setup
	$(PY) -m pytest tests/unit -q -p no:xvfb

test-reliability: setup
	$(PY) -m pytest tests/reliability -q -p no:xvfb

demo: setup
	@if [ -z "$$DISPLAY" ]; then \
		echo "[demo] no DISPLAY: rendering under xvfb-run, headless"; \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_decrappify demo --headless $(ARGS); \
	else \
		$(PY) -m napari_decrappify demo $(ARGS); \
	fi

bench: setup
	$(PY) -m napari_decrappify bench quality --json bench-output/quality.json

docs: setup
	@if [ -z "$$DISPLAY" ]; then xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/make_screenshots.py; else $(PY) docs/make_screenshots.py; fi
	$(PY) docs/make_benchmarks.py

clean:
	rm -rf demo-output bench-output .pytest_cache
