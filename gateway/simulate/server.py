"""The aiohttp application: wire API routes, the shared request pipeline, control API."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from .answer import build_answer
from .anthropic_api import AnthropicWire
from .config import SimulatorConfig
from .faults import FaultSource, FaultSpecError, parse_fault
from .gemini_api import GeminiWire
from .openai_api import OpenAIWire
from .respond import (
    abort_connection,
    error_response,
    send_json,
    send_stream,
    sleep_while_connected,
)
from .shapes import BadRequest
from .stats import SimStats
from .wire import WireAPI


@dataclass
class SimState:
    config: SimulatorConfig
    faults: FaultSource
    stats: SimStats = field(default_factory=SimStats)


_MAX_BODY_BYTES = 64 * 1024 * 1024
STATE = web.AppKey("simulator_state", SimState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application (run it, or mount it in a test server)."""
    # Context-length rehearsals send big prompts: allow far more than aiohttp's 1 MiB.
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[STATE] = SimState(
        config=config,
        faults=FaultSource(fail_rate=config.fail_rate, fail_with=config.fault_specs(), seed=config.seed),
    )
    openai, azure = OpenAIWire(), OpenAIWire(azure=True)
    anthropic, gemini = AnthropicWire(), GeminiWire()
    app.router.add_post("/v1/chat/completions", _completion_handler(openai))
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _completion_handler(azure))
    app.router.add_post("/v1/messages", _completion_handler(anthropic))
    app.router.add_post("/v1beta/models/{target}", _completion_handler(gemini))
    app.router.add_post("/v1/models/{target}", _completion_handler(gemini))
    app.router.add_get("/health", _health)
    app.router.add_post("/_sim/faults", _queue_fault)
    app.router.add_get("/_sim/faults", _list_faults)
    app.router.add_delete("/_sim/faults", _clear_faults)
    app.router.add_get("/_sim/stats", _get_stats)
    app.router.add_delete("/_sim/stats", _reset_stats)
    return app


def _completion_handler(wire: WireAPI) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _complete(request, wire)

    return handle


async def _complete(request: web.Request, wire: WireAPI) -> web.StreamResponse:
    state = request.app[STATE]
    config, stats = state.config, state.stats
    stats.requests_total += 1
    stats.by_api[wire.name] += 1
    headers = wire.response_headers()

    if config.require_key is not None:
        key = wire.api_key(request)
        if key is None or not hmac.compare_digest(key.encode(), config.require_key.encode()):
            return error_response(wire.auth_error(missing=key is None), headers)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(wire.bad_request(BadRequest("the request body is not valid JSON")), headers)
    if not isinstance(body, dict):
        return error_response(wire.bad_request(BadRequest("the request body must be a JSON object")), headers)
    try:
        sim = wire.parse(request, body)
    except BadRequest as exc:
        return error_response(wire.bad_request(exc), headers)
    stats.by_model[sim.model] += 1

    try:
        picked = state.faults.pick(sim.texts, sim.model)
    except FaultSpecError as exc:
        return error_response(wire.bad_request(BadRequest(f"invalid fault directive: {exc}")), headers)
    fault = None
    if picked is not None:
        fault, source = picked
        stats.faults[fault.text] += 1
        stats.fault_sources[source] += 1

    delay_ms = config.latency_ms + (fault.delay_ms if fault is not None else 0.0)
    if delay_ms > 0 and not await sleep_while_connected(request, delay_ms / 1000):
        return web.Response()  # the client left during the delay: nothing to send
    if fault is not None:
        if fault.reset:
            await abort_connection(request)
            return web.Response()  # never sent: aiohttp sees the closed transport
        if fault.error is not None:
            return error_response(wire.fault_error(fault, sim), headers)

    answer = build_answer(
        sim, config.default_completion_tokens, content_filter=fault is not None and fault.content_filter
    )
    if sim.stream:
        return await send_stream(
            request,
            wire.stream(sim, answer),
            fault=fault,
            token_rate=config.token_rate,
            malformed_frame=wire.malformed_frame,
            headers=headers,
            stats=stats,
        )
    return await send_json(request, orjson.dumps(wire.render(sim, answer)), fault, headers)


# -- health and control API ------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _control_error(message: str, field_name: str) -> web.Response:
    return web.json_response({"error": {"message": message, "field": field_name}}, status=400)


async def _queue_fault(request: web.Request) -> web.Response:
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _control_error("the body must be a JSON object", "body")
    if not isinstance(body, dict):
        return _control_error("the body must be a JSON object", "body")
    unknown = sorted(set(body) - {"fault", "model", "count"})
    if unknown:
        return _control_error(f"unknown field {unknown[0]!r}", unknown[0])
    spec = body.get("fault")
    if not isinstance(spec, str):
        return _control_error("fault is required: a fault spec string, e.g. \"status=429\"", "fault")
    try:
        fault = parse_fault(spec)
    except FaultSpecError as exc:
        return _control_error(f"fault: {exc}", "fault")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        return _control_error("model must be a non-empty string", "model")
    count = body.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not (count == -1 or count >= 1):
        return _control_error("count must be a positive integer, or -1 for until cleared", "count")
    faults = request.app[STATE].faults
    entry = faults.enqueue(fault, model, count)
    return web.json_response({"queued": entry.as_dict(), "pending": len(faults.queue)}, status=201)


async def _list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": [entry.as_dict() for entry in request.app[STATE].faults.queue]})


async def _clear_faults(request: web.Request) -> web.Response:
    return web.json_response({"cleared": request.app[STATE].faults.clear()})


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.snapshot())


async def _reset_stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    stats.reset()
    return web.json_response(stats.snapshot())
