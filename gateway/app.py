"""The aiohttp application: services, middlewares and the route table."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

from .api import admin, chat, health, models, route
from .auth import KeyRing, Principal, hash_key
from .config import GatewayConfig, parse_api_keys_env
from .decisions import JsonlDecisionLog, RedisStreamDecisionLog
from .forward import AttemptHooks, AttemptRecord, Forwarder, RetryPolicy
from .health import BreakerBoard
from .http1 import HTTPClient
from .http1_proxy import Proxies
from .middleware import CATCH_ALL_PATH, MAX_BODY_BYTES, unknown_route, with_request_context
from .providers.anthropic import AnthropicAdapter
from .providers.base import Deployment
from .providers.errors import UpstreamError
from .providers.gemini import GeminiAdapter
from .providers.openai import OpenAIAdapter
from .quota import QuotaStore, open_store
from .runtime import RoutingSnapshot, Runtime
from .spend import static_limits
from .state import STATE, GatewayState
from .sync import ReplicaSync
from .telemetry import Telemetry
from .upstream import Timeouts, UpstreamClient

log = logging.getLogger("gateway.app")

ADAPTERS = {adapter.api: adapter for adapter in (OpenAIAdapter(), AnthropicAdapter(), GeminiAdapter())}


def build_keyring(config: GatewayConfig, env: Mapping[str, str]) -> KeyRing:
    entries = [(k.sha256, Principal(k.tenant, k.id, k.team)) for k in config.keys]
    for i, (key, tenant) in enumerate(parse_api_keys_env(env.get("GATEWAY_API_KEYS", ""))):
        digest = hash_key(key)
        entries.append((digest, Principal(tenant, f"env-{digest[:8]}")))
    return KeyRing(entries)


def create_app(config: GatewayConfig, env: Mapping[str, str] | None = None) -> web.Application:
    env = dict(os.environ if env is None else env)
    state = GatewayState(
        config=config,
        env=env,
        runtime=Runtime(config, env),
        keyring=build_keyring(config, env),
        telemetry=Telemetry(config.service_name, config.trace_exporter),
    )
    state.breakers.on_change = lambda key, breaker_state, _open_for: state.telemetry.breaker_changed(key, breaker_state)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[STATE] = state
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app.cleanup_ctx.append(_telemetry)
    app.cleanup_ctx.append(_quota_store)
    app.cleanup_ctx.append(_replica_sync)
    app.cleanup_ctx.append(_decision_log)
    app.cleanup_ctx.append(_upstream_session)
    routes = [
        web.post("/v1/chat/completions", chat.chat_completions),
        web.post("/v1/route", route.dry_run),
        web.get("/v1/models", models.list_models),
        web.get("/v1/models/{model:.+}", models.get_model),  # provider-qualified names hold a "/"
        *admin.routes(),
        web.get("/metrics", metrics_endpoint),
        web.get("/health/live", health.live),
        web.get("/health/ready", health.ready),
        web.route("*", CATCH_ALL_PATH, unknown_route),  # last: JSON 404 / 405 for everything else
    ]
    app.router.add_routes([web.RouteDef(r.method, r.path, with_request_context(r.handler), r.kwargs) for r in routes])
    return app


async def _upstream_session(app: web.Application):  # type: ignore[no-untyped-def]
    state = app[STATE]
    settings = state.config.upstream
    http = HTTPClient(max_connections=settings.max_connections, proxies=Proxies.from_env(state.env))
    timeouts = Timeouts(settings.connect_timeout_s, settings.first_byte_timeout_s, settings.idle_timeout_s)
    hooks = GatewayHooks(state.breakers, state.telemetry)
    state.forwarder = Forwarder(UpstreamClient(http), ADAPTERS, timeouts, RetryPolicy(), hooks)
    yield
    await http.close()


async def _decision_log(app: web.Application):  # type: ignore[no-untyped-def]
    state = app[STATE]
    settings = state.config.decision_log
    client = None
    if settings.enabled and state.config.redis_url:
        from redis.asyncio import Redis

        client = Redis.from_url(state.config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        state.decisions = RedisStreamDecisionLog(client, max_len=settings.stream_max_len)
    elif settings.enabled:
        state.decisions = JsonlDecisionLog(settings.path, settings.max_bytes, settings.backups)
    yield
    await state.decisions.close()
    if client is not None:
        await client.aclose()


async def _replica_sync(app: web.Application):  # type: ignore[no-untyped-def]
    """With Redis: share breaker states and admin reloads across replicas."""
    state = app[STATE]
    if not state.config.redis_url:
        yield
        return
    from redis.asyncio import Redis

    client = Redis.from_url(state.config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    sync = ReplicaSync(client, state.breakers, state.runtime)
    telemetry = state.telemetry

    def changed(key: str, breaker_state: str, open_for: float) -> None:
        telemetry.breaker_changed(key, breaker_state)
        sync.breaker_changed(key, breaker_state, open_for)

    state.breakers.on_change = changed
    state.extras["announce_reload"] = sync.announce_reload
    sync.start()
    yield
    await sync.stop()
    await client.aclose()


async def _quota_store(app: web.Application):  # type: ignore[no-untyped-def]
    """The quota store (Redis when configured), seeded with the policy's static limits."""
    state = app[STATE]
    limits = state.runtime.current.policy.limits
    store = open_store(
        state.config.redis_url,
        failure_mode=limits.failure_mode,
        timeout_s=state.config.redis_timeout_s,
        reservation_ttl_s=float(limits.reservation_ttl_s),
    )
    state.quota = store
    await _load_limits(store, state.runtime.current)
    state.keyring.set_remote(_store_key_lookup(store))
    state.runtime.on_reload.append(lambda snapshot: state.background.spawn(_load_limits(store, snapshot)))
    state.readiness_probes["quota"] = lambda: _probe(store, limits.failure_mode)
    yield
    await state.background.drain(timeout=state.config.server.shutdown_timeout_s)
    await store.close()


