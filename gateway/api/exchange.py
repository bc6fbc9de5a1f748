"""What one chat request accumulates on its way through, and how that is shown to the client:
routing headers, OpenAI-shaped errors, SSE framing, usage of a (possibly stitched) stream."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..auth import Principal
from ..decide import Decision
from ..errors import GatewayError
from ..forward import AttemptRecord, UpstreamStream
from ..providers.base import Deployment
from ..providers.errors import ErrorKind, UpstreamError
from ..runtime import RoutingSnapshot
from ..spend import actual_cost_micros
from ..usage import Usage, estimated, from_openai

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tells nginx-style proxies in front not to buffer the stream
}


@dataclass
class Exchange:
    """Everything one request accumulates on its way through, for headers and the log."""

    request_id: str
    principal: Principal
    body: dict[str, Any]
    snapshot: RoutingSnapshot
    decision: Decision
    deployments: list[Deployment]
    content_fallback: Deployment | None
    deadline: float
    started: float = field(default_factory=time.perf_counter)
    attempts: list[AttemptRecord] = field(default_factory=list)
    answered_by: Deployment | None = None
    degraded: str | None = None
    usage: Usage | None = None
    cost_micros: int | None = None  # what the answer cost, once usage is known (see `priced`)
    outcome: str = "ok"
    reservation_id: str | None = None
    quota_reasons: tuple[str, ...] = ()
    start: int = 0  # index in the plan of the candidate the admission chose
    reserved_micros: int = 0
    worst_micros: dict[str, int] = field(default_factory=dict)  # deployment key -> worst-case cost
    quota_degraded: bool = False
    rate_headers: dict[str, str] = field(default_factory=dict)


def stream_usage(stream: UpstreamStream, ex: Exchange) -> Usage:
    total = Usage()
    for i, segment in enumerate(stream.segments):
        reported = from_openai(segment.usage)
        if reported is None:
            prompt = ex.decision.classification.input_tokens if i == 0 else 0
            reported = estimated(prompt, segment.text_chars)
        total = total + reported
    return total


def answered(ex: Exchange, deployment: Deployment | None) -> None:
    """Record who answered; an answer from anyone but the planned primary is degraded: fallback."""
    ex.answered_by = deployment
    primary = ex.decision.plan.candidates[ex.start]
    if deployment is not None and ex.degraded is None:
        if deployment.key != ex.deployments[0].key or "requested:pinned_unavailable" in primary.reasons:
            ex.degraded = "fallback"


def headers_for(ex: Exchange) -> dict[str, str]:
    c = ex.decision.classification
    primary = ex.decision.plan.candidates[ex.start]
    headers = {
        **ex.rate_headers,
        "x-gateway-task-class": f"{c.intent}:{c.tier}",
        "x-gateway-route-reason": ",".join(ex.quota_reasons + primary.reasons),
        "x-gateway-policy-version": ex.snapshot.policy_version,
        "x-gateway-attempts": ",".join(map(AttemptRecord.header_token, ex.attempts)),  # no generator frame
    }
    answered = ex.answered_by
    if answered is not None:
        headers["x-gateway-model"] = answered.model
        headers["x-gateway-provider"] = answered.provider
    else:
        headers["x-gateway-model"] = "gateway-static"
        headers["x-gateway-provider"] = "gateway"
    if ex.degraded:
        headers["x-gateway-degraded"] = ex.degraded
    if ex.quota_degraded:
        headers["x-gateway-quota"] = "degraded"
    return headers


def client_error(error: UpstreamError, ex: Exchange) -> GatewayError:
    status = error.client_status
    headers = headers_for(ex)
    if error.kind is ErrorKind.RATE_LIMITED or status in (429, 503):
        headers["retry-after"] = str(max(1, int((error.retry_after or 1) + 0.999)))
    tried = len(ex.attempts)
    message = f"{error.message} (after {tried} attempt{'s' if tried != 1 else ''})"
    return GatewayError(status, message, code=error.kind.value, headers=headers)


def static_error(error: UpstreamError, ex: Exchange) -> GatewayError:
    """The ladder's last step in error mode: an explicit refusal with recovery guidance.

    A final rate limit or timeout keeps its own status (429 / 504) so SDK retry logic
    stays exact; everything else is a 503. Either way retry-after is set.
    """
    static = ex.decision.plan.degradation.static
    ex.degraded = "static"
    headers = headers_for(ex)
    if error.kind is ErrorKind.RATE_LIMITED:
        status = 429
    elif error.kind is ErrorKind.TIMEOUT:
        status = 504
    else:
        status = 503
    retry_after = error.retry_after or (static.retry_after_s if static else None) or 1
    headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
    guidance = static.message if static and static.message else "No model could answer this request right now."
    tried = len(ex.attempts)
    message = f"{guidance} (last error after {tried} attempt{'s' if tried != 1 else ''}: {error.message})"
    return GatewayError(status, message, code=error.kind.value, type="service_unavailable" if status == 503 else None, headers=headers)


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def priced(ex: Exchange) -> int | None:
    """The answer's cost from its usage, worked out once for settling, the log and metrics."""
    if ex.cost_micros is None and ex.usage is not None and ex.answered_by is not None:
        ex.cost_micros = actual_cost_micros(ex.snapshot.catalog, ex.answered_by.key, ex.usage)
    return ex.cost_micros
