"""GET /health/live and /health/ready."""

from __future__ import annotations

from aiohttp import web

from ..state import STATE


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    checks: dict[str, str] = {"config": "ok", "policy": state.runtime.current.policy_version}
    ok = True
    if state.draining:
        checks["shutdown"] = "draining"
        ok = False
    for name, probe in state.readiness_probes.items():
        status = await probe()
        checks[name] = status
        ok = ok and status in ("ok", "degraded")
    return web.json_response({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)
