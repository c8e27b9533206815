"""Progress of long steps: plain log lines off a terminal, a rich line on one."""

from __future__ import annotations

import logging

import pytest

from fnstack import progress
from fnstack.progress import step


@pytest.fixture(autouse=True)
def _propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    # An app built earlier in the session routes fnstack's logs to stderr and stops
    # their propagation (fnstack.logs.configure_logging): caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("fnstack"), "propagate", True)


def test_plain_lines_with_counts_and_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="fnstack.progress"), \
            step("exporting model", total=2, expect="about a minute") as p:
        p.advance("weights loaded")
        p.advance("traced")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "exporting model (about a minute)..."
    assert lines[1] == "exporting model: 1/2 weights loaded"
    assert lines[2] == "exporting model: 2/2 traced"
    assert lines[3].startswith("exporting model: done in ")


def test_a_failed_step_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="fnstack.progress"), \
            pytest.raises(RuntimeError), step("caching weights"):
        raise RuntimeError("disk full")
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage().startswith("caching weights: failed after ")


def test_terminal_shows_a_progress_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with step("caching weights", total=3) as p:
        for _ in range(3):
            p.advance()
    err = capsys.readouterr().err
    assert "caching weights" in err
    assert "3/3" in err


def test_not_interactive_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNSTACK_PROGRESS", "plain")
    assert not progress.interactive()
