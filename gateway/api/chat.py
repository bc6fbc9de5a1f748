"""POST /v1/chat/completions: the request's whole flow, one stage after another.

auth -> parse+validate -> classify+plan -> attempts (ladder) -> respond -> (after) log
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

import orjson
from aiohttp import web

from ..auth import Principal
from ..decide import decide
from ..degrade import static_chunks, static_completion
from ..errors import GatewayError
from ..explain import decision_record
from ..forward import AllAttemptsFailed, AttemptRecord, StreamBroken, UpstreamStream
from ..ladder import LadderResult, climb
from ..loop import running_loop
from ..middleware import REQUEST_ID
from ..providers.base import Deployment
from ..providers.errors import ErrorKind, UpstreamError
from ..state import STATE, GatewayState
from ..usage import from_openai
from ..validation import parse_json_body, validate_chat_request
from . import budget
from .exchange import (
    SSE_HEADERS,
    Exchange,
    answered,
    client_error,
    headers_for,
    priced,
    sse,
    static_error,
    stream_usage,
)
from .observe import observe

log = logging.getLogger("gateway")


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
            await budget.admit(state, exchange)
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
            priced(exchange)
            budget.settle(state, exchange)
            if state.decisions.keeps_records:  # building one costs more than the rest of the log's work
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
        deadline=running_loop().time() + timeout_s,
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
            chunks = b"".join(sse(chunk) for chunk in static_chunks(static, ex.request_id))
            return web.Response(body=chunks + b"data: [DONE]\n\n", headers={**SSE_HEADERS, **headers_for(ex)})
        return web.Response(
            body=orjson.dumps(static_completion(static, ex.request_id)), content_type="application/json", headers=headers_for(ex)
        )
    cause = UpstreamError(ErrorKind.OVERLOADED, "every deployment this request may use has an open circuit breaker")
    raise static_error(cause, ex)


async def _respond_json(state: GatewayState, ex: Exchange) -> web.Response:
    assert state.forwarder is not None
    forwarder = state.forwarder

    async def covered(deployment: Deployment) -> bool:
        return await budget.covered(state, ex, deployment)

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
            headers=headers_for(ex),
        )
    completion = result.value
    answered(ex, completion.deployment)
    ex.usage = from_openai(completion.response.get("usage"))
    completion.response["model"] = completion.deployment.model
    return web.Response(body=orjson.dumps(completion.response), content_type="application/json", headers=headers_for(ex))


async def _respond_stream(request: web.Request, state: GatewayState, ex: Exchange) -> web.StreamResponse:
    assert state.forwarder is not None
    forwarder = state.forwarder

    async def covered(deployment: Deployment) -> bool:
        return await budget.covered(state, ex, deployment)

    async def attempt(body: Mapping[str, Any], attempts: list[AttemptRecord]) -> UpstreamStream:
        return await forwarder.open_stream(
            body, _healthy(state, ex), ex.deadline, attempts=attempts, content_fallback=ex.content_fallback, may_try=covered
        )

    result = await _climb(attempt, ex)
    stream = result.value
    if stream is not None:
        answered(ex, stream.deployment)
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers_for(ex), "x-request-id": ex.request_id})
    await response.prepare(request)
    attempts_in_headers = len(ex.attempts)
    if stream is None:
        static = ex.decision.plan.degradation.static
        assert static is not None
        await response.write_eof(b"".join(map(sse, static_chunks(static, ex.request_id))) + b"data: [DONE]\n\n")
        return response
    tail = b""  # what closes the stream goes out with the end of the body: one write, not three
    try:
        sent = 0
        every = budget.BUDGET_CHECK_EVERY
        async for batch in stream.batches():
            await response.write(b"".join(map(sse, batch)))
            before, sent = sent, sent + len(batch)
            if sent // every != before // every and not await budget.stream_within_budget(state, ex, stream):
                ex.outcome = "budget_exceeded"
                error = GatewayError(
                    429,
                    "The spend cap was reached while streaming; the answer was cut here.",
                    code="budget_exceeded",
                    type="insufficient_quota",
                )
                tail = sse(error.body())
                break
        else:
            ex.usage = stream_usage(stream, ex)
            tail = _attempts_trailer(ex, attempts_in_headers)
            if stream.client_wants_usage:
                tail += sse(stream.usage_chunk(ex.usage.as_openai()))
            tail += b"data: [DONE]\n\n"
    except StreamBroken as broken:
        # Never a silent [DONE] on a truncated answer: the client sees an explicit error.
        ex.outcome = "stream_broken"
        ex.usage = stream_usage(stream, ex)
        tail = _attempts_trailer(ex, attempts_in_headers) + sse(client_error(broken.error, ex).body())
    except Exception:  # a bug of ours, after the headers went out: an explicit error event still ends the stream
        log.exception("unhandled error mid-stream", extra={"request_id": ex.request_id})
        ex.outcome = "internal_error"
        tail = sse(GatewayError(500, f"The gateway failed mid-stream (request id {ex.request_id}). This is a bug; "
                                "it has been logged.", code="internal_error", type="api_error").body())
    finally:
        if ex.usage is None:  # the client went away mid-stream: charge what was streamed
            ex.usage = stream_usage(stream, ex)
        await stream.aclose()
        ex.answered_by = stream.deployment  # the last segment's deployment, after a continuation
    await response.write_eof(tail)
    return response


def _attempts_trailer(ex: Exchange, already_sent: int) -> bytes:
    """Attempts made after the headers left (mid-stream failover) go out as an SSE comment,
    which clients ignore and people debugging with curl can read."""
    if len(ex.attempts) > already_sent:
        path = ",".join(a.header_token() for a in ex.attempts)
        return f": x-gateway-attempts: {path}\n\n".encode()
    return b""


async def _climb(attempt: Any, ex: Exchange) -> LadderResult[Any]:
    degradation = ex.decision.plan.degradation
    try:
        result = await climb(attempt, ex.body, degradation, ex.deadline)
    except AllAttemptsFailed as failed:
        ex.attempts = failed.attempts
        raise client_error(failed.error, ex) from None
    ex.attempts = result.attempts
    ex.degraded = result.step
    if result.value is None:
        assert result.failure is not None
        static = degradation.static
        if static is None or static.mode != "completion":
            raise static_error(result.failure.error, ex)
    return result
