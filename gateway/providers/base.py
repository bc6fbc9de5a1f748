"""The internal contract every provider adapter implements.

The unified request is an OpenAI chat-completions body (a plain dict). An adapter turns
it into the provider's HTTP request, and turns the provider's answer (a JSON body or a
stream of SSE events) back into OpenAI `chat.completion` / `chat.completion.chunk`
dicts. Failures come out as `UpstreamError` of the shared taxonomy. Adapters do no I/O:
the forward loop owns the sockets, timeouts and retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any, Mapping, Protocol

from .errors import UpstreamError


@dataclass(frozen=True)
class Deployment:
    """One model at one provider endpoint, as the forward loop calls it."""

    model: str  # catalog model id, what the client sees in `model` and x-gateway-model
    provider: str  # catalog provider id, e.g. "openai", "anthropic", "local-vllm"
    api: str  # wire API: "openai" | "anthropic" | "gemini"
    base_url: str  # e.g. "https://api.openai.com/v1" (no trailing slash)
    upstream_model: str  # the name the provider knows the model by
    api_key: str | None = field(default=None, repr=False)  # never logged, never echoed
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query: Mapping[str, str] = field(default_factory=dict)  # e.g. Azure's api-version
    context_window: int = 0  # tokens; lets a context_length failure skip models no larger

    @cached_property  # read several times per request (breakers, metrics, the log)
    def key(self) -> str:
        """Identity for breakers and metrics."""
        return f"{self.provider}/{self.model}"


@dataclass
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class StreamTranslator(Protocol):
    """Turns one upstream stream into OpenAI chunk dicts, event by event.

    `feed` gets the `data:` payload of one SSE event (bytes, without the prefix) and the
    event name if the upstream sent one; it returns zero or more OpenAI
    `chat.completion.chunk` dicts. It raises `UpstreamError` (kind malformed_response,
    or the kind of an in-stream error event) when the stream is broken. `done` turns
    true once the upstream signalled the normal end of the answer; a stream that
    closes before that was cut.
    """

    done: bool

    def feed(self, data: bytes, event: str | None = None) -> list[dict[str, Any]]: ...


class ProviderAdapter(Protocol):
    api: str

    def build_request(
        self, body: Mapping[str, Any], deployment: Deployment, *, stream: bool
    ) -> UpstreamRequest: ...

    def parse_response(self, data: bytes, deployment: Deployment) -> dict[str, Any]:
        """A 2xx body -> an OpenAI `chat.completion` dict; UpstreamError if malformed."""
        ...

    def stream_translator(
        self, deployment: Deployment, body: Mapping[str, Any]
    ) -> StreamTranslator: ...

    def map_error(
        self, status: int, headers: Mapping[str, str], data: bytes
    ) -> UpstreamError:
        """A non-2xx response -> the normalized error."""
        ...


class SSEDecoder:
    """Incremental SSE parser: bytes in, (event, data) pairs out.

    Handles events split across network reads and both LF and CRLF line ends.
    Comment lines (": keep-alive") are skipped. Multiple `data:` lines of one event are
    joined with a newline, as the SSE spec says.
    """

    __slots__ = ("_buffer", "_event", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        text = self._buffer + chunk if self._buffer else chunk
        if text.startswith(b"data: ") and text.endswith(b"\n\n") and not self._data and self._event is None:
            events = _data_events(text)
            if events is not None:
                self._buffer = b""
                return events
        # One split per read, not a slice per line: a read can carry many events.
        lines = text.split(b"\n")
        self._buffer = lines.pop()  # the unfinished last line, if any
        out: list[tuple[str | None, bytes]] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append((self._event, b"\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # other fields (id:, retry:) and comments carry nothing we use
        return out

    def flush(self) -> list[tuple[str | None, bytes]]:
        """Whatever complete event is pending when the stream closes without a blank line."""
        if self._buffer.strip():
            self.feed(b"\n")
        if self._data:
            pending = [(self._event, b"\n".join(self._data))]
            self._event, self._data = None, []
            return pending
        return []


def _data_events(text: bytes) -> list[tuple[str | None, bytes]] | None:
    """The events of a read made only of whole one-line `data: ...` events (what OpenAI-style
    upstreams send), or None if it holds anything else.

    Python-level work per line costs more than the C-level passes over the whole read:
    one split at the event boundaries, then one check that no payload holds a line break
    (which would make it several lines: another field, or a multi-line event).
    """
    if b"\r" in text:
        return None
    payloads = text[6:-2].split(b"\n\ndata: ")
    if b"\n" in b"".join(payloads):
        return None
    return list(zip(repeat(None), payloads))
