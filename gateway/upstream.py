"""One upstream HTTP exchange with the gateway's timeouts, failures normalized.

This is the only module that touches upstream sockets. It knows nothing of plans or
retries: it sends one request and hands back either a JSON body or an open stream, and
turns every transport failure into an `UpstreamError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp

from .providers.base import UpstreamRequest
from .providers.errors import ErrorKind, UpstreamError


@dataclass(frozen=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float


class UpstreamClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def open(self, request: UpstreamRequest, timeouts: Timeouts, budget_s: float) -> aiohttp.ClientResponse:
        """Send the request and wait for the response headers (connect + first byte)."""
        if budget_s <= 0:
            raise UpstreamError(ErrorKind.TIMEOUT, "The request deadline passed before the attempt could start.")
        wait = min(timeouts.connect_s + timeouts.first_byte_s, budget_s)
        try:
            async with asyncio.timeout(wait):
                return await self._session.request(
                    request.method,
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=aiohttp.ClientTimeout(total=None, connect=min(timeouts.connect_s, budget_s)),
                    allow_redirects=False,
                )
        except TimeoutError:
            raise UpstreamError(
                ErrorKind.TIMEOUT, f"The upstream did not answer within {wait:.3g}s."
            ) from None
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from None

    async def read_body(self, response: aiohttp.ClientResponse, budget_s: float, idle_s: float | None = None) -> bytes:
        """The whole body within the budget; a silence longer than idle_s is a timeout too.

        Without the idle limit, a body that stalls after the headers would hold the
        attempt until the request's deadline, leaving no time to fail over.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(budget_s, 0.001)
        parts: list[bytes] = []
        try:
            while True:
                wait = deadline - loop.time()
                if idle_s is not None:
                    wait = min(wait, idle_s)
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    chunk = await response.content.readany()
                if not chunk:
                    break
                parts.append(chunk)
        except TimeoutError:
            response.close()
            raise UpstreamError(ErrorKind.TIMEOUT, "The upstream's response body did not arrive in time.") from None
        except aiohttp.ClientError as exc:
            response.close()
            raise _connection_error(exc) from None
        response.release()  # the body is complete: the connection goes back to the pool
        return b"".join(parts)

    async def iter_chunks(
        self, response: aiohttp.ClientResponse, idle_s: float, deadline: float
    ) -> AsyncIterator[bytes]:
        """Raw body chunks as they arrive; a silence longer than idle_s is a timeout."""
        loop = asyncio.get_running_loop()
        content = response.content
        try:
            while True:
                remaining = deadline - loop.time()
                wait = min(idle_s, remaining)
                if wait <= 0:
                    raise UpstreamError(ErrorKind.TIMEOUT, "The request deadline passed during the stream.")
                try:
                    async with asyncio.timeout(wait):
                        chunk = await content.readany()
                except TimeoutError:
                    raise UpstreamError(
                        ErrorKind.TIMEOUT, f"The upstream stream stalled for more than {wait:.3g}s."
                    ) from None
                if not chunk:
                    return
                yield chunk
        except aiohttp.ClientError as exc:
            raise _connection_error(exc) from None
        finally:
            response.close()


def _connection_error(exc: aiohttp.ClientError) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The message names host and port, never the path or any header.
        return UpstreamError(ErrorKind.CONNECTION, f"Cannot connect to the upstream: {exc.os_error}.")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(ErrorKind.CONNECTION, "The upstream closed the connection mid-response.")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(ErrorKind.CONNECTION, "The upstream closed the connection without answering.")
    return UpstreamError(ErrorKind.CONNECTION, f"Upstream connection failed: {type(exc).__name__}.")
