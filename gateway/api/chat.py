"""POST /v1/chat/completions: the request's whole flow, one stage after another.

auth -> parse+validate -> classify+plan -> attempts (ladder) -> respond -> (after) log
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
from aiohttp import web

from ..auth import Principal
from ..decide import Decision, decide
from ..degrade import static_chunks, static_completion
from ..errors import GatewayError
from ..explain import decision_record
from ..forward import AllAttemptsFailed, AttemptRecord, StreamBroken, UpstreamStream
from ..ladder import LadderResult, climb
from ..middleware import REQUEST_ID
from ..providers.base import Deployment
from ..providers.errors import ErrorKind, UpstreamError
from ..quota import QuotaUnavailable
from ..runtime import RoutingSnapshot
from ..spend import actual_cost_micros, admission_request, denial_error, request_scopes, skip_reasons
from ..state import STATE, GatewayState
from .observe import observe
from ..usage import Usage, estimated, from_openai
from ..validation import parse_json_body, validate_chat_request

BUDGET_CHECK_EVERY = 32  # chunks between checks that a stream still fits its reservation
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
    outcome: str = "ok"
    reservation_id: str | None = None
    quota_reasons: tuple[str, ...] = ()
    start: int = 0  # index in the plan of the candidate the admission chose
    reserved_micros: int = 0
    worst_micros: dict[str, int] = field(default_factory=dict)  # deployment key -> worst-case cost
    quota_degraded: bool = False
    rate_headers: dict[str, str] = field(default_factory=dict)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    with state.telemetry.server_span(request[REQUEST_ID], request.path) as span:
        principal = await state.keyring.authenticate(request.headers)
        body = parse_json_body(await request.read())
        validate_chat_request(body)
        exchange = _prepare(request, state, principal, body)
        span.add_event("planned", {"gateway.route": exchange.decision.plan.route})
        try:
            if exchange.decision.all_unavailable:
                return _all_breakers_open(exchange)
            await _admit(state, exchange)
            span.add_event("admitted", {"gateway.start_candidate": exchange.start})
            if body.get("stream"):
                return await _respond_stream(request, state, exchange)
            return await _respond_json(state, exchange)
        except GatewayError as error:
            exchange.outcome = error.code or "error"
            raise
        except asyncio.CancelledError:
            exchange.outcome = "client_disconnected"
            raise
        finally:
            _settle(state, exchange)
            state.decisions.append(decision_record(exchange, exchange.snapshot.policy.decision_log.include_prompt))
            observe(state.telemetry, span, exchange)


def _prepare(request: web.Request, state: GatewayState, principal: Principal, body: dict[str, Any]) -> Exchange:
    snapshot = state.runtime.current
    decision = decide(body, request.headers, principal.tenant, snapshot, state.breakers.unavailable())
    route_plan = decision.plan
    deployments = [snapshot.deployments[c.key] for c in route_plan.candidates]
    fallback = route_plan.content_fallback
    budget_ms = decision.classification.latency_budget_ms or route_plan.latency_budget_ms
    timeout_s = budget_ms / 1000 if budget_ms else state.config.upstream.total_timeout_s
    return Exchange(
        request_id=request[REQUEST_ID],
        principal=principal,
        body=body,
        snapshot=snapshot,
        decision=decision,
        deployments=deployments,
        content_fallback=snapshot.deployments[fallback.key] if fallback else None,
        deadline=asyncio.get_running_loop().time() + timeout_s,
    )


def _healthy(state: GatewayState, ex: Exchange) -> list[Deployment]:
    """The plan's deployments whose breaker is not open now: the ladder's reduced round
    must not retry a deployment that the first round just marked down."""
    down = state.breakers.unavailable()
    return [d for d in ex.deployments if d.key not in down] if down else ex.deployments


def _all_breakers_open(ex: Exchange) -> web.StreamResponse:
    """Nothing the policy allows is healthy: the route's static step, without any attempt."""
    ex.degraded = "static"
    ex.outcome = "all_breakers_open"
    static = ex.decision.plan.degradation.static
    if static is not None and static.mode == "completion":
        if ex.body.get("stream"):
            chunks = b"".join(_sse(chunk) for chunk in static_chunks(static, ex.request_id))
            return web.Response(body=chunks + b"data: [DONE]\n\n", headers={**SSE_HEADERS, **_headers(ex)})
        return web.Response(
            body=orjson.dumps(static_completion(static, ex.request_id)), content_type="application/json", headers=_headers(ex)
        )
    cause = UpstreamError(ErrorKind.OVERLOADED, "every deployment this request may use has an open circuit breaker")
    raise _static_error(cause, ex)


