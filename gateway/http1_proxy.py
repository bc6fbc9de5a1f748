"""Egress through an HTTP proxy for the upstream client: `HTTPS_PROXY`, `HTTP_PROXY` and
`NO_PROXY`, as curl, httpx and the official SDKs read them.

A connection to an upstream through a proxy is a tunnel: `CONNECT host:port` to the proxy,
then TLS with the upstream itself (for https) over it, so the proxy sees neither the keys
nor the prompts. Plain-http upstreams are tunnelled the same way (the proxy must allow
CONNECT to their port). Loopback upstreams never go through a proxy (as Go's clients do):
a gateway beside its model server must not send that traffic out. `NO_PROXY` is matched as
the standard library matches it (host suffixes, `*` for everything). Only `http://`
proxies are supported; credentials in the proxy URL go out as Proxy-Authorization and
appear in no error or log.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment

from .http1_response import HTTPClientError

MAX_REPLY_BYTES = 16 * 1024


class Endpoint(Protocol):
    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic ...", from the URL's credentials


@dataclass(frozen=True)
class Proxies:
    by_scheme: Mapping[str, Proxy]  # "http" / "https" -> the proxy for upstreams of that scheme
    no_proxy: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Proxies | None:
        """The proxies the environment names (lower-case names first, as curl reads them);
        None when there are none. Raises ValueError for a proxy URL it cannot use."""
        by_scheme = {}
        for scheme in ("http", "https"):
            url = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
            if url:
                by_scheme[scheme] = parse_proxy(url, f"{scheme.upper()}_PROXY")
        if not by_scheme:
            return None
        return cls(by_scheme, env.get("no_proxy") or env.get("NO_PROXY") or "")

    def proxy_for(self, origin: Endpoint) -> Proxy | None:
        proxy = self.by_scheme.get(origin.scheme)
        if proxy is None or _is_loopback(origin.host):
            return None
        if self.no_proxy and proxy_bypass_environment(origin.host, {"no": self.no_proxy}):
            return None
        return proxy


def parse_proxy(url: str, name: str) -> Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{name}: expected an http:// proxy URL with a host, got scheme {parts.scheme!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{name}: the proxy's port is not a number") from None
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_request(origin: Endpoint, authorization: str | None) -> bytes:
    shown = f"[{origin.host}]" if ":" in origin.host else origin.host
    authority = f"{shown}:{origin.port}".encode("idna")
    lines = [b"CONNECT " + authority + b" HTTP/1.1", b"host: " + authority]
    if authorization:
        lines.append(b"proxy-authorization: " + authorization.encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Handshake(asyncio.Protocol):
    """Reads the proxy's reply to CONNECT, up to the blank line after its headers."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_REPLY_BYTES:
                self.reply.set_exception(_refused("answered CONNECT with an oversized reply"))
            return
        if end + 4 != len(self._buffer):  # the upstream may not speak before we do
            self.reply.set_exception(_refused("sent bytes after its reply to CONNECT"))
            return
        status_line = self._buffer.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            self.reply.set_exception(_refused("answered CONNECT with something that is not HTTP"))
            return
        self.reply.set_result(int(status_line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(_refused("closed the connection before answering CONNECT"))


def _refused(what: str) -> HTTPClientError:
    return HTTPClientError(HTTPClientError.CONNECT, f"The proxy {what}.")


async def connect_through(proxy: Proxy, origin: Endpoint, tls: ssl.SSLContext | None,
                          make_protocol: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
    """A connection to `origin` tunnelled through `proxy`, speaking to `make_protocol()`'s
    protocol (TLS with the origin when `tls` is given). The caller bounds it in time."""
    loop = asyncio.get_running_loop()
    handshake = _Handshake()
    transport, _ = await loop.create_connection(lambda: handshake, proxy.host, proxy.port)
    try:
        transport.write(connect_request(origin, proxy.authorization))
        status = await handshake.reply
        if status != 200:
            hint = " (check the credentials in the proxy URL)" if status == 407 else ""
            raise HTTPClientError(
                HTTPClientError.CONNECT,
                f"The proxy {proxy.host}:{proxy.port} refused the tunnel to {origin.host}:{origin.port}: HTTP {status}{hint}.",
            )
        protocol = make_protocol()
        if tls is not None:
            tunnelled = await loop.start_tls(transport, protocol, tls, server_hostname=origin.host)
            if tunnelled is None:  # the transport closed during the TLS handshake
                raise _refused("tunnel closed during the TLS handshake")
            transport = tunnelled
        else:
            transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return protocol
    except BaseException:
        transport.close()
        raise
