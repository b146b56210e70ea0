# `make run`  — set up everything this machine lacks, then start the API and one worker.
# `make test` — the same set-up, then the whole test suite.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint schema bench bench-accept bench-live bench-library clean

setup:
	@deploy/setup.sh

run: setup
	@deploy/run.sh

test:
	@FLUXGATE_SETUP_BROWSER=1 FLUXGATE_SETUP_DEPLOY=1 deploy/setup.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

schema: setup
	$(BIN)/python -c "from schema import schema; open('schema.graphql', 'w').write(schema.as_str() + '\n')"

bench: setup
	$(BIN)/python bench/throughput.py

bench-accept: setup
	$(BIN)/python bench/accept.py

bench-live: setup
	$(BIN)/python bench/live.py

bench-library: setup
	$(BIN)/python bench/library.py

clean:
	rm -rf var/storage var/dev-account.json
