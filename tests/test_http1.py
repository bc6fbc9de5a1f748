"""The lean upstream HTTP/1.1 client against raw servers on loopback.

Each server is a plain asyncio server whose replies are written byte by byte here, so the
framing under test (content-length, chunked, read-until-close, gzip, keep-alive, bad
bytes) is exactly what the test says it is.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.http1 import (
    HTTPClient,
    HTTPClientError,
    UpstreamResponse,
    encode_request,
    parse_target,
)

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Reads one request head + content-length body at a time and lets `reply` answer it."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.reply(head + body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(reply: Reply, ssl_context: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(reply)
        await server.start(ssl_context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def answer(body: bytes, status: int = 200, extra: bytes = b"") -> Reply:
    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                     % (status, len(body), extra, body))
        await writer.drain()
    return reply


async def fetch(client: HTTPClient, port: int, *, body: bytes = b"{}", wait: float = 2.0,
                idle: float | None = None) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    response = await client.request("POST", f"http://127.0.0.1:{port}/v1/x?y=1", {"authorization": "Bearer k"},
                                     body, connect_s=1.0, answer_by=loop.time() + wait)
    return response.status, await response.read(loop.time() + wait, idle)


async def open_response(client: HTTPClient, port: int) -> UpstreamResponse:
    """An empty POST to / whose status and headers are in; the body is the test's to read."""
    loop = asyncio.get_running_loop()
    return await client.request("POST", f"http://127.0.0.1:{port}/", {}, b"", connect_s=1, answer_by=loop.time() + 2)


def test_request_bytes_are_one_http11_message() -> None:
    target = parse_target("https://api.example.com/v1/chat/completions?x=1")
    raw = encode_request("POST", target, {"authorization": "Bearer k"}, b'{"a":1}')
    assert raw == (b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: api.example.com\r\nauthorization: Bearer k\r\n"
                   b"content-length: 7\r\naccept-encoding: identity\r\n\r\n{\"a\":1}")
    assert parse_target("http://[::1]:8080/").host_header == b"[::1]:8080"
    with pytest.raises(ValueError, match="line break"):
        encode_request("POST", target, {"x-evil": "a\r\nhost: b"}, b"")
    with pytest.raises(ValueError):
        parse_target("ftp://example.com/")


async def test_keep_alive_reuses_one_connection(serve) -> None:
    server = await serve(answer(b'{"ok":true}', extra=b"x-request-id: r1\r\n"))
    client = HTTPClient()
    for _ in range(5):
        assert await fetch(client, server.port) == (200, b'{"ok":true}')
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: Bearer k\r\n" in server.requests[0]
    await client.close()


async def test_headers_are_case_insensitive_and_status_passes_through(serve) -> None:
    server = await serve(answer(b'{"error":{}}', status=429, extra=b"Retry-After: 7\r\n"))
    client = HTTPClient()
    response = await open_response(client, server.port)
    assert response.status == 429
    assert response.headers["retry-after"] == "7"
    assert await response.read(asyncio.get_running_loop().time() + 2, None) == b'{"error":{}}'
    await client.close()


async def test_chunked_and_gzip_bodies_are_decoded(serve) -> None:
    packed = gzip.compress(b"data: hello\n\n" * 50)

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n")
        for start in range(0, len(packed), 7):
            piece = packed[start:start + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    assert await fetch(client, server.port) == (200, b"data: hello\n\n" * 50)
    assert await fetch(client, server.port) == (200, b"data: hello\n\n" * 50)
    assert server.connections == 1  # a chunked body ends the message: the connection is reusable
    await client.close()


async def test_a_body_that_inflates_past_the_ceiling_is_refused(serve) -> None:
    bomb = gzip.compress(bytes(65 * 1024 * 1024), compresslevel=9)  # 65 MiB of zeros in ~64 KiB

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(bomb), bomb))
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, server.port)
    assert error.value.kind == HTTPClientError.PROTOCOL  # whichever read hits the ceiling first
    assert "inflates past" in str(error.value) or "larger than" in str(error.value)
    await client.close()


async def test_body_delimited_by_close_ends_at_eof(serve) -> None:
    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        writer.close()

    server = await serve(reply)
    client = HTTPClient()
    assert await fetch(client, server.port) == (200, b"part one, part two")
    assert await fetch(client, server.port) == (200, b"part one, part two")
    assert server.connections == 2  # such a connection cannot be reused
    await client.close()


async def test_streamed_pieces_arrive_as_they_are_sent(serve) -> None:
    release = asyncio.Event()

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    response = await open_response(client, server.port)
    assert await response.next_chunk(2.0) == b"first"
    with pytest.raises(TimeoutError):
        await response.next_chunk(0.05)  # silence is a timeout, and the stream survives it
    release.set()
    assert await response.next_chunk(2.0) == b"second"
    assert await response.next_chunk(2.0) == b""
    assert response.complete
    await client.close()


