"""The answer side of the HTTP/1.1 client: a response whose body arrives behind it.

`UpstreamResponse` is fed by its connection (`gateway/http1.py`) as bytes come off the
socket, and read by the caller either whole (`read`) or piece by piece (`next_chunk`).
Every wait is a future with one timer handle. A streamed body is buffered up to a
high-water mark, then the connection pauses reading until the caller catches up.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Protocol

from multidict import CIMultiDict

from .loop import running_loop

_HIGH_WATER = 256 * 1024  # buffered body bytes before reading pauses (streams)
MAX_BODY_BYTES = 64 * 1024 * 1024  # a whole body read at once beyond this is refused


class HTTPClientError(Exception):
    """A transport failure; `kind` says which, for the caller's error taxonomy."""

    CONNECT = "connect"  # could not connect (refused, DNS, TLS)
    CONNECT_TIMEOUT = "connect_timeout"  # no connection within the connect timeout
    NO_ANSWER = "no_answer"  # the connection closed before the response headers
    CUT = "cut"  # the connection closed mid-body
    PROTOCOL = "protocol"  # the bytes were not valid HTTP/1.1

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Flow(Protocol):
    """What a response needs of the connection feeding it."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None: ...


class UpstreamResponse:
    """Status and headers of an answer whose body arrives (or has arrived) behind them."""

    __slots__ = (
        "_buffered", "_chunks", "_collecting", "_conn", "_done", "_error", "_inflate", "_waiter", "headers", "status",
    )

    def __init__(self, conn: Flow, status: int, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.headers = headers
        self._conn: Flow | None = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: HTTPClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._collecting = False  # set by read(): the whole body is wanted, so reading never pauses
        encoding = headers.get("content-encoding", "").lower()
        self._inflate = None
        if encoding in ("gzip", "deflate"):
            self._inflate = zlib.decompressobj(47 if encoding == "gzip" else 15)  # 47: gzip header; 15: zlib

    # ---- fed by the connection

    def _feed(self, data: bytes) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data, MAX_BODY_BYTES)  # bounded: a small body may inflate hugely
            except zlib.error:
                self._fail(HTTPClientError(HTTPClientError.PROTOCOL, "The upstream sent a body that does not inflate."))
                return
            if self._inflate.unconsumed_tail:
                self._fail(HTTPClientError(
                    HTTPClientError.PROTOCOL, f"The upstream's body inflates past {MAX_BODY_BYTES} bytes."))
                return
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None:
            if self._collecting:  # read() wants it all: no pause, but a ceiling
                if self._buffered > MAX_BODY_BYTES:
                    self._fail(HTTPClientError(
                        HTTPClientError.PROTOCOL, f"The upstream's answer is larger than {MAX_BODY_BYTES} bytes."))
                    return
            else:
                self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: HTTPClientError) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- read by the caller

    @property
    def complete(self) -> bool:
        return self._done and self._error is None

    async def _arrival(self, loop: asyncio.AbstractEventLoop, wait_s: float) -> None:
        """Until more of the body (or its end) arrives; TimeoutError after wait_s."""
        if wait_s <= 0:
            raise TimeoutError
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(wait_s, expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def next_chunk(self, wait_s: float) -> bytes:
        """The next piece of the body; b"" at its end. TimeoutError after wait_s of silence."""
        if not self._chunks and not self._done:
            await self._arrival(running_loop(), wait_s)
        if self._chunks:
            # Everything that has arrived, as one piece: fewer trips through the caller's loop.
            chunks = self._chunks
            chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            if self._conn is not None:
                self._conn.resume()
            return chunk
        if self._error is not None:
            raise self._error
        return b""

    async def read(self, deadline: float, idle_s: float | None) -> bytes:
        """The whole body by the loop-time deadline, with at most idle_s between pieces."""
        if not self._done:
            self._collecting = True
            if self._conn is not None:
                self._conn.resume()
            loop = running_loop()
            while not self._done:
                wait = deadline - loop.time()
                if idle_s is not None and idle_s < wait:
                    wait = idle_s
                await self._arrival(loop, wait)
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    def close(self) -> None:
        """Give up on the rest of the body: the connection cannot be reused, so it closes."""
        if not self._done:
            self._fail(HTTPClientError(HTTPClientError.CUT, "closed by the gateway"))
        self._chunks.clear()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def expire(waiter: asyncio.Future[None]) -> None:
    """Timer callback: the wait is over."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())
