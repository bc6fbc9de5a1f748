"""Client authentication: `Authorization: Bearer <key>` -> the tenant it belongs to.

Keys are never kept in plain text: the config holds SHA-256 hashes, keys given in
`GATEWAY_API_KEYS` are hashed at start, and keys created through the admin API live
hashed in the quota store. Lookup hashes the presented key once and compares digests with
`hmac.compare_digest`, so the time taken does not reveal how much of a key matched.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Mapping

from .errors import GatewayError


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str
    team: str | None = None


RemoteLookup = Callable[[str], Awaitable[Principal | None]]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    def __init__(self, entries: Iterable[tuple[str, Principal]], remote: RemoteLookup | None = None) -> None:
        """entries: (sha256 hex of the key, who it belongs to)."""
        self._by_hash: dict[str, tuple[str, Principal]] = {
            digest.lower(): (digest.lower(), who) for digest, who in entries
        }
        self._remote = remote

    def __len__(self) -> int:
        return len(self._by_hash)

    def set_remote(self, remote: RemoteLookup | None) -> None:
        self._remote = remote

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        key = bearer_token(headers)
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        # The dict is keyed by digests the caller cannot steer; the final equality is
        # still checked in constant time so the guarantee does not rest on dict internals.
        if found is not None and hmac.compare_digest(found[0], digest):
            return found[1]
        if self._remote is not None:
            principal = await self._remote(digest)
            if principal is not None:
                return principal
        raise GatewayError(
            401,
            "Incorrect API key provided. Use a key issued by this gateway in 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


def bearer_token(headers: Mapping[str, str]) -> str:
    value = headers.get("Authorization") or headers.get("authorization")
    if not value:
        raise GatewayError(
            401,
            "You didn't provide an API key. Send it in the 'Authorization: Bearer <key>' header.",
            code="missing_api_key",
        )
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise GatewayError(
            401,
            "The 'Authorization' header must have the form 'Bearer <key>'.",
            code="invalid_authorization_header",
        )
    return token
