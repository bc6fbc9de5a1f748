"""What replicas share through Redis: breaker states, and the decision log as a Redis stream."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from tests.servers import CLIENT_KEY, Running, start_gateway

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    return redis_server.url


async def test_breaker_opened_on_one_replica_is_skipped_by_another(sim: Running, redis_url: str) -> None:
    a = await start_gateway(sim.url, REDIS_URL=redis_url)
    b = await start_gateway(sim.url, REDIS_URL=redis_url)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[[fault@gpt-4o-mini:auth]] hello"}]}
    try:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(a.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                assert r.headers["x-gateway-attempts"].startswith("openai/gpt-4o-mini:auth")
                assert r.headers["x-gateway-degraded"] == "fallback"
            plain = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            rejected: list[dict] = []
            for _ in range(40):  # replica b learns it within its sync interval (1 s)
                async with session.post(b.url + "/v1/route", json=plain) as r:
                    rejected = (await r.json())["plan"]["rejected"]
                if any(x["model"] == "gpt-4o-mini" and x["reason"] == "breaker_open" for x in rejected):
                    break
                await asyncio.sleep(0.1)
            assert any(x["model"] == "gpt-4o-mini" and x["reason"] == "breaker_open" for x in rejected)
            async with session.post(b.url + "/v1/chat/completions", json=plain) as r:
                assert r.status == 200
                assert r.headers["x-gateway-model"] != "gpt-4o-mini"
                assert "gpt-4o-mini" not in r.headers["x-gateway-attempts"]
    finally:
        await a.stop()
        await b.stop()


async def test_decision_log_goes_to_a_redis_stream(sim: Running, redis_url: str) -> None:
    gw = await start_gateway(sim.url, REDIS_URL=redis_url)
    try:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a private prompt"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=body, headers={"x-request-id": "to-redis-1"}) as r:
                assert r.status == 200
        client = Redis.from_url(redis_url)
        records = []
        for _ in range(50):
            records = [orjson.loads(fields[b"d"]) for _, fields in await client.xrange("gateway:decisions")]
            if records:
                break
            await asyncio.sleep(0.02)
        await client.aclose()
        record = next(r for r in records if r["request_id"] == "to-redis-1")
        assert record["chosen"] == "openai/gpt-4o-mini" and record["outcome"] == "ok"
        assert "a private prompt" not in orjson.dumps(record).decode()
    finally:
        await gw.stop()
