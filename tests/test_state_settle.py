"""GatewayState.settle_later: what one loop turn queues is settled together, after the turn;
the memory store settles in place, any other store in a background task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.auth import KeyRing
from gateway.config import load_config
from gateway.quota import MemoryQuotaStore, Settlement
from gateway.quota.base import AdmissionRequest, CandidateCost, Scope, SpendCap
from gateway.quota.windows import DAY
from gateway.runtime import Runtime
from gateway.state import GatewayState

TENANT = Scope("tenant", "t")


def make_state(quota: Any) -> GatewayState:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk"}
    config = load_config(None, env)
    return GatewayState(config, env, Runtime(config, env), KeyRing([]), quota=quota)


async def admitted(store: MemoryQuotaStore) -> str:
    admission = await store.admit(AdmissionRequest("r", (TENANT,), [CandidateCost("m", "p", "small", 400, 10)]))
    assert admission.reservation_id is not None
    return admission.reservation_id


async def test_memory_store_settles_after_the_turn_without_a_task() -> None:
    store = MemoryQuotaStore()
    await store.set_cap(SpendCap(TENANT, DAY, 10_000))
    state = make_state(store)
    first, second = await admitted(store), await admitted(store)
    state.settle_later(first, 100, 5)
    state.settle_later(second, 200, 5)
    assert (await store.get_spend(TENANT, DAY)).reserved_micros == 800  # nothing settled within the turn
    await asyncio.sleep(0)
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.reserved_micros) == (300, 0)
    assert len(state.background) == 0
    assert await store.settle(first, 100, 5) == "duplicate"


async def test_memory_store_failure_is_logged_and_left_to_expiry(monkeypatch, caplog) -> None:
    store = MemoryQuotaStore()
    state = make_state(store)

    def broken(self: MemoryQuotaStore, item: Settlement) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(MemoryQuotaStore, "settle_now", broken)
    with caplog.at_level(logging.WARNING, logger="gateway.state"):
        state.settle_later("r1", 1, 1)
        await asyncio.sleep(0)
    assert "settling 1 reservations failed (RuntimeError)" in caplog.text


async def test_other_stores_settle_in_one_background_call_per_turn() -> None:
    class RecordingStore:
        degraded_count = 0

        def __init__(self) -> None:
            self.batches: list[list[Settlement]] = []

        async def settle_many(self, settlements: Sequence[Settlement]) -> list[str]:
            await asyncio.sleep(0)  # a store that awaits (Redis)
            self.batches.append(list(settlements))
            return ["settled"] * len(settlements)

    store = RecordingStore()
    state = make_state(store)
    state.settle_later("a", 1, 2)
    state.settle_later("b", 3, 4)
    await asyncio.sleep(0)
    assert len(state.background) == 1
    await state.background.drain(1.0)
    assert store.batches == [[Settlement("a", 1, 2), Settlement("b", 3, 4)]]


def test_a_bad_settlement_raises_where_it_is_queued() -> None:
    state = make_state(MemoryQuotaStore())
    with pytest.raises(ValueError):
        state.settle_later("r", -1, 0)
