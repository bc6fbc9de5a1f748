from __future__ import annotations

import pytest

from tests.servers import CLIENT_KEY, Running, start_gateway, start_simulator


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
