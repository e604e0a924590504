# Framewatch: the two commands a newcomer needs are `make demo` and `make test`.
# Both do their own set-up on a fresh machine: venv, install, model build (and, for tests, Prometheus).

PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.framewatch-installed
MODEL   := models/minilm/model.int8.onnx

.PHONY: setup model demo test lint bench clean system-deps

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in the [build] extra: only used to export the ONNX model, never at run time.
	$(BIN)/pip install --quiet -e '.[build,demo,dev]'
	touch $(STAMP)

model: $(MODEL)

$(MODEL): | $(STAMP)
	$(BIN)/framewatch build-model

demo: setup model
	$(BIN)/framewatch demo $(DEMO_ARGS)

system-deps:
	bash scripts/system-deps.sh

test: setup model system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy monitor
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy monitor

bench: setup model
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) models/minilm build *.egg-info
