"""SSEDecoder: the fast path for reads of whole one-line `data:` events decodes exactly
what the line-by-line reading did.

The reference below is the decoder as it was before the fast path (one pass per line);
random streams of every shape the decoder meets (LF and CRLF, multi-line data, event
names, comments, blank-line runs, an unterminated last event) are fed to both in random
splits, and must give the same events, the same flush, and the same state after each read.
"""

from __future__ import annotations

import random

import pytest

from gateway.providers.base import SSEDecoder


class LineByLineDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        lines = (self._buffer + chunk if self._buffer else chunk).split(b"\n")
        self._buffer = lines.pop()
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
        return out

    def flush(self) -> list[tuple[str | None, bytes]]:
        if self._buffer.strip():
            self.feed(b"\n")
        if self._data:
            pending = [(self._event, b"\n".join(self._data))]
            self._event, self._data = None, []
            return pending
        return []


_LINES = [
    b'data: {"id":"x","choices":[]}', b"data:{}", b"data: ", b"data:", b"data:  two spaces", b"data: [DONE]",
    b"event: message_start", b"event:ping", b"event:", b": keep-alive", b":", b"id: 7", b"retry: 100",
    b"datum: not data", b"data: a\rb", b" data: leading space", b"\xff\xfe data",
]


def _stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 12)):
        lines = [rng.choice(_LINES) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        end = rng.choice((b"\n", b"\n", b"\r\n")) if rng.random() < 0.9 else b"\r"
        blanks = rng.choice((1, 1, 1, 0, 2, 3))
        parts.append(end.join(lines) + end + end * blanks)
    tail = rng.choice((b"", b"", b"data: unterminated", b"data: x\n", b"event: e\ndata: y", b"\n", b"  "))
    if rng.random() < 0.3:  # what OpenAI-style upstreams send: whole one-line data events
        events = [rng.choice(_LINES[:6]) for _ in range(rng.randint(1, 6))]
        return b"".join(event + b"\n\n" for event in events) + tail
    return b"".join(parts) + tail


def _splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize("seed", range(40))
def test_same_events_as_line_by_line(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        data = _stream(rng)
        new, old = SSEDecoder(), LineByLineDecoder()
        for piece in _splits(data, rng):
            assert new.feed(piece) == old.feed(piece), data
            assert (new._buffer, new._event, new._data) == (old._buffer, old._event, old._data), data
        assert new.flush() == old.flush(), data


@pytest.mark.parametrize(
    "read",
    [
        b'data: {"a":1}\n\ndata: [DONE]\n\n',  # the fast path
        b'data: {"a":1}\n\ndata:[DONE]\n\n',  # no space after the colon
        b"data: a\ndata: b\n\n",  # a multi-line event
        b"data: a\n\n\ndata: b\n\n",  # a blank-line run
        b"data: a\n\nevent: e\ndata: b\n\n",  # a named event
        b"data: a\r\n\r\n",  # CRLF
        b"data: a\rb\n\n",  # a lone CR stays in the payload
        b"data: a\n\n: keep-alive\n\n",  # a comment
        b"data: \n\ndata: x\n\n",  # an empty payload
    ],
)
def test_whole_reads(read: bytes) -> None:
    new, old = SSEDecoder(), LineByLineDecoder()
    assert new.feed(read) == old.feed(read)
    assert (new._buffer, new._event, new._data) == (old._buffer, old._event, old._data)


def test_one_line_events_then_a_partial_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [(None, b'{"a":1}'), (None, b"[DONE]")]
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"tial\n\n") == [(None, b"partial")]
