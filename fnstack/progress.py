"""Progress for the long steps of a first run (weight caching, ONNX export, model loading).

On a terminal: a rich progress line (spinner, bar when the step count is known, elapsed
time) that stays as one finished line. Anywhere else (logs, CI, a Lambda): plain log
lines, at the start, at each advance and at the end, with the time taken::

    from fnstack.progress import step

    with step("exporting all-MiniLM-L6-v2 to ONNX", total=4, expect="about a minute") as p:
        load()
        p.advance("weights loaded")
        ...

A step that fails says so with its time, and the exception goes on unchanged.
Steps may run in a worker thread (providers load models in ``asyncio.to_thread``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Step", "interactive", "step"]

log = logging.getLogger("fnstack.progress")


class Step(Protocol):
    def advance(self, note: str = "", n: int = 1) -> None:
        """One more part of the step is done; ``note`` says which."""
        ...


def interactive() -> bool:
    """Whether progress should be drawn (stderr is a terminal, not told otherwise)."""
    if os.environ.get("FNSTACK_PROGRESS", "").lower() in ("0", "off", "plain"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return sys.stderr.isatty()


class _LogStep:
    def __init__(self, title: str, total: int | None) -> None:
        self.title = title
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, note: str = "", n: int = 1) -> None:
        with self._lock:
            self.done += n
            where = f"{self.done}/{self.total}" if self.total else str(self.done)
        log.info(f"{self.title}: {where}" + (f" {note}" if note else ""),
                 extra={"step": self.title, "done": self.done, "total": self.total,
                        "elapsed_s": round(time.monotonic() - self.start, 1)})


class _RichStep:
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress = progress
        self.task = task

    def advance(self, note: str = "", n: int = 1) -> None:
        self.progress.update(self.task, advance=n, note=note)


@contextmanager
def step(title: str, *, total: int | None = None, expect: str | None = None) -> Iterator[Step]:
    """Show ``title`` as a step in progress; ``expect`` says how long it usually takes."""
    start = time.monotonic()
    heading = f"{title} ({expect})" if expect else title
    if interactive():
        try:
            with _rich(heading, total) as shown:
                yield shown
        except BaseException:
            _finish(title, start, ok=False)
            raise
        return
    log.info(f"{heading}...", extra={"step": title, "total": total})
    try:
        yield _LogStep(title, total)
    except BaseException:
        _finish(title, start, ok=False)
        raise
    _finish(title, start, ok=True)


def _finish(title: str, start: float, *, ok: bool) -> None:
    seconds = round(time.monotonic() - start, 1)
    if ok:
        log.info(f"{title}: done in {seconds}s", extra={"step": title, "elapsed_s": seconds})
    else:
        log.warning(f"{title}: failed after {seconds}s",
                    extra={"step": title, "elapsed_s": seconds})


@contextmanager
def _rich(heading: str, total: int | None) -> Iterator[Step]:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:  # rich is in the `server` extra; plain lines without it
        yield _LogStep(heading, total)
        return
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}")]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(heading, total=total, note="")
        yield _RichStep(progress, task)
        progress.update(task, completed=total or 0, note="done")
