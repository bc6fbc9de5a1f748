"""The bare pass-through: the ceiling of our stack (aiohttp server + client on uvloop).

It does the least any proxy of ours must do: accept POST /v1/chat/completions, forward
the body unchanged to the upstream over one shared keep-alive ClientSession, and return
the upstream's status and body. No JSON parsing, no auth, no routing, no accounting.
Streams (an upstream answering text/event-stream) are relayed chunk by chunk, since the
gateway streams too and a buffered relay would flatter the time to first byte.

    python bench/passthrough.py --port 8081 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Sequence

import aiohttp
import uvloop
from aiohttp import web

# Hop-by-hop and framing headers are the server's to set, not the upstream's to dictate.
_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "date", "server"}


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    target = upstream.rstrip("/") + "/v1/chat/completions"

    async def start_session(app: web.Application) -> None:
        # limit=0: no pool cap, so 32 client requests in flight map to 32 upstream ones.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        # DummyCookieJar: a proxy must not keep upstream cookies, and skipping the jar is cheaper.
        app["session"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def close_session(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        auth = request.headers.get("Authorization")
        if auth is not None:
            headers["Authorization"] = auth
        session: aiohttp.ClientSession = request.app["session"]
        try:
            async with session.post(target, data=body, headers=headers) as upstream_response:
                passed = {k: v for k, v in upstream_response.headers.items() if k.lower() not in _DROP}
                if upstream_response.content_type != "text/event-stream":
                    payload = await upstream_response.read()
                    return web.Response(status=upstream_response.status, body=payload, headers=passed)
                response = web.StreamResponse(status=upstream_response.status, headers=passed)
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as error:
            return web.json_response(
                {"error": {"message": f"upstream unreachable: {error}", "type": "upstream_error", "param": None, "code": None}},
                status=502,
            )

    app.on_startup.append(start_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/v1/chat/completions", forward)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def run_proxy(make_app: Callable[[str], web.Application], description: str, argv: Sequence[str] | None) -> int:
    """The command line both bench proxies share: --host, --port, --upstream."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8090 (with or without /v1)")
    args = parser.parse_args(argv)
    upstream = args.upstream.rstrip("/")
    if upstream.endswith("/v1"):
        upstream = upstream[: -len("/v1")]
    uvloop.run(serve(make_app(upstream), args.host, args.port))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_proxy(create_app, "bare aiohttp+uvloop pass-through (the bench's ceiling)", argv)


if __name__ == "__main__":
    raise SystemExit(main())
