"""Lambda glue shared by every function: event detection and the handler factory.

A function module builds its app once, at module scope (Lambda keeps the module, and
with SnapStart the snapshot, between invocations)::

    handler = lambda_handler(create_app(load_config(...), apis=[...], lifespan=False))

The handler looks at the event first: SQS and S3 records (S3 notifications, or S3's
"Object Created" events through EventBridge) go to their record handlers,
API Gateway events (REST v1, HTTP v2, function URLs) to Mangum. Mangum runs with
``lifespan="off"``: it would otherwise run the app's start-up and shutdown on every
invocation; the stack starts lazily on the first request instead, on the event loop
Mangum keeps for the life of the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote_plus, unquote_plus

from fnstack.logs import lambda_context_var, lambda_fields

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from fnstack.config import RunConfig
    from fnstack.stack import Stack

__all__ = [
    "EventKind",
    "LambdaHandler",
    "UnsupportedEventError",
    "batch_worker",
    "event_kind",
    "lambda_handler",
    "load_secrets",
]

log = logging.getLogger("fnstack.lambda")

EventKind = Literal["http", "sqs", "s3", "unknown"]
LambdaHandler = Callable[[dict[str, Any], Any], Any]
RecordsHandler = Callable[[list[dict[str, Any]], Any], Any]


class UnsupportedEventError(ValueError):
    """The function got an event of a kind it does not handle."""


def event_kind(event: Any) -> EventKind:
    """What invoked the function: an HTTP request, SQS messages or S3 notifications."""
    if not isinstance(event, dict):
        return "unknown"
    if "requestContext" in event and ("httpMethod" in event or "version" in event):
        return "http"
    if event.get("source") == "aws.s3" and event.get("detail-type") == "Object Created":
        return "s3"
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        source = records[0].get("eventSource") or records[0].get("EventSource")
        if source == "aws:sqs":
            return "sqs"
        if source == "aws:s3":
            return "s3"
    return "unknown"


def lambda_handler(
    app: ASGIApp | None = None,
    *,
    sqs: RecordsHandler | None = None,
    s3: RecordsHandler | None = None,
) -> LambdaHandler:
    """The Lambda entry point for an ASGI app and/or record handlers."""
    adapter: LambdaHandler | None = None
    if app is not None:
        from mangum import Mangum

        adapter = Mangum(app, lifespan="off")  # type: ignore[arg-type]

    def handler(event: dict[str, Any], context: Any) -> Any:
        # Every log line of the invocation carries its Lambda context (fnstack.logs);
        # Mangum's task copies the context variables as they are here.
        token = lambda_context_var.set(lambda_fields(
            getattr(context, "aws_request_id", None),
            getattr(context, "invoked_function_arn", None)))
        try:
            return dispatch(event, context)
        finally:
            lambda_context_var.reset(token)

    def dispatch(event: dict[str, Any], context: Any) -> Any:
        kind = event_kind(event)
        if kind == "sqs" and sqs is not None:
            return sqs(event["Records"], context)
        if kind == "s3" and s3 is not None:
            return s3(event.get("Records") or _eventbridge_records(event), context)
        if kind == "http" and adapter is not None:
            return adapter(event, context)
        handles = [k for k, h in (("http", adapter), ("sqs", sqs), ("s3", s3)) if h is not None]
        raise UnsupportedEventError(
            f"this function handles {', '.join(handles) or 'no'} events, not a {kind!r} event "
            "(see events/ for samples of each kind)"
        )

    return handler


def _eventbridge_records(event: dict[str, Any]) -> list[dict[str, Any]]:
    """S3's EventBridge "Object Created" event as the notification record it stands for
    (keys URL-encoded as notifications have them)."""
    detail = event.get("detail") or {}
    key = str((detail.get("object") or {}).get("key", ""))
    return [{"eventSource": "aws:s3", "eventName": "ObjectCreated:" + str(
        detail.get("reason", "PutObject")), "s3": {
        "bucket": {"name": (detail.get("bucket") or {}).get("name", "")},
        "object": {"key": quote_plus(key, safe="/"),
                   "size": (detail.get("object") or {}).get("size", 0)}}}]


def load_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Secrets into the environment, once, at cold start (call it at module scope).

    For every ``<NAME>_SECRET_ARN`` variable that names a Secrets Manager secret, its
    secret string becomes ``<NAME>`` (unless ``<NAME>`` is set already, as in local
    runs). The secret never sits in the function's configuration, and only functions
    given such a variable (and the permission) read one. Returns the names set.
    """
    env = os.environ if environ is None else environ
    wanted = {key[: -len("_SECRET_ARN")]: arn for key, arn in env.items()
              if key.endswith("_SECRET_ARN") and arn}
    wanted = {name: arn for name, arn in wanted.items() if not env.get(name)}
    if not wanted:
        return []
    import boto3

    client = boto3.client("secretsmanager",
                          endpoint_url=env.get("FNSTACK_AWS_ENDPOINT_URL") or None)
    for name, arn in wanted.items():
        env[name] = client.get_secret_value(SecretId=arn)["SecretString"]
    return sorted(wanted)


