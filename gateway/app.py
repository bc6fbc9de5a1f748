"""The aiohttp application: services, middlewares and the route table."""

from __future__ import annotations

import os
from typing import Mapping

import aiohttp
from aiohttp import web

from .api import chat, health, models, route
from .auth import KeyRing, Principal, hash_key
from .config import GatewayConfig, parse_api_keys_env
from .decisions import JsonlDecisionLog
from .forward import AttemptHooks, AttemptRecord, Forwarder, RetryPolicy
from .health import BreakerBoard
from .providers.base import Deployment
from .providers.errors import UpstreamError
from .middleware import MAX_BODY_BYTES, request_context
from .providers.anthropic import AnthropicAdapter
from .providers.gemini import GeminiAdapter
from .providers.openai import OpenAIAdapter
from .runtime import Runtime
from .state import STATE, GatewayState
from .upstream import Timeouts, UpstreamClient

ADAPTERS = {adapter.api: adapter for adapter in (OpenAIAdapter(), AnthropicAdapter(), GeminiAdapter())}


def build_keyring(config: GatewayConfig, env: Mapping[str, str]) -> KeyRing:
    entries = [(k.sha256, Principal(k.tenant, k.id, k.team)) for k in config.keys]
    for i, (key, tenant) in enumerate(parse_api_keys_env(env.get("GATEWAY_API_KEYS", ""))):
        digest = hash_key(key)
        entries.append((digest, Principal(tenant, f"env-{digest[:8]}")))
    return KeyRing(entries)


def create_app(config: GatewayConfig, env: Mapping[str, str] | None = None) -> web.Application:
    env = dict(os.environ if env is None else env)
    state = GatewayState(config=config, env=env, runtime=Runtime(config, env), keyring=build_keyring(config, env))
    app = web.Application(middlewares=[request_context], client_max_size=config.server.max_body_bytes)
    app[STATE] = state
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app.cleanup_ctx.append(_decision_log)
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/route", route.dry_run)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model}", models.get_model)
    app.router.add_get("/health/live", health.live)
    app.router.add_get("/health/ready", health.ready)
    return app


async def _upstream_session(app: web.Application):  # type: ignore[no-untyped-def]
    state = app[STATE]
    settings = state.config.upstream
    connector = aiohttp.TCPConnector(limit=settings.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda obj: obj,  # bodies are pre-serialized bytes
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
    timeouts = Timeouts(settings.connect_timeout_s, settings.first_byte_timeout_s, settings.idle_timeout_s)
    hooks = GatewayHooks(state.breakers)
    state.forwarder = Forwarder(UpstreamClient(session), ADAPTERS, timeouts, RetryPolicy(), hooks)
    yield
    await state.background.drain(timeout=state.config.server.shutdown_timeout_s)
    await session.close()


async def _decision_log(app: web.Application):  # type: ignore[no-untyped-def]
    state = app[STATE]
    settings = state.config.decision_log
    if settings.enabled:
        state.decisions = JsonlDecisionLog(settings.path, settings.max_bytes, settings.backups)
    yield
    await state.decisions.close()


class GatewayHooks(AttemptHooks):
    """Attempt outcomes feed the circuit breakers."""

    def __init__(self, breakers: BreakerBoard) -> None:
        self._breakers = breakers

    def started(self, deployment: Deployment) -> None:
        self._breakers.begin(deployment.key)

    def finished(self, deployment: Deployment, record: AttemptRecord, error: UpstreamError | None) -> None:
        self._breakers.record(deployment.key, error.kind if error else None)
