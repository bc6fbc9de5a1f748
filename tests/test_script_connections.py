"""The quota scripts' own connections (quota/redis_scripts.py), against a real redis-server:
reused while healthy, never reused after an unfinished exchange, fresh after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.quota.redis_scripts import ScriptConnections, _resp
from gateway.quota.redis_store import make_client

from .redis_server import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    # its own server: the tests stop, restart and pause it
    with RedisServer() as running:
        yield running


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis = make_client(server.url, timeout_s=0.5)
    yield redis
    await redis.aclose()


async def test_replies_come_back_in_order_and_error_replies_as_values(client: Redis) -> None:
    connections = ScriptConnections(client)
    replies = await connections.exchange([("SET", "k", "v"), ("INCR", "k"), ("GET", "k")])
    assert replies[0] is True or replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)  # "v" is not an integer
    assert replies[2] == b"v"
    await connections.close()


async def test_a_healthy_connection_is_used_again(client: Redis) -> None:
    connections = ScriptConnections(client)
    await connections.exchange([("PING",)])
    (first,) = connections._idle
    await connections.exchange([("PING",)])
    assert connections._idle == [first]
    await connections.close()
    assert connections._idle == []


async def test_an_unfinished_exchange_never_hands_its_connection_on(server: RedisServer, client: Redis) -> None:
    """A reply that arrives after the caller gave up must not be read as the next call's."""
    connections = ScriptConnections(client)
    await connections.exchange([("SET", "k", "first")])
    server.pause()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await connections.exchange([("GET", "k")])
    finally:
        server.resume()
    assert connections._idle == []  # dropped: its GET reply is still on the way
    assert await connections.exchange([("SET", "k", "second"), ("GET", "k")]) in ([True, b"second"], [b"OK", b"second"])
    await connections.close()


async def test_after_a_restart_a_stale_connection_is_replaced_at_once(server: RedisServer, client: Redis) -> None:
    connections = ScriptConnections(client)
    await connections.exchange([("SET", "k", "before")])
    (stale,) = connections._idle
    server.restart()
    replies = await connections.exchange([("GET", "k")])  # the stale one fails; a new one answers
    assert replies == [b"before"]  # the server keeps its data across the restart (append-only file)
    assert len(connections._idle) == 1 and connections._idle[0] is not stale
    await connections.close()


async def test_commands_are_packed_as_redis_py_packs_them(client: Redis) -> None:
    commands = [
        ("EVALSHA", "0f74f38768c626140c7acfe26958b138a7a1039d", 1, "{gw}:cfgidx", "{gw}:", b'{"now":null,"id":"\xc3\xa9"}'),
        ("EVALSHA", "5a930a7aff2685b771fbb410ba99a6e6d38a6943", 1, "{gw}:cfgidx", "{gw}:", b"x" * 70_000, b"", b"\r\n"),
        ("PING",),
    ]
    connection = client.connection_pool.make_connection()
    assert _resp(commands) == b"".join(connection.pack_commands(commands))
