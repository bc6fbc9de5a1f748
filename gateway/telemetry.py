"""Traces (OpenTelemetry) and metrics (Prometheus) for the request path.

One SERVER span per request, with the gateway's own steps as events (classified,
planned, admitted: cheaper than child spans and enough to read a decision), and one
CLIENT span per upstream attempt, so a failover path reads as a row of attempts under one
request. Attribute names follow the OpenTelemetry GenAI conventions where they exist
(`gen_ai.*`), and `gateway.*` for ours. No prompt text, no key, ever.

Tracing is off unless an exporter is configured (`telemetry.exporter` or
`OTEL_EXPORTER_OTLP_ENDPOINT`): then spans cost nothing but a no-op call.

Counters are summed in the worker and handed to prometheus-client in batches; a scrape
flushes first (see `Telemetry` for how stale a scrape of several workers can be).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge

from .histogram import open_histogram
from .loop import running_loop

_attempt_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar("gateway_attempt_span", default=None)

_NO_SPAN = nullcontext(trace.INVALID_SPAN)

BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}

# How long counts wait in a single-worker gateway before they reach prometheus-client (one
# flush for all the requests in between). /metrics flushes first, so only someone reading
# the registry another way sees them this late; a flush costs about as much as 1-2
# requests' worth of direct increments, so at a few requests a second it already pays.
FLUSH_INTERVAL_S = 1.0


class Metrics:
    """The gateway's Prometheus series.

    Counters on the request path go through `count((counter, *labels), amount)`: a sum per
    series in a plain dict, applied to prometheus-client by `flush()` as one `inc` per
    series. prometheus-client takes a lock per value change (and in multiprocess mode
    writes a file mapping), which per request and per series costs more than everything
    else metrics do. Histograms are observed at once, into the gateway's own collector in
    one process and into prometheus-client's with workers (see histogram.py).
    `child((metric, *labels))` caches labelled children: `labels()` costs microseconds per
    call, and the same few label sets recur.

    Not thread-safe: used from the event loop's thread only, like the rest of the gateway.
    """

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess: bool | None = None) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}
        self._pending: dict[tuple[Any, ...], float] = {}
        self._pending_usage: dict[tuple[str, str], list[int]] = {}  # (tenant, model) -> [input, output, micros]
        self._flush_handle: asyncio.Handle | None = None
        if multiprocess is None:  # prometheus-client chose its value store on import by the same variable
            multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._multiprocess = multiprocess
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Completed chat requests", ["route", "model", "provider", "outcome", "degraded"], registry=r
        )
        self.latency = open_histogram(
            "gateway_request_duration_seconds",
            "Time from request to the end of the response",
            ["route", "stream"],
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            r,
            multiprocess,
        )
        self.attempts = Counter(
            "gateway_upstream_attempts", "Upstream attempts by outcome", ["provider", "model", "outcome"], registry=r
        )
        self.attempt_latency = open_histogram(
            "gateway_upstream_attempt_duration_seconds",
            "Upstream attempt time (to the first chunk for streams)",
            ["provider", "model"],
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            r,
            multiprocess,
        )
        self.tokens = Counter("gateway_tokens", "Tokens by direction", ["tenant", "model", "direction"], registry=r)
        self.spend = Counter("gateway_spend_usd", "Spend settled, in USD", ["tenant", "model"], registry=r)
        self.breaker = Gauge(
            "gateway_breaker_state", "Circuit state per deployment: 0 closed, 1 half-open, 2 open", ["deployment"], registry=r,
            multiprocess_mode="max",
        )
        self.quota_degraded = Counter(
            "gateway_quota_degraded", "Admissions decided by local counters (fail_open, store unreachable)", registry=r
        )
        self.denials = Counter("gateway_quota_denials", "Requests refused by caps or rate limits", ["code"], registry=r)

    def child(self, series: tuple[Any, ...]) -> Any:
        """The labelled child of the series `(metric, *label values)`."""
        found = self._children.get(series)
        if found is None:
            metric, *labels = series
            found = self._children[series] = metric.labels(*labels)
        return found

    def count(self, series: tuple[Any, ...], amount: float = 1) -> None:
        """Add `amount` to the counter series `(counter, *label values)` at the next flush."""
        pending = self._pending
        pending[series] = pending.get(series, 0) + amount
        if self._flush_handle is None:
            self._schedule_flush()

    def count_usage(self, tenant: str, model: str, prompt_tokens: int, completion_tokens: int, micros: int) -> None:
        """An answer's tokens (input, output) and spend: one entry for the three series they feed."""
        key = (tenant, model)
        totals = self._pending_usage.get(key)
        if totals is None:
            totals = self._pending_usage[key] = [0, 0, 0]
        totals[0] += prompt_tokens
        totals[1] += completion_tokens
        totals[2] += micros
        if self._flush_handle is None:
            self._schedule_flush()

    def flush(self) -> None:
        """Apply the counts gathered since the last flush."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, {}
        usage, self._pending_usage = self._pending_usage, {}
        for series, amount in pending.items():
            self.child(series).inc(amount)
        for (tenant, model), (prompt_tokens, completion_tokens, micros) in usage.items():
            self.child((self.tokens, tenant, model, "input")).inc(prompt_tokens)
            self.child((self.tokens, tenant, model, "output")).inc(completion_tokens)
            # Gathered in integer micro-dollars: exact however many answers add up.
            self.child((self.spend, tenant, model)).inc(micros / 1_000_000)

    def _schedule_flush(self) -> None:
        try:
            loop = running_loop()
        except RuntimeError:  # no loop (a script, a unit test): nothing would flush later
            self.flush()
            return
        if self._multiprocess:
            # Another worker may answer the next scrape: publish before this loop turn ends.
            self._flush_handle = loop.call_soon(self.flush)
        else:
            self._flush_handle = loop.call_later(FLUSH_INTERVAL_S, self.flush)


class Telemetry:
    """Spans and metrics for the request path.

    Counters are summed in the worker and reach prometheus-client in a flush (see
    `Metrics`): `FLUSH_INTERVAL_S` after the first count that waits, right before /metrics
    renders, and at shutdown. How stale a scrape can be:
    - one worker: not at all; the scrape flushes this worker's counts before rendering.
    - `--workers N` (`PROMETHEUS_MULTIPROC_DIR`): each worker flushes into its own files at
      the end of the event-loop turn in which it counted (not on the timer), and the
      scrape merges every worker's files. A request that another worker has finished, up
      to that worker's next loop turn (well under a millisecond when not overloaded), is
      the most a scrape can miss. Batching there still joins the requests that end in
      the same loop turn.
    Histograms (request and attempt latency) are observed at once: a scrape sees them all.
    """

    def __init__(self, service_name: str, exporter: str, metrics: Metrics | None = None,
                 processor: SpanProcessor | None = None) -> None:
        self.metrics = metrics or Metrics()
        self._provider: TracerProvider | None = None
        if processor is None and exporter != "none":
            processor = BatchSpanProcessor(_exporter(exporter))
        self.enabled = processor is not None
        if processor is not None:
            resource = Resource.create({"service.name": service_name, "service.instance.id": str(os.getpid())})
            self._provider = TracerProvider(resource=resource)
            self._provider.add_span_processor(processor)
            self.tracer = self._provider.get_tracer("gateway")
        else:
            self.tracer = trace.NoOpTracer()

    def server_span(self, request_id: str, path: str) -> AbstractContextManager[Span]:
        if not self.enabled:  # skip even the no-op tracer's context bookkeeping
            return _NO_SPAN
        return self.tracer.start_as_current_span(
            f"POST {path}", kind=SpanKind.SERVER, attributes={"http.request.method": "POST", "url.path": path, "gateway.request_id": request_id}
        )

    def attempt_started(self, provider: str, model: str, upstream_model: str, address: str) -> None:
        if not self.enabled:
            return
        span = self.tracer.start_span(
            f"chat {upstream_model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": upstream_model,
                "gateway.model": model,
                "server.address": address,
            },
        )
        _attempt_span.set(span)

    def attempt_finished(self, provider: str, model: str, outcome: str, status: int | None, seconds: float,
                         retry: int, continuation: bool) -> None:
        m = self.metrics
        m.count((m.attempts, provider, model, outcome))
        m.attempt_latency.observe((provider, model), seconds)
        if not self.enabled:
            return
        span = _attempt_span.get()
        if span is None:
            return
        _attempt_span.set(None)
        span.set_attribute("gateway.attempt.outcome", outcome)
        span.set_attribute("gateway.attempt.retry", retry)
        span.set_attribute("gateway.attempt.continuation", continuation)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if outcome != "ok":
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()

    def breaker_changed(self, key: str, state: str) -> None:
        self.metrics.breaker.labels(key).set(BREAKER_VALUE.get(state, 0))

    def flush(self) -> None:
        """Bring the Prometheus series up to date (before a scrape renders them, at shutdown)."""
        self.metrics.flush()

    def shutdown(self) -> None:
        self.metrics.flush()
        if self._provider is not None:
            self._provider.shutdown()


def record_request(span: Span, attributes: Mapping[str, Any]) -> None:
    for name, value in attributes.items():
        if value is not None:
            span.set_attribute(name, value)


def _exporter(kind: str):  # type: ignore[no-untyped-def]
    if kind == "console":
        return ConsoleSpanExporter()
    # Imported here: only deployments that export pay for loading the OTLP stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout from the standard OTEL_* variables
