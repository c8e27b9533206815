# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup setup-tests run test lint

setup:
	@./scripts/setup.sh

setup-tests:
	@./scripts/setup.sh --tests

run: setup
	$(BIN)/fnstack run local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup-tests
	$(BIN)/python -m pytest tests