async def test_a_stale_idle_connection_is_replaced_without_failing_the_request(serve) -> None:
    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    assert await fetch(client, server.port) == (200, b"ok")
    for writer in server.writers:
        writer.transport.abort()  # the server drops the idle keep-alive connection
    await asyncio.sleep(0.05)
    assert await fetch(client, server.port) == (200, b"ok")
    assert server.connections == 2
    await client.close()


async def test_a_reused_connection_closed_before_any_answer_is_retried_once_on_a_fresh_one(serve) -> None:
    served: dict[int, int] = {}

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        served[id(writer)] = served.get(id(writer), 0) + 1
        if served[id(writer)] > 1:  # the keep-alive race: the server closes as the request arrives
            writer.transport.abort()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    assert await fetch(client, server.port) == (200, b"ok")
    assert await fetch(client, server.port) == (200, b"ok")
    assert server.connections == 2 and len(server.requests) == 3
    await client.close()


async def test_close_mid_body_and_close_before_answer_are_errors(serve) -> None:
    async def cut(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a little")
        await writer.drain()
        writer.transport.abort()

    async def silent(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    client = HTTPClient()
    cut_server = await serve(cut)
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, cut_server.port)
    assert error.value.kind == HTTPClientError.CUT
    silent_server = await serve(silent)
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, silent_server.port)
    assert error.value.kind == HTTPClientError.NO_ANSWER
    assert silent_server.connections == 1  # a fresh connection is not retried: the server may have read it
    await client.close()


async def test_garbage_is_a_protocol_error_and_refused_is_a_connect_error(serve) -> None:
    async def garbage(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    client = HTTPClient()
    server = await serve(garbage)
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, server.port)
    assert error.value.kind == HTTPClientError.PROTOCOL
    port = server.port
    await server.close()
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, port)
    assert error.value.kind == HTTPClientError.CONNECT
    assert f"127.0.0.1:{port}" in str(error.value)
    await client.close()


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped(serve) -> None:
    async def slow(_: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(slow)
    client = HTTPClient()
    with pytest.raises(TimeoutError):
        await fetch(client, server.port, wait=0.05)
    assert await fetch(client, server.port) == (200, b"ok")
    assert server.connections == 2  # the timed-out socket was not put back in the pool
    await client.close()


async def test_connection_limit_queues_requests_until_a_slot_frees(serve) -> None:
    in_flight = 0
    most = 0

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(reply)
    client = HTTPClient(max_connections=2)
    results = await asyncio.gather(*(fetch(client, server.port) for _ in range(10)))
    assert results == [(200, b"ok")] * 10
    assert most == 2 and server.connections == 2
    await client.close()


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(serve) -> None:
    piece = b"x" * 65536

    async def reply(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(piece) * 40))
        for _ in range(40):
            writer.write(piece)
            await writer.drain()

    server = await serve(reply)
    client = HTTPClient()
    response = await open_response(client, server.port)
    await asyncio.sleep(0.2)  # let the server run ahead of us
    assert response._buffered <= 2 * 256 * 1024 + len(piece)  # reading paused near the high-water mark
    received = 0
    while chunk := await response.next_chunk(2.0):
        received += len(chunk)
    assert received == len(piece) * 40
    await client.close()


async def test_a_large_body_read_whole_is_not_paused(serve) -> None:
    body = b"y" * (3 * 1024 * 1024)  # far past the streaming high-water mark
    server = await serve(answer(body))
    client = HTTPClient()
    assert await fetch(client, server.port) == (200, body)
    await client.close()


async def test_oversized_headers_are_a_protocol_error(serve) -> None:
    server = await serve(answer(b"{}", extra=b"".join(b"x-filler-%d: %s\r\n" % (i, b"z" * 1000) for i in range(80))))
    client = HTTPClient()
    with pytest.raises(HTTPClientError) as error:
        await fetch(client, server.port)
    assert error.value.kind == HTTPClientError.PROTOCOL
    await client.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_with_sni_and_verification(serve, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await serve(answer(b"secure"), server_context)
    loop = asyncio.get_running_loop()

    untrusting = HTTPClient()
    with pytest.raises(HTTPClientError) as error:
        await untrusting.request("POST", f"https://localhost:{server.port}/", {}, b"", connect_s=1,
                                 answer_by=loop.time() + 2)
    assert error.value.kind == HTTPClientError.CONNECT  # a self-signed certificate is not trusted by default

    trusting = HTTPClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
    response = await trusting.request("POST", f"https://localhost:{server.port}/", {}, b"", connect_s=1,
                                      answer_by=loop.time() + 2)
    assert await response.read(loop.time() + 2, None) == b"secure"
    await untrusting.close()
    await trusting.close()
