"""Shared test set-up: isolate every run from the user's ~/.fnstack and AWS settings."""

from __future__ import annotations

import os

import pytest

# Never touch a developer's real AWS account or home directory from tests.
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/api/conftest.py: options must be known when `pytest tests` starts.
    parser.addoption(
        "--mode",
        action="append",
        choices=("local", "gateway"),
        help="execution mode(s) to run the API suite (tests/api) against (default: all)",
    )
