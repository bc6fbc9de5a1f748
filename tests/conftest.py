from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer
from tests.servers import CLIENT_KEY, Running, start_gateway, start_simulator


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the module's own, on a free port."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def sim() -> Running:
    running = await start_simulator()
    yield running
    await running.stop()


@pytest.fixture
async def gw(sim: Running) -> Running:
    running = await start_gateway(sim.url)
    yield running
    await running.stop()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENT_KEY}"}
