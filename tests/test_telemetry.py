"""Traces and metrics: one SERVER span per request, one CLIENT span per upstream attempt."""

from __future__ import annotations

import aiohttp
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.config import load_config
from gateway.state import STATE
from gateway.telemetry import Telemetry
from tests.servers import CLIENT_KEY, UPSTREAM_KEY, Running, start_app, upstream_env

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


async def test_failover_path_is_one_trace_with_a_span_per_attempt(sim: Running, tmp_path) -> None:
    env = upstream_env(sim.url)
    config_path = tmp_path / "gw.yaml"
    config_path.write_text(f"decision_log: {{path: {tmp_path / 'd.jsonl'}}}\n")
    app = create_app(load_config(str(config_path), env), env)
    exporter = InMemorySpanExporter()
    app[STATE].telemetry = Telemetry("test", "none", processor=SimpleSpanProcessor(exporter))
    gw = await start_app(app)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[fault@gpt-4o-mini:status=503]] hello"}]}
    try:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(gw.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                attempts = r.headers["x-gateway-attempts"].split(",")
                answered = r.headers["x-gateway-model"]
            async with session.get(gw.url + "/metrics") as r:
                metrics = await r.text()
    finally:
        await gw.stop()
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(server) == 1
    assert len(clients) == len(attempts) >= 2
    assert {s.context.trace_id for s in spans} == {server[0].context.trace_id}
    assert all(s.parent.span_id == server[0].context.span_id for s in clients)
    assert [s.attributes["gateway.attempt.outcome"] for s in clients][0] == "overloaded"
    assert clients[-1].attributes["gateway.attempt.outcome"] == "ok"
    attrs = server[0].attributes
    assert attrs["gen_ai.response.model"] == answered
    assert attrs["gateway.degraded"] == "fallback"
    assert attrs["gen_ai.usage.output_tokens"] > 0
    text = "".join(str(dict(s.attributes)) for s in spans) + "".join(str(e.attributes) for s in spans for e in s.events)
    assert UPSTREAM_KEY not in text and CLIENT_KEY not in text and "hello" not in text
    assert 'gateway_upstream_attempts_total{model="gpt-4o-mini",outcome="overloaded",provider="openai"}' in metrics
    assert "gateway_requests_total{" in metrics and 'degraded="fallback"' in metrics
    assert 'gateway_spend_usd_total{model="' + answered + '",tenant="team-a"}' in metrics
