"""Upstream egress through an HTTP proxy: CONNECT tunnels (TLS end to end for https),
Proxy-Authorization from the URL's credentials, NO_PROXY and loopback bypass, and a
gateway whose provider sits behind the proxy. The proxy is a real one on loopback; the
upstream's name (`upstream.test`) resolves only inside it, so nothing can go around it."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.http1 import HTTPClient, HTTPClientError
from gateway.http1_proxy import Proxies, Proxy, parse_proxy
from gateway.simulate import SimulatorConfig
from gateway.simulate import create_app as create_simulator
from tests.servers import UPSTREAM_KEY, Running, start_gateway

NAME = "upstream.test"
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


class ConnectProxy:
    """CONNECT only: tunnels `NAME:port` to 127.0.0.1:port, and records what it saw."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.connects: list[str] = []
        self.relayed = bytearray()  # every byte it carried from the client to the upstream
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method, authority, _ = head.split("\r\n", 1)[0].split(" ")
        self.connects.append(authority)
        if self.credentials is not None:
            expected = "proxy-authorization: basic " + base64.b64encode(self.credentials.encode()).decode().lower()
            if expected not in head.lower():
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
        host, port = authority.rsplit(":", 1)
        if method != "CONNECT" or host != NAME:
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await source.read(65536):
                    if record:
                        self.relayed += data
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        except asyncio.CancelledError:  # the proxy stopping under an open tunnel
            up_writer.close()
            writer.close()


@pytest.fixture
async def proxy():  # type: ignore[no-untyped-def]
    running = ConnectProxy()
    running.port = await running.start()  # type: ignore[attr-defined]
    yield running
    await running.stop()


def tls_pair(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for NAME: the server's context and a client's that trusts only it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def simulator(tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(create_simulator(SimulatorConfig()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    return runner, runner.addresses[0][1]


async def post(client: HTTPClient, url: str) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    headers = {"content-type": "application/json", "authorization": f"Bearer {UPSTREAM_KEY}"}
    response = await client.request("POST", url, headers, BODY, connect_s=5, answer_by=loop.time() + 10)
    return response.status, await response.read(loop.time() + 10, 10.0)


async def test_https_goes_through_a_tunnel_the_proxy_cannot_read(proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server_tls, client_tls = tls_pair(tmp_path)
    runner, port = await simulator(server_tls)
    client = HTTPClient(ssl_context=client_tls, proxies=Proxies({"https": Proxy("127.0.0.1", proxy.port)}))
    try:
        for _ in range(2):  # the second request reuses the tunnelled connection
            status, body = await post(client, f"https://{NAME}:{port}/v1/chat/completions")
            assert status == 200 and b'"chat.completion"' in body
        assert proxy.connects == [f"{NAME}:{port}"]
        assert proxy.relayed and UPSTREAM_KEY.encode() not in proxy.relayed and b"gpt-4o-mini" not in proxy.relayed
    finally:
        await client.close()
        await runner.cleanup()


async def test_plain_http_is_tunnelled_too(proxy) -> None:  # type: ignore[no-untyped-def]
    runner, port = await simulator()
    client = HTTPClient(proxies=Proxies({"http": Proxy("127.0.0.1", proxy.port)}))
    try:
        status, _ = await post(client, f"http://{NAME}:{port}/v1/chat/completions")
        assert status == 200 and proxy.connects == [f"{NAME}:{port}"]
    finally:
        await client.close()
        await runner.cleanup()


async def test_proxy_credentials_go_in_the_header_and_never_in_an_error() -> None:
    guarded = ConnectProxy(credentials="alice:s3cret word")
    proxy_port = await guarded.start()
    runner, port = await simulator()
    try:
        right = parse_proxy(f"http://alice:s3cret%20word@127.0.0.1:{proxy_port}", "HTTP_PROXY")
        assert "s3cret" not in repr(right)
        client = HTTPClient(proxies=Proxies({"http": right}))
        assert (await post(client, f"http://{NAME}:{port}/v1/chat/completions"))[0] == 200
        await client.close()
        wrong = HTTPClient(proxies=Proxies({"http": parse_proxy(f"http://alice:nope@127.0.0.1:{proxy_port}", "x")}))
        with pytest.raises(HTTPClientError) as refused:
            await post(wrong, f"http://{NAME}:{port}/v1/chat/completions")
        await wrong.close()
        assert refused.value.kind == HTTPClientError.CONNECT
        assert "HTTP 407" in str(refused.value) and "nope" not in str(refused.value)
    finally:
        await guarded.stop()
        await runner.cleanup()


def test_which_upstreams_go_through_the_proxy() -> None:
    env = {"HTTPS_PROXY": "http://corp-proxy:3128", "https_proxy": "proxy.internal:8080", "NO_PROXY": "internal.example,.svc"}
    proxies = Proxies.from_env(env)
    assert proxies is not None and proxies.by_scheme["https"] == Proxy("proxy.internal", 8080)  # lower case first
    assert "http" not in proxies.by_scheme  # an http upstream goes direct: only HTTPS_PROXY is set

    def via(scheme: str, host: str) -> Proxy | None:
        return proxies.proxy_for(type("O", (), {"scheme": scheme, "host": host, "port": 443})())

    assert via("https", "api.openai.com") == Proxy("proxy.internal", 8080)
    assert via("https", "internal.example") is None and via("https", "vllm.models.svc") is None
    assert via("https", "127.0.0.1") is None and via("https", "::1") is None and via("https", "localhost") is None
    assert via("http", "api.openai.com") is None
    assert Proxies.from_env({}) is None
    everything = Proxies.from_env({"HTTP_PROXY": "http://p:1", "NO_PROXY": "*"})
    assert everything is not None and everything.proxy_for(type("O", (), {"scheme": "http", "host": "x.org", "port": 80})()) is None


@pytest.mark.parametrize("url", ["https://p:3128", "socks5://p:1080", "http://p:notaport", "http://"])
def test_a_proxy_url_it_cannot_use_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="HTTPS_PROXY"):
        Proxies.from_env({"HTTPS_PROXY": url})


async def test_a_gateway_reaches_its_provider_through_the_proxy(sim: Running, proxy, auth: dict) -> None:  # type: ignore[no-untyped-def]
    gw = await start_gateway(sim.url, HTTP_PROXY=f"http://127.0.0.1:{proxy.port}",
                             OPENAI_BASE_URL=f"http://{NAME}:{sim.port}/v1")
    try:
        async with aiohttp.ClientSession() as session:
            request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=request, headers=auth) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-gateway-provider"] == "openai"
    finally:
        await gw.stop()
    assert proxy.connects == [f"{NAME}:{sim.port}"]
