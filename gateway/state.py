"""What a running gateway process holds: the services each request uses.

Built once per worker by `app.create_app`; handlers reach it through `request.app[STATE]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from .auth import KeyRing
from .background import BackgroundTasks
from .config import GatewayConfig
from .decisions import DecisionSink, NullDecisionLog
from .forward import Forwarder
from .health import BreakerBoard
from .loop import running_loop
from .quota import MemoryQuotaStore, QuotaStore, Settlement
from .quota.admission import new_settlement
from .runtime import Runtime
from .telemetry import Telemetry

log = logging.getLogger("gateway.state")


@dataclass
class GatewayState:
    config: GatewayConfig
    env: Mapping[str, str]
    runtime: Runtime
    keyring: KeyRing
    telemetry: Telemetry = field(default_factory=lambda: Telemetry("llm-gateway", "none"))
    forwarder: Forwarder | None = None  # set on startup, when the client session exists
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    decisions: DecisionSink = field(default_factory=NullDecisionLog)
    quota: QuotaStore = field(default_factory=MemoryQuotaStore)
    draining: bool = False
    # name -> async check returning "ok", "degraded" or a failure description
    readiness_probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    _settlements: list[Settlement] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


    def unavailable(self) -> frozenset[str]:
        return self.breakers.unavailable()

    def settle_later(self, reservation_id: str, micros: int, tokens: int) -> None:
        """Queue a settlement; everything queued in one loop turn is settled together right
        after it (one settle_many, or in place for the memory store)."""
        self._settlements.append(new_settlement(reservation_id, micros, tokens))
        if len(self._settlements) == 1:
            running_loop().call_soon(self._flush_settlements)

    def release_later(self, reservation_id: str) -> None:
        self.background.spawn(self._release(reservation_id))

    def _flush_settlements(self) -> None:
        batch, self._settlements = self._settlements, []
        quota = self.quota
        if isinstance(quota, MemoryQuotaStore):
            # It settles without awaiting: right here, after the responses of this loop turn
            # went out, rather than in a task of its own (which cost more than the settling).
            try:
                for item in batch:
                    quota.settle_now(item)
            except Exception as exc:  # noqa: BLE001 - the reservations' TTL is the backstop
                _settling_failed(batch, exc)
        else:
            self.background.spawn(self._settle(batch))

    async def _settle(self, batch: list[Settlement]) -> None:
        try:
            await self.quota.settle_many(batch)
        except Exception as exc:  # noqa: BLE001 - the reservations' TTL is the backstop
            _settling_failed(batch, exc)

    async def _release(self, reservation_id: str) -> None:
        try:
            await self.quota.release(reservation_id)
        except Exception as exc:  # noqa: BLE001 - the reservation's TTL is the backstop
            log.warning("release of %s failed (%s); its reservation expires on its own", reservation_id, type(exc).__name__)


def _settling_failed(batch: list[Settlement], exc: Exception) -> None:
    log.warning("settling %d reservations failed (%s); they expire on their own", len(batch), type(exc).__name__)


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
