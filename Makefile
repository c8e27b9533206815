# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup run test lint bench

setup:
	@./scripts/setup.sh

run: setup
	$(BIN)/fnstack run local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup
	$(BIN)/python -m pytest tests
