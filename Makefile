# The two commands of the README: `make run` and `make test`.
# `make run PORT=9000` serves on another port (default: 8321, or $FNSTACK_PORT).
VENV ?= .venv
BIN = $(VENV)/bin
PORT ?=

.PHONY: setup setup-tests run test lint

setup:
	@./scripts/setup.sh

setup-tests:
	@./scripts/setup.sh --tests

run: setup
	$(BIN)/fnstack run local $(if $(PORT),--port $(PORT))

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup-tests
	$(BIN)/python -m pytest tests
