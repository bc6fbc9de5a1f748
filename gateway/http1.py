"""A lean HTTP/1.1 client: keep-alive connection pools over asyncio protocols.

Why not aiohttp's ClientSession: per request it builds a dozen objects (request, payload,
writer, response, timer context, cookie and redirect handling) the gateway never uses,
and in the benchmark that machinery cost more CPU than the whole routing pipeline. Here a
request is one `transport.write` of pre-joined bytes, the response is parsed by
`httptools` (llhttp, the parser Node.js uses) straight into one `UpstreamResponse`, and
every wait is a future with at most one timer handle: no task, no timeout context.

What it does and does not do, on purpose:
- keep-alive pools per (scheme, host, port), most recently used first; an idle connection
  the server closed leaves the pool when its close arrives;
- a request that fails on a reused connection before any byte of the answer came back is
  sent once more on a fresh connection: the server closed that idle connection as we
  wrote (its keep-alive timeout), so it never read the request;
- TLS with the system's default trust store and SNI;
- gzip / deflate bodies are inflated (we ask for identity, but a server may not listen);
- a streamed body is buffered up to a high-water mark, then reading pauses (flow control,
  in `http1_response.py`, with the response the caller reads);
- egress through an HTTP proxy named by HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as a CONNECT
  tunnel (`http1_proxy.py`);
- no redirects, cookies or HTTP/2: upstream model APIs need none of them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from .http1_proxy import Proxies, connect_through
from .http1_response import HTTPClientError, UpstreamResponse, expire
from .loop import running_loop

__all__ = ["HTTPClient", "HTTPClientError", "UpstreamResponse", "encode_request", "parse_target"]

MAX_HEADER_BYTES = 64 * 1024


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class Target(NamedTuple):
    origin: Origin
    path: bytes  # path and query, as sent on the request line
    host_header: bytes


@lru_cache(maxsize=1024)
def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return Target(Origin(parts.scheme, host, port), path.encode("ascii"), host_header.encode("idna"))


def encode_request(method: str, target: Target, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} ".encode("ascii") + target.path + b" HTTP/1.1\r\nhost: " + target.host_header]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(b"content-length: %d\r\naccept-encoding: identity\r\n\r\n" % len(body))
    return b"\r\n".join(lines) + body


class _Connection(asyncio.Protocol):
    """One upstream socket: at most one request in flight, then back to its pool."""

    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.idle_since = 0.0
        self._paused = False
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._head: asyncio.Future[UpstreamResponse] | None = None  # waiting for the response headers
        self._response: UpstreamResponse | None = None
        self._until_close = False  # the body is delimited by the connection closing
        self._got_bytes = False
        self.closed = False
        self.counted = False  # set once connected: its slot in the client's limit is freed on close

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._head is None and self._response is None:
            self.abort()  # bytes nobody asked for: the connection is not trustworthy any more
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._broken(HTTPClientError(HTTPClientError.PROTOCOL, "The upstream's answer is not valid HTTP/1.1."))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the state

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        response = self._response
        if response is not None and not response._done:
            if self._until_close and exc is None:
                response._finish()
            else:
                response._fail(HTTPClientError(HTTPClientError.CUT, "The upstream closed the connection mid-response."))
        head = self._head
        if head is not None and not head.done():
            head.set_exception(
                HTTPClientError(HTTPClientError.NO_ANSWER, "The upstream closed the connection without answering.")
            )
        self._head = None
        self._response = None

    # ---- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")  # answered as a protocol error
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        headers = CIMultiDict(self._headers)
        self._headers = []
        self._header_bytes = 0
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._until_close = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        head = self._head
        if head is None or head.done():
            self.abort()  # an answer nobody waits for (timed out, or never asked)
            return
        response = UpstreamResponse(self, status, headers)
        self._head, self._response = None, response
        head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        response, self._response = self._response, None
        keep = self._parser.should_keep_alive() and not self._until_close
        if response is not None:
            response._finish()
        if keep and not self.closed:
            self._pool.release(self)
        else:
            self.abort()

    # ---- used by the pool and the response

    def send(self, payload: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        head = self._head = running_loop().create_future()
        self._got_bytes = False
        self._until_close = False
        self.transport.write(payload)
        return head

    @property
    def answered(self) -> bool:
        return self._got_bytes

    def _broken(self, error: HTTPClientError) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self._mark_closed()
            if self.transport is not None:
                self.transport.abort()

    def _mark_closed(self) -> None:
        if not self.closed:
            self.closed = True
            if self.counted:
                self._pool.forget(self)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()


class _OriginPool:
    def __init__(self, client: HTTPClient, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self.idle: deque[_Connection] = deque()

    def take_idle(self, now: float, keepalive_s: float) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()  # the most recently used is the likeliest to be alive
            if conn.closed or now - conn.idle_since > keepalive_s:
                conn.abort()
                continue
            return conn
        return None

    def release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conn.reused = True
        self.idle.append(conn)
        self._client._wake_one()

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._client._closed_one()


class HTTPClient:
    """Pools per origin, at most `max_connections` sockets open in all."""

    def __init__(
        self, max_connections: int = 1000, keepalive_s: float = 15.0, ssl_context: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self._proxies = proxies
        self._max = max_connections
        self._keepalive_s = keepalive_s
        self._pools: dict[Origin, _OriginPool] = {}
        self._open = 0  # sockets open or opening, idle ones included
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._ssl = ssl_context  # None: the system's trust store, made on first use

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, connect_s: float, answer_by: float
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers are in (by loop time answer_by)."""
        target = parse_target(url)
        payload = encode_request(method, target, headers, body)
        loop = running_loop()
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _OriginPool(self, target.origin)
        for _ in range(2):
            conn = await self._acquire(pool, connect_s, answer_by)
            head = conn.send(payload)
            timer = loop.call_at(answer_by, expire, head)
            try:
                return await head
            except HTTPClientError as error:
                if error.kind == HTTPClientError.NO_ANSWER and conn.reused and not conn.answered:
                    continue  # the server dropped an idle connection as we wrote: it never read this
                raise
            except BaseException:
                conn.abort()  # timed out or cancelled mid-exchange: the socket's state is unknown
                raise
            finally:
                timer.cancel()
        raise HTTPClientError(HTTPClientError.NO_ANSWER, "The upstream closed the connection without answering.")

    async def _acquire(self, pool: _OriginPool, connect_s: float, answer_by: float) -> _Connection:
        loop = running_loop()
        while True:
            conn = pool.take_idle(time.monotonic(), self._keepalive_s)
            if conn is not None:
                return conn
            if self._open < self._max:
                break
            if self._evict_idle():
                continue
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            timer = loop.call_at(answer_by, expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
        self._open += 1
        try:
            conn = await self._connect(pool, min(connect_s, max(answer_by - loop.time(), 0.0)))
        except BaseException:
            self._closed_one()
            raise
        conn.counted = True  # from here on, its close frees the slot
        if conn.closed:  # closed between connecting and now
            self._closed_one()
            raise HTTPClientError(HTTPClientError.NO_ANSWER, "The upstream closed the connection without answering.")
        return conn

    async def _connect(self, pool: _OriginPool, timeout_s: float) -> _Connection:
        loop = running_loop()
        origin = pool.origin
        tls = None
        if origin.scheme == "https":
            tls = self._ssl = self._ssl or ssl.create_default_context()
        proxy = self._proxies.proxy_for(origin) if self._proxies is not None else None
        try:
            async with asyncio.timeout(timeout_s):
                if proxy is not None:
                    conn = await connect_through(proxy, origin, tls, lambda: _Connection(pool))
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(pool), origin.host, origin.port, ssl=tls,
                        server_hostname=origin.host if tls else None,
                    )
        except TimeoutError:
            raise HTTPClientError(
                HTTPClientError.CONNECT_TIMEOUT, f"Cannot connect to the upstream within {timeout_s:.3g}s."
            ) from None
        except (OSError, ssl.SSLError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or type(exc).__name__
            via = f" through the proxy {proxy.host}:{proxy.port}" if proxy is not None else ""
            raise HTTPClientError(
                HTTPClientError.CONNECT, f"Cannot connect to the upstream: {origin.host}:{origin.port}{via} ({reason})."
            ) from None
        assert isinstance(conn, _Connection)
        return conn

    def _evict_idle(self) -> bool:
        for pool in self._pools.values():
            if pool.idle:
                pool.idle.popleft().abort()
                return True
        return False

    def _closed_one(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().abort()
        self._pools.clear()
