# Two entry points on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(EXTRAS)
EXTRAS ?= serve

export SEALSERVE_DATA_DIR ?= ./.sealserve

.PHONY: run test check lint types protos install install-test clean bench bytecode

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve
install-test: $(VENV)/.installed-test

## bytecode: compile the sources once. With PYTHONDONTWRITEBYTECODE set (as on
## these machines), every process would otherwise compile them again at start:
## about 0.1 s of each CLI call, gateway, worker and job a test run starts.
bytecode: | $(BIN)/python
	$(BIN)/python -m compileall -q -j 0 server auth storage compress protos migrations tests bench

## run: install, initialise the data directory once, start the server
run: install bytecode
	$(BIN)/sealserve init --if-missing --demo
	$(BIN)/sealserve serve

## test: install with test extras and run the whole suite (one pytest process per core,
## each test file kept in one process so its module-scoped servers are started once)
PYTEST_WORKERS ?= 2
test: install-test bytecode
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: install-test
	$(BIN)/mypy server auth storage compress

check: lint types test

## protos: regenerate the committed gRPC stubs from protos/*.proto
protos: install-test
	$(BIN)/python -m protos.generate

bench: install-test
	$(BIN)/python bench/seal.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