# --- the batch worker -------------------------------------------------------------------

# An object created under this prefix of the bucket starts a batch (the batches
# service's ``inbox`` job); its output lands beside it.
INBOX_PREFIX = "inbox/"


async def _run_job(stack: Stack, body: dict[str, Any]) -> None:
    service, _, name = str(body["job"]).partition(".")
    await stack.run_job(service, name, body.get("args") or {})


def _json_body(record: dict[str, Any]) -> Any:
    try:
        return json.loads(record.get("body") or "{}")
    except ValueError:
        return None


def batch_worker(config: RunConfig) -> LambdaHandler:
    """SQS messages (background jobs, `fnstack.jobs`) and inbox/ uploads (batches)."""
    from fnstack.errors import FnstackError
    from fnstack.logs import configure_logging

    # No app is built here (create_app configures logging for the API functions): without
    # this the worker's lines would reach Lambda's root handler as bare text, losing
    # their fields (message ids, job names, the request ids of the Lambda context).
    configure_logging(config.logging.level)
    state: dict[str, Any] = {}

    def run(make: Callable[[Stack, Any], Coroutine[Any, Any, None]], arg: Any) -> None:
        # One loop for the life of the process, as Mangum does: clients bound to it survive.
        loop: asyncio.AbstractEventLoop = state.setdefault("loop", asyncio.new_event_loop())
        if "stack" not in state:
            from fnstack.stack import Stack

            state["stack"] = Stack(config)
        loop.run_until_complete(make(state["stack"], arg))

    def on_sqs(records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
        failures: list[dict[str, str]] = []
        for record in records:
            message_id = str(record.get("messageId", ""))
            body = _json_body(record)
            if not (isinstance(body, dict) and "job" in body):
                # Reported failed, not swallowed: SQS moves it to the dead-letter queue.
                log.warning("not a job message; left to the dead-letter queue",
                            extra={"message_id": message_id})
                failures.append({"itemIdentifier": message_id})
                continue
            try:
                run(_run_job, body)
            except Exception:
                log.exception("job failed; SQS will redeliver it",
                              extra={"message_id": message_id, "job": body["job"]})
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}

    def on_s3(records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
        started: list[str] = []
        skipped: list[str] = []
        for record in records:
            s3 = record.get("s3", {})
            bucket = s3.get("bucket", {}).get("name", "")
            # Keys arrive URL-encoded, spaces as '+'.
            key = unquote_plus(s3.get("object", {}).get("key", ""))
            if not key.startswith(INBOX_PREFIX):
                skipped.append(key)
                continue
            # The batches service starts one batch per object (twice notified: once).
            # A refusal (no batches API here, a bad file) is final; any other error
            # raises, and the event source retries the invocation.
            try:
                run(_run_job, {"job": "batches.inbox", "args": {"bucket": bucket, "key": key}})
            except FnstackError as exc:
                if exc.status >= 500:
                    raise
                log.warning("inbox object not started: %s", exc.message,
                            extra={"bucket": bucket, "key": key})
                skipped.append(key)
                continue
            started.append(key)
        return {"started": started, "skipped": skipped}

    return lambda_handler(sqs=on_sqs, s3=on_s3)
