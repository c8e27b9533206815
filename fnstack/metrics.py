"""Per-provider inference metrics: calls, errors, tokens in and out, latency.

The inference service times every provider call (chat, completion, embeddings; streamed
or not) and hands one :class:`CallRecord` to a sink when the call ends:

- ``emf`` (the default on Lambda): CloudWatch Embedded Metric Format through Powertools
  for AWS Lambda, one JSON line on stdout per call. CloudWatch Logs turns it into
  metrics in namespace ``fnstack`` (``POWERTOOLS_METRICS_NAMESPACE``) with the
  dimensions ``service`` (``POWERTOOLS_SERVICE_NAME``: the stack) and ``provider``; the
  operation, model, status and request ids ride along as properties (searchable in Logs
  Insights, not dimensions: each dimension value is a billed custom metric).
- ``memory`` (the default elsewhere): counters in the process, read with
  :meth:`MemoryMetrics.snapshot`; no output, no import.
- ``off``.

``FNSTACK_METRICS`` picks one. Powertools is imported only by the ``emf`` sink, on the
first call it records: functions that never call a provider never load it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fnstack.logs import lambda_context_var, request_id_var

if TYPE_CHECKING:
    from aws_lambda_powertools.metrics import EphemeralMetrics

__all__ = [
    "CallRecord",
    "EmfMetrics",
    "MemoryMetrics",
    "MetricsSink",
    "NoMetrics",
    "ProviderCall",
    "metrics_from_env",
]

Operation = Literal["chat", "completion", "embeddings"]
Outcome = Literal["ok", "error", "cancelled"]

NAMESPACE = "fnstack"


@dataclass
class CallRecord:
    """One provider call, as it ended."""

    provider: str
    operation: Operation
    model: str
    outcome: Outcome
    latency_ms: float
    streamed: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    first_chunk_ms: float | None = None
    error: str | None = None
    status: int | None = None


class MetricsSink(Protocol):
    def record(self, call: CallRecord) -> None: ...


class ProviderCall:
    """A call in flight: ``succeeded``, ``failed`` or ``cancelled`` records it, once."""

    __slots__ = ("_done", "_first", "_start", "model", "operation", "provider", "sink",
                 "streamed")

    def __init__(self, sink: MetricsSink, provider: str, operation: Operation,
                 model: str) -> None:
        self.sink, self.provider, self.operation, self.model = sink, provider, operation, model
        self.streamed = False
        self._start = time.perf_counter()
        self._first: float | None = None
        self._done = False

    def first_chunk(self) -> None:
        if self._first is None:
            self._first = time.perf_counter()

    def succeeded(self, usage: Any = None) -> None:
        self._finish("ok", usage=usage)

    def failed(self, exc: BaseException) -> None:
        self._finish("error", exc=exc)

    def cancelled(self) -> None:
        """The caller stopped reading a stream (a disconnect): neither a success nor the
        provider's error."""
        self._finish("cancelled")

    def _finish(self, outcome: Outcome, *, usage: Any = None,
                exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        now = time.perf_counter()
        record = CallRecord(
            provider=self.provider, operation=self.operation, model=self.model,
            outcome=outcome, latency_ms=round((now - self._start) * 1000, 3),
            streamed=self.streamed,
            first_chunk_ms=None if self._first is None
            else round((self._first - self._start) * 1000, 3),
        )
        if usage is not None:
            record.input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            record.output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        if exc is not None:
            record.error = type(exc).__name__
            status = getattr(exc, "status", None)
            record.status = status if isinstance(status, int) else None
        try:
            self.sink.record(record)
        except Exception:  # metrics never fail a request
            import logging

            logging.getLogger("fnstack.metrics").warning("metric not recorded", exc_info=True)


class NoMetrics:
    def record(self, call: CallRecord) -> None:
        return None


@dataclass
class Totals:
    calls: int = 0
    errors: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    max_latency_ms: float = 0.0


@dataclass
class MemoryMetrics:
    """Counters per provider, in the process: the cheap path outside Lambda."""

    totals: dict[str, Totals] = field(default_factory=dict)

    def record(self, call: CallRecord) -> None:
        t = self.totals.setdefault(call.provider, Totals())
        t.calls += 1
        t.errors += call.outcome == "error"
        t.cancelled += call.outcome == "cancelled"
        t.input_tokens += call.input_tokens or 0
        t.output_tokens += call.output_tokens or 0
        t.latency_ms += call.latency_ms
        t.max_latency_ms = max(t.max_latency_ms, call.latency_ms)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {p: dict(vars(t)) for p, t in self.totals.items()}


class EmfMetrics:
    """One EMF document per call on stdout (CloudWatch Logs extracts the metrics)."""

    def __init__(self, namespace: str | None = None, service: str | None = None) -> None:
        self.namespace = namespace or os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or NAMESPACE
        self.service = service or os.environ.get("POWERTOOLS_SERVICE_NAME") or "fnstack"
        self._emf: EphemeralMetrics | None = None

    def _metrics(self) -> EphemeralMetrics:
        if self._emf is None:
            # Here, not at module scope: ~25 ms of imports a function pays only once it
            # calls a provider (EphemeralMetrics: no state shared with other instances).
            from aws_lambda_powertools.metrics import EphemeralMetrics

            self._emf = EphemeralMetrics(namespace=self.namespace, service=self.service)
        return self._emf

    def record(self, call: CallRecord) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        m = self._metrics()
        m.add_dimension(name="provider", value=call.provider)
        m.add_metric(name="Calls", unit=MetricUnit.Count, value=1)
        m.add_metric(name="Errors", unit=MetricUnit.Count, value=int(call.outcome == "error"))
        m.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=call.latency_ms)
        if call.first_chunk_ms is not None:
            m.add_metric(name="TimeToFirstChunk", unit=MetricUnit.Milliseconds,
                         value=call.first_chunk_ms)
        if call.input_tokens is not None:
            m.add_metric(name="InputTokens", unit=MetricUnit.Count, value=call.input_tokens)
        if call.output_tokens is not None:
            m.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=call.output_tokens)
        meta: dict[str, Any] = {"operation": call.operation, "model": call.model,
                                "outcome": call.outcome, "streamed": call.streamed}
        if call.error:
            meta["error"] = call.error
        if call.status is not None:
            meta["status"] = call.status
        rid = request_id_var.get()
        if rid:
            meta["request_id"] = rid
        lambda_ctx = lambda_context_var.get()
        if lambda_ctx:
            for key in ("function_request_id", "xray_trace_id"):
                if lambda_ctx.get(key):
                    meta[key] = lambda_ctx[key]
        for key, value in meta.items():
            m.add_metadata(key=key, value=value)
        # Synchronous from add to flush: no other call's values can interleave.
        m.flush_metrics()
        sys.stdout.flush()


def metrics_from_env(environ: Mapping[str, str] | None = None) -> MetricsSink:
    """The sink ``FNSTACK_METRICS`` names (emf, memory, off); by default EMF on Lambda
    (CloudWatch reads stdout) and in-process counters elsewhere."""
    env = os.environ if environ is None else environ
    mode = (env.get("FNSTACK_METRICS") or "").strip().lower()
    if not mode:
        mode = "emf" if env.get("AWS_LAMBDA_FUNCTION_NAME") else "memory"
    if mode == "emf":
        return EmfMetrics(env.get("POWERTOOLS_METRICS_NAMESPACE"),
                          env.get("POWERTOOLS_SERVICE_NAME"))
    if mode == "memory":
        return MemoryMetrics()
    if mode in ("off", "none"):
        return NoMetrics()
    from fnstack.errors import ConfigError

    raise ConfigError(f"FNSTACK_METRICS={mode!r}: use emf, memory or off")
