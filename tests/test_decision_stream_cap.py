"""With Redis, the decision log is a stream in the quota store's memory: it is trimmed to
`decision_log.stream_max_len` records, which the config validates (real redis-server)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.config import ConfigError, load_config
from gateway.decisions import RedisStreamDecisionLog
from gateway.state import STATE
from tests.redis_server import RedisServer
from tests.servers import CLIENT_KEY, Running, start_app, upstream_env


def test_the_cap_defaults_to_200k_records_and_must_be_at_least_1000(tmp_path: Path) -> None:
    assert load_config(None, {}).decision_log.stream_max_len == 200_000
    config = tmp_path / "gw.yaml"
    config.write_text("decision_log: {stream_max_len: 10}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(config), {})
    assert "decision_log.stream_max_len" in str(info.value) and "1000" in str(info.value)


async def test_the_stream_is_trimmed_near_its_cap(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    await client.delete("gateway:decisions")
    sink = RedisStreamDecisionLog(client, max_len=1000, batch=256, flush_interval_s=0.01)
    for n in range(3000):
        sink.append({"request_id": f"req-{n}"})
    await sink.close()
    length = await client.xlen("gateway:decisions")
    newest = await client.xrevrange("gateway:decisions", count=1)
    await client.aclose()
    # XADD MAXLEN ~ trims whole stream nodes (100 records each by default): never below the cap
    assert 1000 <= length <= 1100
    assert newest[0][1][b"d"] == b'{"request_id":"req-2999"}'


async def test_the_gateway_caps_its_stream_as_configured(sim: Running, redis_server: RedisServer, tmp_path: Path) -> None:
    env = upstream_env(sim.url, REDIS_URL=redis_server.url)
    config = tmp_path / "gw.yaml"
    config.write_text(f"decision_log: {{path: {tmp_path / 'd.jsonl'}, stream_max_len: 5000}}\n")
    gw = await start_app(create_app(load_config(str(config), env), env))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as session:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
        sink = gw.app[STATE].decisions
        assert isinstance(sink, RedisStreamDecisionLog) and sink._max_len == 5000
    finally:
        await gw.stop()