async def _admit(state: GatewayState, ex: Exchange) -> None:
    """Reserve the worst case of the plan in one atomic store call; pick the affordable start."""
    plan, c = ex.decision.plan, ex.decision.classification
    policy = ex.snapshot.policy
    team = ex.principal.team or policy.tenant(ex.principal.tenant).team
    scopes = request_scopes(ex.principal.tenant, team, ex.principal.key_id, plan.route)
    request = admission_request(ex.request_id, scopes, plan, c, ex.body, ex.snapshot.catalog, policy.limits)
    try:
        admission = await state.quota.admit(request)
    except QuotaUnavailable:
        raise GatewayError(
            503,
            "The spend and quota store is unreachable and the policy's failure_mode is fail_closed; retry shortly.",
            code="quota_unavailable",
            type="service_unavailable",
            headers={**_headers(ex), "retry-after": "1"},
        ) from None
    if admission.rate_limit is not None:
        ex.rate_headers = admission.rate_limit.headers()
    ex.quota_degraded = admission.degraded
    if not admission.admitted:
        assert admission.denial is not None
        error = denial_error(admission.denial)
        error.headers = {**_headers(ex), **error.headers}
        raise error
    assert admission.candidate_index is not None
    ex.reservation_id = admission.reservation_id
    ex.quota_reasons = skip_reasons(admission)
    ex.start = admission.candidate_index
    ex.deployments = ex.deployments[admission.candidate_index :]
    ex.worst_micros = {f"{x.provider}/{x.model}": x.worst_case_micros for x in request.candidates}
    ex.reserved_micros = request.candidates[admission.candidate_index].worst_case_micros


async def _covered(state: GatewayState, ex: Exchange, deployment: Deployment) -> bool:
    """Before failing over: grow the reservation if this deployment's worst case is dearer."""
    needed = ex.worst_micros.get(deployment.key, 0)
    if needed <= ex.reserved_micros or ex.reservation_id is None:
        return True
    try:
        extended = await state.quota.extend(ex.reservation_id, needed - ex.reserved_micros)
    except QuotaUnavailable:
        return False
    if extended:
        ex.reserved_micros = needed
    return extended


def _settle(state: GatewayState, ex: Exchange) -> None:
    """Off the client's path: charge what was used, or give the reservation back."""
    if ex.reservation_id is None:
        return
    if ex.usage is not None and ex.answered_by is not None:
        micros = actual_cost_micros(ex.snapshot.catalog, ex.answered_by.key, ex.usage)
        state.settle_later(ex.reservation_id, micros, ex.usage.total_tokens)
    else:
        state.release_later(ex.reservation_id)


async def _respond_json(state: GatewayState, ex: Exchange) -> web.Response:
    assert state.forwarder is not None
    forwarder = state.forwarder

    async def covered(deployment: Deployment) -> bool:
        return await _covered(state, ex, deployment)

    async def attempt(body: Mapping[str, Any], attempts: list[AttemptRecord]):  # type: ignore[no-untyped-def]
        return await forwarder.complete(
            body, _healthy(state, ex), ex.deadline, attempts=attempts, content_fallback=ex.content_fallback, may_try=covered
        )

    result = await _climb(attempt, ex)
    if result.value is None:
        static = ex.decision.plan.degradation.static
        assert static is not None and static.mode == "completion"
        return web.Response(
            body=orjson.dumps(static_completion(static, ex.request_id)),
            content_type="application/json",
            headers=_headers(ex),
        )
    completion = result.value
    _answered(ex, completion.deployment)
    ex.usage = from_openai(completion.response.get("usage"))
    completion.response["model"] = completion.deployment.model
    return web.Response(body=orjson.dumps(completion.response), content_type="application/json", headers=_headers(ex))


