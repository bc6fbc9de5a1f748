"""One upstream HTTP exchange with the gateway's timeouts, failures normalized.

This is the only module that touches upstream sockets. It knows nothing of plans or
retries: it sends one request and hands back either a JSON body or an open stream, and
turns every transport failure into an `UpstreamError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .http1 import HTTPClient, HTTPClientError, UpstreamResponse
from .loop import running_loop
from .providers.base import UpstreamRequest
from .providers.errors import ErrorKind, UpstreamError


@dataclass(frozen=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float


class UpstreamClient:
    def __init__(self, http: HTTPClient) -> None:
        self._http = http

    async def open(self, request: UpstreamRequest, timeouts: Timeouts, budget_s: float) -> UpstreamResponse:
        """Send the request and wait for the response headers (connect + first byte)."""
        if budget_s <= 0:
            raise UpstreamError(ErrorKind.TIMEOUT, "The request deadline passed before the attempt could start.")
        wait = min(timeouts.connect_s + timeouts.first_byte_s, budget_s)
        answer_by = running_loop().time() + wait
        try:
            return await self._http.request(
                request.method, request.url, request.headers, request.body,
                connect_s=min(timeouts.connect_s, budget_s), answer_by=answer_by,
            )
        except TimeoutError:
            raise UpstreamError(ErrorKind.TIMEOUT, f"The upstream did not answer within {wait:.3g}s.") from None
        except HTTPClientError as exc:
            raise _transport_error(exc) from None

    async def read_body(self, response: UpstreamResponse, budget_s: float, idle_s: float | None = None) -> bytes:
        """The whole body within the budget; a silence longer than idle_s is a timeout too.

        Without the idle limit, a body that stalls after the headers would hold the
        attempt until the request's deadline, leaving no time to fail over.
        """
        deadline = running_loop().time() + max(budget_s, 0.001)
        try:
            return await response.read(deadline, idle_s)
        except TimeoutError:
            response.close()
            raise UpstreamError(ErrorKind.TIMEOUT, "The upstream's response body did not arrive in time.") from None
        except HTTPClientError as exc:
            raise _transport_error(exc) from None

    async def iter_chunks(self, response: UpstreamResponse, idle_s: float, deadline: float) -> AsyncIterator[bytes]:
        """Raw body chunks as they arrive; a silence longer than idle_s is a timeout."""
        loop = running_loop()
        try:
            while True:
                remaining = deadline - loop.time()
                wait = min(idle_s, remaining)
                if wait <= 0:
                    raise UpstreamError(ErrorKind.TIMEOUT, "The request deadline passed during the stream.")
                try:
                    chunk = await response.next_chunk(wait)
                except TimeoutError:
                    raise UpstreamError(
                        ErrorKind.TIMEOUT, f"The upstream stream stalled for more than {wait:.3g}s."
                    ) from None
                if not chunk:
                    return
                yield chunk
        except HTTPClientError as exc:
            raise _transport_error(exc) from None
        finally:
            response.close()


def _transport_error(exc: HTTPClientError) -> UpstreamError:
    """A failure of the socket or the HTTP framing. The messages name host and port at most,
    never a path or a header."""
    kind = ErrorKind.TIMEOUT if exc.kind == HTTPClientError.CONNECT_TIMEOUT else ErrorKind.CONNECTION
    return UpstreamError(kind, str(exc))
