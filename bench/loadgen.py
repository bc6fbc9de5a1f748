"""A lean closed-loop HTTP/1.1 load generator on raw asyncio + uvloop.

Why not aiohttp's client: it tops out around a few thousand requests/s per core, which is
the very range we measure, so it would measure itself. Here every connection is an
`asyncio.Protocol` that writes pre-built request bytes, parses only what it must (status
line, Content-Length or chunked framing, `Connection: close`) and writes the next request
the moment the previous response ends. N connections = N requests in flight.

Also here: `FixedResponder`, a raw asyncio server answering every request with the same
bytes. It is the loadgen's calibration target: against it the load generator itself is
the bottleneck, so its rate there is the loadgen's ceiling.

Standalone use (ad hoc):
    python bench/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions -c 32 -d 5
    python bench/loadgen.py --respond 9000      # serve the fixed response on :9000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

import orjson
import uvloop

_now = time.perf_counter


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes of one keep-alive POST; built once, written N times."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: */*",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float  # the measured window, warm-up excluded
    completed: int = 0  # responses that ended inside the window, errors included
    errors: int = 0  # non-2xx responses and broken connections inside the window
    statuses: dict[int, int] = field(default_factory=dict)  # status -> count, inside the window
    latencies_s: list[float] = field(default_factory=list)  # send -> last byte, 2xx only
    ttfb_s: list[float] = field(default_factory=list)  # send -> first body byte, 2xx only
    first_error: str | None = None  # the first failure seen, for a readable diagnosis
    first_error_body: bytes | None = None  # the body of the first non-2xx response
    sample_body: bytes | None = None  # the first 2xx body, so the caller can check its shape

    @property
    def ok(self) -> int:
        return self.completed - self.errors

    @property
    def rps(self) -> float:
        """Successful responses per second: a fast run of errors is not throughput."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _Window:
    """The shared clock and tallies: only responses ending in [start, end) count."""

    def __init__(self, result: LoadResult, start: float, end: float) -> None:
        self.result = result
        self.start = start
        self.end = end
        self.connections: set[_Connection] = set()  # open ones, to abort on a stall

    def record(self, status: int, sent: float, first: float, done: float, body: bytes | None) -> None:
        if not self.start <= done < self.end:
            return
        result = self.result
        result.completed += 1
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            result.latencies_s.append(done - sent)
            result.ttfb_s.append(first - sent)
            if result.sample_body is None and body is not None:
                result.sample_body = body
        else:
            result.errors += 1
            if result.first_error is None:
                result.first_error_body = body or b""
                result.first_error = f"HTTP {status}: {result.first_error_body[:300].decode('utf-8', 'replace')}"

    def broken(self, reason: str) -> None:
        if self.start <= _now() < self.end:
            self.result.errors += 1
            self.result.completed += 1
            if self.result.first_error is None:
                self.result.first_error = reason

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)


class _Connection(asyncio.Protocol):
    """One keep-alive connection issuing requests back to back until the window ends."""

    def __init__(self, window: _Window, request: bytes, closed: "asyncio.Future[None]", one_shot: bool = False) -> None:
        self.window = window
        self.request = request
        self.closed = closed
        self.one_shot = one_shot  # close after the first response (a probe)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_flight = False
        self._reset()

    def _reset(self) -> None:
        self.header_end = -1  # index just past the blank line, once seen
        self.status = 0
        self.content_length = -1  # -1 and not chunked: the body ends at close (not expected)
        self.chunked = False
        self.closing = False  # the server said Connection: close
        self.chunk_pos = 0  # where the next chunk-size line starts, for chunked bodies
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.window.connections.add(self)
        self._send()

    def _send(self) -> None:
        self.in_flight = True
        self.sent = _now()
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.header_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(buffer[:end]))
            self.header_end = self.chunk_pos = end + 4
        if self.first == 0.0 and len(buffer) > self.header_end:
            self.first = _now()
        end = self._body_end()
        if end >= 0:
            self._complete(end)

    def _complete(self, end: int) -> None:
        done = _now()
        if self.first == 0.0:
            self.first = done  # an empty body: its first byte is its end
        window = self.window
        result = window.result
        # Bodies are copied only while the window still wants a sample or an error text.
        wants_body = result.sample_body is None if 200 <= self.status < 300 else result.first_error is None
        buffer = self.buffer
        body = bytes(buffer[self.header_end:end]) if wants_body else None
        window.record(self.status, self.sent, self.first, done, body)
        self.in_flight = False
        leftover = len(buffer) - end
        del buffer[:end]
        closing = self.closing
        self._reset()
        if leftover:
            self._abort("the server sent bytes after a complete response")
        elif closing or self.one_shot or done >= window.end:
            self.transport.close()  # type: ignore[union-attr]
        else:
            self._send()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0][9:12])
        except ValueError:
            self.status = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.content_length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self.closing = b"close" in value.lower()

    def _body_end(self) -> int:
        """Index just past the response's last byte, or -1 while incomplete."""
        buffer = self.buffer
        if not self.chunked:
            if self.content_length < 0:
                return -1  # unframed: connection_lost ends it
            end = self.header_end + self.content_length
            return end if len(buffer) >= end else -1
        pos = self.chunk_pos
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return -1
            size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
            if size == 0:
                if buffer[line_end + 2:line_end + 4] == b"\r\n":
                    return line_end + 4
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                return trailer_end + 4 if trailer_end >= 0 else -1
            next_pos = line_end + 2 + size + 2
            if len(buffer) < next_pos:
                return -1
            pos = self.chunk_pos = next_pos

    def _abort(self, reason: str) -> None:
        self.window.broken(reason)
        self.transport.abort()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            if self.header_end >= 0 and not self.chunked and self.content_length < 0:
                self._complete(len(self.buffer))  # an unframed body ends at close
            else:
                detail = f": {exc!r}" if exc else ""
                self.window.broken(f"the server closed the connection mid-request{detail}")
        self.window.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)


