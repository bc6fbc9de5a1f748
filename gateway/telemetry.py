"""Traces (OpenTelemetry) and metrics (Prometheus) for the request path.

One SERVER span per request, with the gateway's own steps as events (classified,
planned, admitted: cheaper than child spans and enough to read a decision), and one
CLIENT span per upstream attempt, so a failover path reads as a row of attempts under one
request. Attribute names follow the OpenTelemetry GenAI conventions where they exist
(`gen_ai.*`), and `gateway.*` for ours. No prompt text, no key, ever.

Tracing is off unless an exporter is configured (`telemetry.exporter` or
`OTEL_EXPORTER_OTLP_ENDPOINT`): then spans cost nothing but a no-op call.
"""

from __future__ import annotations

import contextvars
import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_attempt_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar("gateway_attempt_span", default=None)

_NO_SPAN = nullcontext(trace.INVALID_SPAN)

BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The gateway's Prometheus series. `child(metric, *labels)` caches labelled children:
    `labels()` costs microseconds per call, and the same few label sets recur."""

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Completed chat requests", ["route", "model", "provider", "outcome", "degraded"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the end of the response",
            ["route", "stream"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.attempts = Counter(
            "gateway_upstream_attempts", "Upstream attempts by outcome", ["provider", "model", "outcome"], registry=r
        )
        self.attempt_latency = Histogram(
            "gateway_upstream_attempt_duration_seconds",
            "Upstream attempt time (to the first chunk for streams)",
            ["provider", "model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
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


class Telemetry:
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
        m.child(m.attempts, provider, model, outcome).inc()
        m.child(m.attempt_latency, provider, model).observe(seconds)
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

    def shutdown(self) -> None:
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
