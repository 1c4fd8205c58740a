# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install, run the demo (SQLite, killed and resumed)
#   make test   - install the dev extras and run the suite against the local servers
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

# `make test` runs the suite in pytest-xdist workers: two, like this machine's cores (most of a
# test's time is a child `milepost` process starting and the servers answering, so two workers
# roughly halve the wall time; more only queue for the same cores). TEST_WORKERS=0: serially.
TEST_WORKERS ?= 2

.PHONY: demo test torture bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/milepost demo

test: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/pytest -m "not torture" -n $(TEST_WORKERS) --dist worksteal --durations=20

torture: $(DEV_STAMP)
	$(BIN)/pytest -m torture -x

bench: $(DEV_STAMP)
	$(BIN)/python bench/copy_bench.py
	$(BIN)/python bench/outage_bench.py
	$(BIN)/python bench/checkpoint_bench.py
	$(BIN)/python bench/verify_bench.py
	$(BIN)/python bench/incremental_bench.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .milepost-demo .pytest_cache .ruff_cache
