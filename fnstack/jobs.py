"""Background jobs: work a request starts and a worker finishes.

A job is ``{"job": "<service>.<name>", "args": {...}}``, run by the service's
``run_job(name, args)``. Where it runs depends on the ``jobs`` queue of the run config:

- ``local`` (the local server): a bounded in-process queue drained by worker tasks;
  the request that submits never waits for the work;
- ``sqs`` (AWS): the message goes to the SQS queue and the worker function runs it
  (Lambda freezes a function once its response is sent: nothing may run after it).

Jobs must be idempotent and resumable: SQS delivers at least once, and a worker may die
at any point. A job that fails is retried (``max_attempts`` locally; SQS redelivers and
finally moves it to the dead-letter queue).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fnstack.config import QueueConfig
from fnstack.errors import FnstackError, ServiceUnavailableError

__all__ = ["JOBS_QUEUE", "JobQueue", "LocalJobQueue", "SqsJobQueue", "job_message", "open_queue"]

log = logging.getLogger("fnstack.jobs")

# The run config's queue name for jobs (falls back to "batches", the SQS queue the
# template creates, so one worker function serves both).
JOBS_QUEUE = "jobs"

Runner = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def job_message(job: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"job": job, "args": args}


class JobQueue(Protocol):
    async def submit(self, job: str, args: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class LocalJobQueue:
    """An in-process bounded queue drained by ``workers`` tasks."""

    def __init__(self, runner: Runner, *, workers: int = 2, max_pending: int = 10_000,
                 max_attempts: int = 3) -> None:
        self.runner = runner
        self.workers = workers
        self.max_attempts = max_attempts
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(max_pending)
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, job: str, args: dict[str, Any]) -> None:
        if not self._tasks:
            # A fresh context: a job's log lines are not the submitting request's.
            self._tasks = [asyncio.create_task(self._run(), context=contextvars.Context())
                           for _ in range(self.workers)]
        try:
            self._queue.put_nowait((job, args))
        except asyncio.QueueFull:
            raise ServiceUnavailableError(
                "too much background work is queued; retry shortly",
                headers={"retry-after": "5"},
            ) from None

    async def join(self) -> None:
        """Wait until every job submitted so far has run (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            job, args = await self._queue.get()
            try:
                service, _, name = job.partition(".")
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        await self.runner(service, name, args)
                        break
                    except Exception as exc:
                        final = attempt == self.max_attempts or (
                            isinstance(exc, FnstackError) and exc.status < 500)
                        log.log(logging.ERROR if final else logging.WARNING,
                                "job failed", extra={"job": job, "attempt": attempt},
                                exc_info=final)
                        if final:
                            break
                        await asyncio.sleep(0.2 * 4 ** (attempt - 1))
            finally:
                self._queue.task_done()


class SqsJobQueue:
    """Sends each job to SQS; the worker function runs it."""

    def __init__(self, config: QueueConfig) -> None:
        if not config.url:
            raise ValueError("an sqs queue needs a url")
        self.url = config.url
        self.config = config
        self._client: Any = None

    async def submit(self, job: str, args: dict[str, Any]) -> None:
        if self._client is None:
            import boto3

            self._client = boto3.client("sqs", region_name=self.config.region,
                                        endpoint_url=self.config.endpoint_url)
        body = json.dumps(job_message(job, args), separators=(",", ":"))
        try:
            await asyncio.to_thread(self._client.send_message, QueueUrl=self.url,
                                    MessageBody=body)
        except Exception as exc:
            raise ServiceUnavailableError(
                "the job queue could not be reached; retry shortly"
            ) from exc

    async def close(self) -> None:
        self._client = None


def open_queue(queues: dict[str, QueueConfig], runner: Runner) -> JobQueue:
    config = queues.get(JOBS_QUEUE) or queues.get("batches") or QueueConfig()
    if config.type == "sqs":
        return SqsJobQueue(config)
    return LocalJobQueue(runner)
