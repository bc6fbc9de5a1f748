"""Module-scoped servers shared by the failover and continuation tests.

Import the three fixtures by name into a test module (`from tests.failover_env import
clean_slate, gw, sim`): one simulator and one gateway (tests/policies/chaos.yaml) per
module, breakers reset and queued faults cleared around every test.
"""

from __future__ import annotations

from typing import AsyncIterator

import pytest_asyncio

from gateway.state import STATE
from tests.servers import Running, start_gateway, start_simulator
from tests.test_chaos import clear_faults, gateway_config


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[Running]:
    running = await start_simulator()
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(sim: Running) -> AsyncIterator[Running]:
    running = await start_gateway(sim.url, gateway_config())
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def clean_slate(sim: Running, gw: Running) -> AsyncIterator[None]:
    gw.app[STATE].breakers.reset()
    yield
    await clear_faults(sim)