async def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    *,
    drain_timeout_s: float = 10.0,
) -> LoadResult:
    """Keep `concurrency` requests in flight for warm-up + duration; measure the last part.

    Connections that close (the server said `Connection: close`, or broke) are reopened
    while the window is open, each reopen costing what it costs a real client.
    Requests still unanswered `drain_timeout_s` after the window count as errors.
    """
    loop = asyncio.get_running_loop()
    start = _now() + warmup_s
    result = LoadResult(concurrency, duration_s)
    window = _Window(result, start, start + duration_s)

    async def keep_one_open() -> None:
        while _now() < window.end:
            closed: asyncio.Future[None] = loop.create_future()
            try:
                await loop.create_connection(lambda: _Connection(window, request, closed), host, port)
            except OSError as error:
                window.broken(f"cannot connect to {host}:{port}: {error.strerror or error}")
                await asyncio.sleep(0.05)
                continue
            await closed

    slots = [asyncio.ensure_future(keep_one_open()) for _ in range(concurrency)]
    try:
        _, stalled = await asyncio.wait(slots, timeout=duration_s + warmup_s + drain_timeout_s)
    finally:  # also on cancellation (Ctrl-C): leave no connection or task behind
        for connection in list(window.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for slot in slots:
            slot.cancel()
    for slot in slots:
        if slot.done() and not slot.cancelled() and slot.exception() is not None:
            raise slot.exception()  # type: ignore[misc]
    if stalled:
        # A server that stopped answering: its requests in flight never end. Say so.
        result.errors += len(stalled)
        result.completed += len(stalled)
        if result.first_error is None:
            result.first_error = f"{len(stalled)} requests still unanswered {drain_timeout_s:.0f}s after the window closed"
    return result


async def probe(host: str, port: int, request: bytes, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body). Raises OSError, TimeoutError, ConnectionError."""
    loop = asyncio.get_running_loop()
    result = LoadResult(1, 1.0)
    window = _Window(result, float("-inf"), float("inf"))
    closed: asyncio.Future[None] = loop.create_future()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: _Connection(window, request, closed, one_shot=True), host, port), timeout_s
    )
    try:
        await asyncio.wait_for(closed, timeout_s)
    finally:
        transport.abort()
    if not result.statuses:
        raise ConnectionError(result.first_error or "the connection closed without a response")
    status = next(iter(result.statuses))
    if 200 <= status < 300:
        return status, result.sample_body or b""
    return status, result.first_error_body or b""


class FixedResponder(asyncio.Protocol):
    """Answers each request (headers + Content-Length body) with the same bytes."""

    BODY = orjson.dumps(
        {
            "id": "chatcmpl-fixed",
            "object": "chat.completion",
            "model": "fixed",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        }
    )
    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            marker = buffer.find(b"Content-Length:", 0, end)
            if marker < 0:
                marker = buffer.lower().find(b"content-length:", 0, end)
            if marker >= 0:
                line_end = buffer.find(b"\r\n", marker)
                length = int(buffer[marker + 15:line_end])
            if len(buffer) < end + 4 + length:
                return
            del buffer[: end + 4 + length]
            self.transport.write(self.RESPONSE)  # type: ignore[attr-defined]


async def serve_fixed(port: int, host: str = "127.0.0.1") -> None:
    server = await asyncio.get_running_loop().create_server(FixedResponder, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="POST target, e.g. http://127.0.0.1:8080/v1/chat/completions")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--body", default='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--respond", type=int, metavar="PORT", help="serve the fixed calibration response instead")
    args = parser.parse_args(argv)
    if args.respond is not None:
        try:
            uvloop.run(serve_fixed(args.respond))
        except KeyboardInterrupt:
            pass
        return 0
    if not args.url:
        parser.error("give --url (or --respond PORT)")
    url = urlsplit(args.url)
    headers = dict(h.split(":", 1) for h in args.header)
    request = build_request(url.hostname or "127.0.0.1", url.port or 80, url.path or "/", args.body.encode(),
                            {k.strip(): v.strip() for k, v in headers.items()})
    result = uvloop.run(run_load(url.hostname or "127.0.0.1", url.port or 80, request, args.concurrency,
                                 args.duration, args.warmup))
    p50, p99 = percentile(result.latencies_s, 50), percentile(result.latencies_s, 99)
    print(f"{result.rps:,.0f} req/s  p50 {p50 * 1e3 if p50 else float('nan'):.3f} ms  "
          f"p99 {p99 * 1e3 if p99 else float('nan'):.3f} ms  errors {result.errors}  statuses {result.statuses}")
    if result.first_error:
        print(f"first error: {result.first_error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
