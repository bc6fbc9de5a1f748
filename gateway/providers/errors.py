"""The one error taxonomy every provider adapter maps its failures into.

The forward loop decides retries and failover from `ErrorKind` alone, never from a
provider's raw status, so a provider quirk stays inside its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorKind(str, Enum):
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    SERVER_ERROR = "server_error"
    MALFORMED_RESPONSE = "malformed_response"


# Worth another try on the same deployment (after backoff).
RETRYABLE = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.MALFORMED_RESPONSE,
    }
)

# Worth trying the next candidate of the plan. A plain bad_request is the client's
# fault: another model would reject it too, so it goes straight back to the client.
FAILOVER = RETRYABLE | {
    ErrorKind.CONTEXT_LENGTH,
    ErrorKind.CONTENT_FILTER,
    ErrorKind.AUTH,
    ErrorKind.NOT_FOUND,
}

# The status the gateway answers with when this kind is the final outcome.
CLIENT_STATUS = {
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.CONTEXT_LENGTH: 400,
    ErrorKind.CONTENT_FILTER: 400,
    ErrorKind.AUTH: 502,  # the gateway's upstream key is wrong, not the client's
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.SERVER_ERROR: 502,
    ErrorKind.MALFORMED_RESPONSE: 502,
}


@dataclass
class UpstreamError(Exception):
    """A failure of one upstream attempt, already normalized."""

    kind: ErrorKind
    message: str
    status: int | None = None  # the upstream's HTTP status, if there was a response
    retry_after: float | None = None  # seconds, from retry-after or the provider's body
    provider_code: str | None = None  # e.g. "overloaded_error", "RESOURCE_EXHAUSTED"

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def failover(self) -> bool:
        return self.kind in FAILOVER

    @property
    def client_status(self) -> int:
        """Upstream statuses pass through (a drop-in client expects them), except that an
        upstream auth failure is the gateway's problem (502, not the client's 401) and
        Anthropic's non-standard 529 becomes 503."""
        if self.kind is ErrorKind.AUTH:
            return 502
        if self.status == 529:
            return 503
        if self.status is not None and 400 <= self.status <= 599:
            return self.status
        return CLIENT_STATUS[self.kind]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `retry-after` or `retry-after-ms` style value; None if absent or junk."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def kind_from_status(status: int) -> ErrorKind:
    """The generic HTTP mapping; adapters refine it from the body first."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if status == 413:
        return ErrorKind.CONTEXT_LENGTH
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.SERVER_ERROR
