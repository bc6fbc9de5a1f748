"""What a running gateway process holds: the services each request uses.

Built once per worker by `app.create_app`; handlers reach it through `request.app[STATE]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from .auth import KeyRing
from .background import BackgroundTasks
from .config import GatewayConfig
from .decisions import DecisionSink, NullDecisionLog
from .forward import Forwarder
from .health import BreakerBoard
from .runtime import Runtime


@dataclass
class GatewayState:
    config: GatewayConfig
    env: Mapping[str, str]
    runtime: Runtime
    keyring: KeyRing
    forwarder: Forwarder | None = None  # set on startup, when the client session exists
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    decisions: DecisionSink = field(default_factory=NullDecisionLog)
    draining: bool = False
    # name -> async check returning "ok", "degraded" or a failure description
    readiness_probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


    def unavailable(self) -> frozenset[str]:
        return self.breakers.unavailable()


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
