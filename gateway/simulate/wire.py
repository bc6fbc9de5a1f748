"""What every wire format module provides, and the small types they hand back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

from aiohttp import web

from .faults import FaultSpec
from .shapes import Answer, BadRequest, SimRequest


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    frame: bytes  # the complete SSE frame, blank line included
    content: bool  # a token-bearing chunk: paced, and counted by cut/stall/malformed


class WireAPI(Protocol):
    name: str  # stats key: openai | azure | anthropic | gemini
    malformed_frame: bytes  # what a `malformed` stream fault injects

    def api_key(self, request: web.Request) -> str | None: ...

    def auth_error(self, missing: bool) -> ErrorReply: ...

    def bad_request(self, error: BadRequest) -> ErrorReply: ...

    def parse(self, request: web.Request, body: dict[str, Any]) -> SimRequest:
        """The provider's body as a SimRequest; raises BadRequest naming the field."""
        ...

    def fault_error(self, fault: FaultSpec, request: SimRequest) -> ErrorReply: ...

    def response_headers(self) -> dict[str, str]: ...

    def render(self, request: SimRequest, answer: Answer) -> dict[str, Any]: ...

    def stream(self, request: SimRequest, answer: Answer) -> Iterator[SSEEvent]: ...


def retry_after_headers(fault: FaultSpec) -> dict[str, str]:
    if fault.retry_after is None:
        return {}
    seconds = fault.retry_after
    return {"retry-after": str(int(seconds)) if seconds == int(seconds) else str(seconds)}


def text_of(content: Any, text_key: str = "text") -> str:
    """The text of a string or a list of content parts, e.g. [{"type": "text", "text": ...}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part[text_key]
            for part in content
            if isinstance(part, dict) and isinstance(part.get(text_key), str)
        ]
        return " ".join(texts)
    return ""


def positive_int(body: Mapping[str, Any], key: str, upper: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{key} must be a positive integer", key)
    if upper is not None and value > upper:
        raise BadRequest(f"{key} must be at most {upper}", key)
    return value


def string_list(value: Any, key: str, limit: int) -> tuple[str, ...]:
    """A stop-sequence style field: a string or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > limit:
            raise BadRequest(f"{key} takes at most {limit} sequences", key)
        return tuple(value)
    raise BadRequest(f"{key} must be a string or a list of strings", key)