async def _load_limits(store: QuotaStore, snapshot: RoutingSnapshot) -> None:
    try:
        await store.load_static(*static_limits(snapshot.policy))
    except Exception as exc:  # noqa: BLE001 - a store outage must not stop the start; fail_open covers it
        log.warning("could not load the policy's limits into the quota store: %s", type(exc).__name__)


def _store_key_lookup(store: QuotaStore):  # type: ignore[no-untyped-def]
    async def lookup(digest: str) -> Principal | None:
        try:
            record = await store.lookup_key(digest)
        except Exception:  # noqa: BLE001 - an unreachable store cannot vouch for a key
            return None
        return Principal(record.tenant, record.key_id, record.team) if record else None

    return lookup


async def _probe(store: QuotaStore, failure_mode: str) -> str:
    ping = getattr(store, "ping", None)  # only the shared (Redis) store can be unreachable
    if ping is None:
        return "ok"
    try:
        reachable = bool(await ping())
    except Exception:  # noqa: BLE001 - any failure to answer is "unreachable"
        reachable = False
    if reachable:
        return "ok"
    return "degraded" if failure_mode == "fail_open" else "unreachable"


@functools.lru_cache(maxsize=256)
def _host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


class GatewayHooks(AttemptHooks):
    """Attempt outcomes feed the circuit breakers, the metrics and the trace."""

    def __init__(self, breakers: BreakerBoard, telemetry: Telemetry) -> None:
        self._breakers = breakers
        self._telemetry = telemetry

    def started(self, deployment: Deployment) -> None:
        self._breakers.begin(deployment.key)
        if self._telemetry.enabled:  # an attempt span is all it would start
            host = _host_of(deployment.base_url)
            self._telemetry.attempt_started(deployment.provider, deployment.model, deployment.upstream_model, host)

    def finished(self, deployment: Deployment, record: AttemptRecord, error: UpstreamError | None) -> None:
        self._breakers.record(deployment.key, error.kind if error else None)
        self._telemetry.attempt_finished(
            deployment.provider, deployment.model, record.outcome, record.status,
            record.duration_ms / 1000, record.retry, record.continuation,
        )


async def _telemetry(app: web.Application):  # type: ignore[no-untyped-def]
    yield
    app[STATE].telemetry.shutdown()  # flushes the counts and the spans still waiting


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format; with --workers N, every worker's numbers together."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )

    telemetry = request.app[STATE].telemetry
    telemetry.flush()  # this worker's counts since its last flush, so a scrape sees every finished request
    registry = telemetry.metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
