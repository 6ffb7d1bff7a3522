# IceProd server: `make run` serves a development instance, `make test` runs every check.
# Both work on a fresh Debian 12 machine as root (missing system packages are installed).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= var
HOST ?= 127.0.0.1
PORT ?= 8080
TEST_OUTPUT ?= test-output
PYTEST_ARGS ?=

.PHONY: run test soak lint bench clean

# the virtualenv, remade when pyproject.toml changes
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	scripts/ensure-build-deps.sh
	$(BIN)/python -m pip install -q -e '.'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	scripts/ensure-build-deps.sh
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/iceprod-server init --data-dir $(DATA_DIR)
	BIN=$(BIN) scripts/create-admin.sh $(DATA_DIR)
	$(BIN)/iceprod-server serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

test:
	scripts/ensure-test-deps.sh
	$(MAKE) --no-print-directory $(VENV)/.installed-test
	$(BIN)/ruff check iceprod_server tests bench
	$(BIN)/mypy
	mkdir -p $(TEST_OUTPUT)
	$(BIN)/pytest -q --basetemp=$(TEST_OUTPUT)/tmp --junitxml=$(TEST_OUTPUT)/junit.xml \
		$(PYTEST_ARGS)

# the JSON-RPC property test of tests/fuzz with 100,000 examples per database
soak:
	scripts/ensure-test-deps.sh
	$(MAKE) --no-print-directory $(VENV)/.installed-test
	ICEPROD_TEST_FUZZ_EXAMPLES=100000 $(BIN)/pytest -q tests/fuzz $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check iceprod_server tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	scripts/ensure-test-deps.sh
	$(BIN)/python -m bench

clean:
	rm -rf $(TEST_OUTPUT) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# `make clean` keeps the virtualenv and the data directory; remove them by hand
# (rm -rf .venv var) when you mean to.
