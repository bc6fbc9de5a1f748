"""The floor: what the gateway's own transport costs with no gateway work at all.

aiohttp's server (as in the pass-through) in front of the gateway's upstream client
(`gateway/http1.py`), and nothing else: no parsing, auth, routing, accounting or logging.
The gap between this row and the gateway's is what the request pipeline costs; the gap
between this row and the pass-through's is what the leaner client saves.

    python bench/floor.py --port 8082 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.http1 import HTTPClient, HTTPClientError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from passthrough import run_proxy  # noqa: E402

_KEEP = ("content-type", "x-request-id")  # what the pass-through's relay also keeps, in effect
_CLIENT = web.AppKey("client", HTTPClient)


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    target = upstream.rstrip("/") + "/v1/chat/completions"

    async def client(app: web.Application):  # type: ignore[no-untyped-def]
        app[_CLIENT] = HTTPClient()
        yield
        await app[_CLIENT].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"content-type": request.headers.get("Content-Type", "application/json")}
        auth = request.headers.get("Authorization")
        if auth is not None:
            headers["authorization"] = auth
        loop = asyncio.get_running_loop()
        try:
            answer = await request.app[_CLIENT].request(
                "POST", target, headers, body, connect_s=5.0, answer_by=loop.time() + 60
            )
            passed = {k: v for k, v in answer.headers.items() if k.lower() in _KEEP}
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                payload = await answer.read(loop.time() + 60, 30.0)
                return web.Response(status=answer.status, body=payload, headers=passed)
            response = web.StreamResponse(status=answer.status, headers=passed)
            await response.prepare(request)
            while chunk := await answer.next_chunk(30.0):
                await response.write(chunk)
            await response.write_eof()
            return response
        except (HTTPClientError, TimeoutError) as error:
            return web.json_response(
                {"error": {"message": f"upstream failed: {error}", "type": "upstream_error", "param": None, "code": None}},
                status=502,
            )

    app.cleanup_ctx.append(client)
    app.router.add_post("/v1/chat/completions", forward)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    return run_proxy(create_app, "aiohttp server + the gateway's upstream client, nothing else", argv)


if __name__ == "__main__":
    raise SystemExit(main())
