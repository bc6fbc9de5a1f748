"""Replica-to-replica state through Redis: breaker states and policy reloads.

Each replica publishes its breaker changes into one hash and polls it (and a reload
generation counter) every `interval_s`. A breaker opened on one replica is skipped by
all within about a second; an admin reload on one replica reloads every replica.
Redis being away only pauses the sharing: every replica keeps its own breakers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .health import BreakerBoard
from .runtime import ReloadError, Runtime

log = logging.getLogger("gateway.sync")

BREAKERS = "{gw}:breakers"
RELOAD_GENERATION = "{gw}:policy_generation"


class ReplicaSync:
    def __init__(self, redis: Any, breakers: BreakerBoard, runtime: Runtime, interval_s: float = 1.0) -> None:
        self._redis = redis
        self._breakers = breakers
        self._runtime = runtime
        self._interval_s = interval_s
        self._outbox: dict[str, tuple[str, float]] = {}
        self._generation: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def breaker_changed(self, key: str, state: str, open_for: float) -> None:
        """BreakerBoard's on_change hook: queue the change for the next round."""
        self._outbox[key] = (state, time.time() + open_for)

    async def announce_reload(self) -> None:
        """After a local reload: make every other replica reload too."""
        generation = await self._redis.incr(RELOAD_GENERATION)
        self._generation = int(generation)

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:  # noqa: BLE001 - sharing pauses; local state carries on
                log.debug("replica sync round failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval_s)

    async def round(self) -> None:
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            await self._redis.hset(BREAKERS, mapping={k: f"{s}|{until:.3f}" for k, (s, until) in outbox.items()})
        states, generation = await asyncio.gather(self._redis.hgetall(BREAKERS), self._redis.get(RELOAD_GENERATION))
        now = time.time()
        for raw_key, raw_value in states.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            state, _, until = value.partition("|")
            remaining = float(until or 0) - now
            if state == "open" and remaining > 0:
                self._breakers.apply_remote(key, "open", remaining)
            elif state == "closed":
                self._breakers.apply_remote(key, "closed", 0.0)
        current = int(generation or 0)
        if self._generation is None:
            self._generation = current
        elif current != self._generation:
            self._generation = current
            try:
                self._runtime.reload()
            except ReloadError:
                pass  # logged by Runtime.reload; the running policy stays
