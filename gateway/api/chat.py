"""POST /v1/chat/completions: the request's whole flow, one stage after another.

auth -> parse+validate -> classify -> plan -> attempts -> respond -> (after) settle + log
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import orjson
from aiohttp import web

from ..classify import Classification, HintError, classify
from ..errors import GatewayError
from ..middleware import REQUEST_ID
from ..forward import AllAttemptsFailed, AttemptRecord, StreamBroken
from ..providers.base import Deployment
from ..providers.errors import ErrorKind, UpstreamError
from ..routing import RoutePlan, RoutingError, plan
from ..runtime import RoutingSnapshot
from ..state import STATE, GatewayState
from ..usage import Usage, estimated, from_openai
from ..validation import parse_json_body, validate_chat_request

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tells nginx-style proxies in front not to buffer the stream
}
HINT_PREFIX = "x-gateway-"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    principal = await state.keyring.authenticate(request.headers)
    body = parse_json_body(await request.read())
    validate_chat_request(body)
    snapshot = state.runtime.current
    classification = _classify(body, request, snapshot)
    route_plan = _plan(classification, principal.tenant, body["model"], snapshot, state)
    deployments = [snapshot.deployments[f"{c.provider}/{c.model}"] for c in route_plan.candidates]
    loop = asyncio.get_running_loop()
    budget_ms = classification.latency_budget_ms or route_plan.latency_budget_ms
    timeout_s = budget_ms / 1000 if budget_ms else state.config.upstream.total_timeout_s
    deadline = loop.time() + timeout_s
    headers = _routing_headers(classification, route_plan, snapshot)
    assert state.forwarder is not None
    if body.get("stream"):
        return await _stream(request, state, body, deployments, deadline, headers, classification)
    try:
        result = await state.forwarder.complete(body, deployments, deadline)
    except AllAttemptsFailed as failed:
        raise _client_error(failed.error, failed.attempts, headers) from None
    response = result.response
    response["model"] = result.deployment.model
    headers.update(_answer_headers(result.deployment, result.attempts, route_plan))
    return web.Response(body=orjson.dumps(response), content_type="application/json", headers=headers)


async def _stream(
    request: web.Request,
    state: GatewayState,
    body: dict[str, Any],
    deployments: list[Deployment],
    deadline: float,
    headers: dict[str, str],
    classification: Classification,
) -> web.StreamResponse:
    assert state.forwarder is not None
    try:
        stream = await state.forwarder.open_stream(body, deployments, deadline)
    except AllAttemptsFailed as failed:
        raise _client_error(failed.error, failed.attempts, headers) from None
    assert stream.deployment is not None
    first = stream.deployment
    headers.update(_answer_headers(first, stream.attempts, None))
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    response.headers["x-request-id"] = request[REQUEST_ID]
    try:
        await response.prepare(request)
        async for chunk in stream.chunks():
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if stream.client_wants_usage:
            total = _stream_usage(stream, classification)
            await response.write(b"data: " + orjson.dumps(stream.usage_chunk(total.as_openai())) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
    except StreamBroken as broken:
        # Never a silent [DONE] on a truncated answer: the client sees an explicit error.
        error = _client_error(broken.error, stream.attempts, {})
        await response.write(b"data: " + orjson.dumps(error.body()) + b"\n\n")
    finally:
        await stream.aclose()
    await response.write_eof()
    return response


def _stream_usage(stream: Any, classification: Classification) -> Usage:
    total = Usage()
    for i, segment in enumerate(stream.segments):
        reported = from_openai(segment.usage)
        if reported is not None:
            total = total + reported
        else:
            total = total + estimated(classification.input_tokens if i == 0 else 0, segment.text_chars)
    return total


def _classify(body: dict[str, Any], request: web.Request, snapshot: RoutingSnapshot) -> Classification:
    hints = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith(HINT_PREFIX)}
    try:
        return classify(body, hints, snapshot.rules)
    except HintError as error:
        raise GatewayError(400, error.message, param=error.param, code="invalid_hint") from None


def _plan(
    classification: Classification, tenant: str, model: str, snapshot: RoutingSnapshot, state: GatewayState
) -> RoutePlan:
    try:
        return plan(
            classification,
            tenant=tenant,
            requested_model=model,
            policy=snapshot.policy,
            catalog=snapshot.catalog,
        )
    except RoutingError as error:
        raise GatewayError(error.status, error.message, param=error.param, code=error.code) from None


def _routing_headers(classification: Classification, route_plan: RoutePlan, snapshot: RoutingSnapshot) -> dict[str, str]:
    primary = route_plan.candidates[0]
    return {
        "x-gateway-task-class": f"{classification.intent}:{classification.tier}",
        "x-gateway-route-reason": ",".join(primary.reasons),
        "x-gateway-policy-version": snapshot.policy_version,
    }


def _answer_headers(deployment: Deployment, attempts: list[AttemptRecord], route_plan: RoutePlan | None) -> dict[str, str]:
    headers = {
        "x-gateway-model": deployment.model,
        "x-gateway-provider": deployment.provider,
        "x-gateway-attempts": ",".join(a.header_token() for a in attempts),
    }
    first_model = attempts[0].model if attempts else deployment.model
    if first_model != deployment.model:
        headers["x-gateway-degraded"] = "fallback"
    return headers


def _client_error(error: UpstreamError, attempts: list[AttemptRecord], headers: Mapping[str, str]) -> GatewayError:
    status = error.client_status
    out = dict(headers)
    out["x-gateway-attempts"] = ",".join(a.header_token() for a in attempts)
    if error.kind is ErrorKind.RATE_LIMITED or status in (429, 503):
        out["retry-after"] = str(max(1, int(error.retry_after + 0.999))) if error.retry_after else "1"
    tried = len(attempts)
    message = f"{error.message} (after {tried} attempt{'s' if tried != 1 else ''})"
    return GatewayError(status, message, code=error.kind.value, headers=out)
