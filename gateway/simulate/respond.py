"""Putting an answer on the wire: JSON bodies, SSE streams, and the transport faults.

Stream-level faults (cut, stall, malformed) and client disconnects live here, so the
wire modules only describe what to send, never how it breaks.
"""

from __future__ import annotations

import asyncio
from typing import Iterable, Mapping

import orjson
from aiohttp import web

from .faults import FaultSpec
from .stats import SimStats
from .wire import ErrorReply, SSEEvent

_JSON = "application/json"
_FLUSH_POLLS = 50  # x 1 ms: how long an abort waits for written bytes to leave
_WATCH_SLICE = 0.05  # seconds: how late a long sleep notices that the client left


def error_response(reply: ErrorReply, headers: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=reply.status,
        body=orjson.dumps(reply.body),
        headers={**headers, **reply.headers, "Content-Type": _JSON},
    )


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def sleep_while_connected(request: web.Request, seconds: float) -> bool:
    """Sleep, waking early if the client goes away; False if it did.

    Why not rely on aiohttp cancelling the handler: that is off by default
    (handler_cancellation), and a stalled stream must still see its client leave.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while client_connected(request):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        await asyncio.sleep(min(remaining, _WATCH_SLICE))
    return False


async def abort_connection(request: web.Request) -> None:
    """Close the TCP connection abruptly (RST), after what was written has left."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(_FLUSH_POLLS):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    transport.abort()


async def send_json(
    request: web.Request, payload: bytes, fault: FaultSpec | None, headers: Mapping[str, str]
) -> web.StreamResponse:
    if fault is not None and fault.malformed:
        payload = payload[:-1] + b",}"  # a trailing comma: looks like JSON, does not parse
    if fault is not None and fault.cut_after is not None:
        # Announce the whole length, send half, then drop the connection: the client
        # sees a body that ends early, like an upstream dying mid-response.
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": _JSON})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        await abort_connection(request)
        return response
    return web.Response(body=payload, headers={**headers, "Content-Type": _JSON})


async def send_stream(
    request: web.Request,
    events: Iterable[SSEEvent],
    *,
    fault: FaultSpec | None,
    token_rate: float,
    malformed_frame: bytes,
    headers: Mapping[str, str],
    stats: SimStats,
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={**headers, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
    )
    await response.prepare(request)
    interval = 1.0 / token_rate if token_rate > 0 else 0.0
    cut_after = fault.cut_after if fault is not None else None
    stall_after = fault.stall_after if fault is not None else None
    malformed = fault is not None and fault.malformed
    sent = 0  # content chunks written
    stats.open_streams += 1
    try:
        for event in events:
            if event.content:
                pause = 0.0
                if stall_after is not None and sent == stall_after:
                    pause = fault.stall_ms / 1000  # type: ignore[union-attr]
                elif interval and sent:
                    pause = interval
                if pause and not await sleep_while_connected(request, pause):
                    raise ConnectionResetError("client went away")
            await response.write(event.frame)
            if not event.content:
                continue
            sent += 1
            if malformed and sent == 1:
                await response.write(malformed_frame)
            if cut_after is not None and sent >= cut_after:
                await abort_connection(request)
                stats.cut_streams += 1
                return response
        await response.write_eof()
        stats.completed_streams += 1
    except ConnectionError:
        stats.disconnected_streams += 1
    except asyncio.CancelledError:
        # aiohttp cancels the handler on disconnect only when handler_cancellation is on
        transport = request.transport
        if transport is None or transport.is_closing():
            stats.disconnected_streams += 1
        raise
    finally:
        stats.open_streams -= 1
    return response