async def _respond_stream(request: web.Request, state: GatewayState, ex: Exchange) -> web.StreamResponse:
    assert state.forwarder is not None
    forwarder = state.forwarder

    async def covered(deployment: Deployment) -> bool:
        return await _covered(state, ex, deployment)

    async def attempt(body: Mapping[str, Any], attempts: list[AttemptRecord]) -> UpstreamStream:
        return await forwarder.open_stream(
            body, _healthy(state, ex), ex.deadline, attempts=attempts, content_fallback=ex.content_fallback, may_try=covered
        )

    result = await _climb(attempt, ex)
    stream = result.value
    if stream is not None:
        _answered(ex, stream.deployment)
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **_headers(ex), "x-request-id": ex.request_id})
    await response.prepare(request)
    attempts_in_headers = len(ex.attempts)
    if stream is None:
        static = ex.decision.plan.degradation.static
        assert static is not None
        for chunk in static_chunks(static, ex.request_id):
            await response.write(_sse(chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    try:
        sent = 0
        async for chunk in stream.chunks():
            await response.write(_sse(chunk))
            sent += 1
            if sent % BUDGET_CHECK_EVERY == 0 and not await _stream_within_budget(state, ex, stream):
                ex.outcome = "budget_exceeded"
                error = GatewayError(
                    429,
                    "The spend cap was reached while streaming; the answer was cut here.",
                    code="budget_exceeded",
                    type="insufficient_quota",
                )
                await response.write(_sse(error.body()))
                break
        else:
            ex.usage = _stream_usage(stream, ex)
            await _attempts_trailer(response, ex, attempts_in_headers)
            if stream.client_wants_usage:
                await response.write(_sse(stream.usage_chunk(ex.usage.as_openai())))
            await response.write(b"data: [DONE]\n\n")
    except StreamBroken as broken:
        # Never a silent [DONE] on a truncated answer: the client sees an explicit error.
        ex.outcome = "stream_broken"
        ex.usage = _stream_usage(stream, ex)
        await _attempts_trailer(response, ex, attempts_in_headers)
        await response.write(_sse(_client_error(broken.error, ex).body()))
    finally:
        if ex.usage is None:  # the client went away mid-stream: charge what was streamed
            ex.usage = _stream_usage(stream, ex)
        await stream.aclose()
        ex.answered_by = stream.deployment  # the last segment's deployment, after a continuation
    await response.write_eof()
    return response


async def _attempts_trailer(response: web.StreamResponse, ex: Exchange, already_sent: int) -> None:
    """Attempts made after the headers left (mid-stream failover) go out as an SSE comment,
    which clients ignore and people debugging with curl can read."""
    if len(ex.attempts) > already_sent:
        path = ",".join(a.header_token() for a in ex.attempts)
        await response.write(f": x-gateway-attempts: {path}\n\n".encode())


async def _stream_within_budget(state: GatewayState, ex: Exchange, stream: UpstreamStream) -> bool:
    """A stream that outgrows its reservation asks for more before it may go on.

    The reservation covers max_tokens (or the policy's default); an upstream that streams
    past it must not push spend over the cap after the fact.
    """
    if ex.reservation_id is None or stream.deployment is None:
        return True
    spent = actual_cost_micros(ex.snapshot.catalog, stream.deployment.key, _stream_usage(stream, ex))
    if spent <= ex.reserved_micros:
        return True
    extra = max(spent - ex.reserved_micros, ex.reserved_micros // 2)
    try:
        granted = await state.quota.extend(ex.reservation_id, extra)
    except QuotaUnavailable:
        return True  # fail_open already admitted this request locally; fail_closed raised at admit
    if granted:
        ex.reserved_micros += extra
    return granted


async def _climb(attempt: Any, ex: Exchange) -> LadderResult[Any]:
    degradation = ex.decision.plan.degradation
    try:
        result = await climb(attempt, ex.body, degradation, ex.deadline)
    except AllAttemptsFailed as failed:
        ex.attempts = failed.attempts
        raise _client_error(failed.error, ex) from None
    ex.attempts = result.attempts
    ex.degraded = result.step
    if result.value is None:
        assert result.failure is not None
        static = degradation.static
        if static is None or static.mode != "completion":
            raise _static_error(result.failure.error, ex)
    return result


def _stream_usage(stream: UpstreamStream, ex: Exchange) -> Usage:
    total = Usage()
    for i, segment in enumerate(stream.segments):
        reported = from_openai(segment.usage)
        if reported is None:
            prompt = ex.decision.classification.input_tokens if i == 0 else 0
            reported = estimated(prompt, segment.text_chars)
        total = total + reported
    return total


def _answered(ex: Exchange, deployment: Deployment | None) -> None:
    """Record who answered; an answer from anyone but the planned primary is degraded: fallback."""
    ex.answered_by = deployment
    primary = ex.decision.plan.candidates[ex.start]
    if deployment is not None and ex.degraded is None:
        if deployment.key != ex.deployments[0].key or "requested:pinned_unavailable" in primary.reasons:
            ex.degraded = "fallback"


def _headers(ex: Exchange) -> dict[str, str]:
    c = ex.decision.classification
    primary = ex.decision.plan.candidates[ex.start]
    headers = {
        **ex.rate_headers,
        "x-gateway-task-class": f"{c.intent}:{c.tier}",
        "x-gateway-route-reason": ",".join(ex.quota_reasons + primary.reasons),
        "x-gateway-policy-version": ex.snapshot.policy_version,
        "x-gateway-attempts": ",".join(a.header_token() for a in ex.attempts),
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


def _client_error(error: UpstreamError, ex: Exchange) -> GatewayError:
    status = error.client_status
    headers = _headers(ex)
    if error.kind is ErrorKind.RATE_LIMITED or status in (429, 503):
        headers["retry-after"] = str(max(1, int((error.retry_after or 1) + 0.999)))
    tried = len(ex.attempts)
    message = f"{error.message} (after {tried} attempt{'s' if tried != 1 else ''})"
    return GatewayError(status, message, code=error.kind.value, headers=headers)


def _static_error(error: UpstreamError, ex: Exchange) -> GatewayError:
    """The ladder's last step in error mode: an explicit refusal with recovery guidance.

    A final rate limit or timeout keeps its own status (429 / 504) so SDK retry logic
    stays exact; everything else is a 503. Either way retry-after is set.
    """
    static = ex.decision.plan.degradation.static
    ex.degraded = "static"
    headers = _headers(ex)
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


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
