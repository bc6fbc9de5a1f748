"""The quota store contract: plain frozen dataclasses and the `QuotaStore` protocol.

Money is integer micro-dollars everywhere (1 USD = 1_000_000). A request is admitted in
one atomic store call (`admit`), which reserves the chosen candidate's worst-case cost in
every spend cap that applies; the reservation is later replaced by the actual cost
(`settle`), given back (`release`), or swept when its TTL passes.

Semantics the stores share (tests/test_quota_store.py runs both against them):
- Applicable scopes: the request's scopes plus the global scope, and for each candidate
  its `model:<model>` and `provider:<provider>` scopes. Rate limits on request scopes are
  a hard stop (`rate_limited`) before any candidate is considered; rate limits on model or
  provider scopes, spend caps that cannot afford the worst case, and tiers over their share
  only skip a candidate (`rate_limit`, `credit_limit`, `route_quota`).
- When no candidate fits, the denial is `rate_limited` if every candidate was skipped for
  a rate limit, else `budget_exceeded` naming the cap with the least left (or, when only
  share quotas blocked, the share quota, with window `rolling:<window_s>`).
- A share quota admits a request of its tier while (tier count + 1) <= max_share x
  (all requests + 1) over the scope's rolling window; every admitted request of the scope
  counts, whatever its tier.
- A spend cap counts spend from the moment it exists: counters are kept per cap, so a cap
  added mid-day does not see what was spent earlier that day.
- Calendar spend lands in the bucket the request was admitted in, even when settled after
  midnight; rolling spend lands in the slot of the settle.
- `release` gives back the money, the estimated tokens and the share count; the request
  still counts against rpm (it was made).
- `reset_scope` forgives the scope's spend in the current bucket of each capped window and
  clears its rate-limit and share counters; in-flight reservations keep their hold.
- Finished and expired reservations are remembered for `record_retention_s` (10 min): settles
  within it are idempotent and a settle after expiry still charges ("late"). A settled or
  released one is remembered by its state alone, so the store holds about
  requests/s x retention small records (3,000 req/s: ~1.8 M, a few hundred MB in Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol, Sequence

from .windows import Window

__all__ = [
    "SCOPE_KINDS",
    "REQUEST_SCOPE_KINDS",
    "CANDIDATE_SCOPE_KINDS",
    "Scope",
    "GLOBAL",
    "Window",
    "SpendCap",
    "RateLimit",
    "ShareQuota",
    "CandidateCost",
    "AdmissionRequest",
    "RateLimitInfo",
    "Denial",
    "Admission",
    "Settlement",
    "SettleOutcome",
    "SpendStatus",
    "KeyRecord",
    "QuotaUnavailable",
    "QuotaStore",
]

SCOPE_KINDS = ("global", "tenant", "team", "key", "model", "provider", "route")
# model/provider scopes belong to a candidate, the others to the request as a whole.
CANDIDATE_SCOPE_KINDS = ("model", "provider")
REQUEST_SCOPE_KINDS = tuple(k for k in SCOPE_KINDS if k not in CANDIDATE_SCOPE_KINDS)

SkipReason = Literal["credit_limit", "route_quota", "rate_limit"]
DenialCode = Literal["budget_exceeded", "rate_limited"]
SettleOutcome = Literal["settled", "late", "duplicate", "released", "unknown", "queued"]


class QuotaUnavailable(Exception):
    """The store cannot decide (Redis down) and the failure mode is fail_closed: answer 503."""


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise ValueError(f"scope.kind must be one of {SCOPE_KINDS}, got {self.kind!r}")
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("scope.id must be a non-empty string")
        if self.kind == "global" and self.id != "*":
            raise ValueError("scope.id of the global scope must be '*'")
        if any(c in self.id for c in "{}|\n"):
            raise ValueError(f"scope.id must not contain '{{', '}}', '|' or newlines: {self.id!r}")

    @property
    def key(self) -> str:
        """The canonical `kind:id` string used in storage keys and messages."""
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, sep, ident = text.partition(":")
        if not sep:
            raise ValueError(f"scope must look like 'kind:id', got {text!r}")
        return cls(kind, ident)

    def __str__(self) -> str:
        return self.key


GLOBAL = Scope("global", "*")


@dataclass(frozen=True, slots=True)
class SpendCap:
    scope: Scope
    window: Window
    limit_micros: int

    def __post_init__(self) -> None:
        if not isinstance(self.limit_micros, int) or self.limit_micros < 0:
            raise ValueError("limit_micros must be a non-negative integer")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and tokens per minute for one scope; None leaves that dimension unlimited."""

    scope: Scope
    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None")


@dataclass(frozen=True, slots=True)
class ShareQuota:
    """`tier` may take at most `max_share` of the scope's admitted requests in a rolling window."""

    scope: Scope
    tier: str
    max_share: float
    window_s: int

    def __post_init__(self) -> None:
        if not self.tier or any(c in self.tier for c in ":|{}"):
            raise ValueError("tier must be a non-empty name without ':', '|', '{' or '}'")
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError("max_share must be within [0, 1]")
        if not isinstance(self.window_s, int) or self.window_s <= 0:
            raise ValueError("window_s must be a positive integer")


@lru_cache(maxsize=1024)
def _storable_name(value: object) -> bool:
    """Cached: admissions name the same few catalog models on every request."""
    return isinstance(value, str) and bool(value) and not any(c in value for c in "{}|\n")


@dataclass(frozen=True, slots=True)
class CandidateCost:
    model: str
    provider: str
    tier: str
    worst_case_micros: int
    tokens: int  # prompt + max completion tokens, what tpm limits count

    def __post_init__(self) -> None:
        if not isinstance(self.worst_case_micros, int) or self.worst_case_micros < 0:
            raise ValueError("worst_case_micros must be a non-negative integer")
        if not isinstance(self.tokens, int) or self.tokens < 0:
            raise ValueError("tokens must be a non-negative integer")
        for name in ("model", "provider", "tier"):
            if not _storable_name(getattr(self, name)):
                raise ValueError(f"{name} must be a non-empty string without '{{', '}}', '|' or newlines")

    @property
    def scopes(self) -> tuple[Scope, Scope]:
        return Scope("model", self.model), Scope("provider", self.provider)


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    request_id: str
    scopes: Sequence[Scope]  # the request's scopes; the global scope always applies implicitly
    candidates: Sequence[CandidateCost]  # in plan order
    now: float | None = None  # None: the store's clock (Redis server time for the Redis store)
    ttl_s: float | None = None  # reservation lifetime; None: the store's default

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("candidates must not be empty")
        for scope in self.scopes:
            if scope.kind in CANDIDATE_SCOPE_KINDS:
                raise ValueError(f"scopes must not hold {scope.kind} scopes; they come from candidates")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ValueError("ttl_s must be positive")

    def request_scopes(self) -> list[Scope]:
        """The request's scopes, deduplicated, with the global scope first."""
        seen = {GLOBAL}
        ordered = [GLOBAL]
        for scope in self.scopes:
            if scope not in seen:
                seen.add(scope)
                ordered.append(scope)
        return ordered


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The tightest rpm/tpm state of a request, in the terms of OpenAI's x-ratelimit-* headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = format_duration(self.reset_requests_s or 0.0)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = format_duration(self.reset_tokens_s or 0.0)
        return out


def format_duration(seconds: float) -> str:
    """Go-style durations as OpenAI sends them: '250ms', '1s', '6m0s', '1h2m3s'."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    total = round(seconds, 3)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{sec_text}"
    if minutes:
        return f"{int(minutes)}m{sec_text}"
    return sec_text


@dataclass(frozen=True, slots=True)
class Denial:
    code: DenialCode
    scope: Scope
    window: Window | None  # the cap's window, rolling:<window_s> for a share quota, None for rpm/tpm
    message: str
    retry_after_s: float
    rate_limit: RateLimitInfo | None = None  # set when code == "rate_limited"


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    candidate_index: int | None
    reservation_id: str | None
    skipped: tuple[tuple[int, SkipReason], ...] = ()
    denial: Denial | None = None
    degraded: bool = False  # decided by local fail_open counters, not the shared store
    rate_limit: RateLimitInfo | None = None  # header values for an admitted request


@dataclass(frozen=True, slots=True)
class Settlement:
    reservation_id: str
    actual_micros: int
    actual_tokens: int

    def __post_init__(self) -> None:
        if not isinstance(self.actual_micros, int) or self.actual_micros < 0:
            raise ValueError("actual_micros must be a non-negative integer")
        if not isinstance(self.actual_tokens, int) or self.actual_tokens < 0:
            raise ValueError("actual_tokens must be a non-negative integer")


@dataclass(frozen=True, slots=True)
class SpendStatus:
    scope: Scope
    window: Window
    spent_micros: int
    reserved_micros: int
    limit_micros: int | None  # None: no cap on this scope and window
    remaining_micros: int | None
    resets_at: float  # epoch seconds; for rolling windows when the oldest spend drops out


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    team: str | None
    created_at: float


class QuotaStore(Protocol):
    """What the HTTP pipeline and the admin API use; memory and Redis implement it alike."""

    degraded_count: int  # admissions served by local fail_open counters

    async def admit(self, request: AdmissionRequest) -> Admission: ...

    async def settle(self, reservation_id: str, actual_micros: int, actual_tokens: int) -> SettleOutcome: ...

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[SettleOutcome]: ...

    async def release(self, reservation_id: str) -> bool: ...

    async def extend(self, reservation_id: str, extra_micros: int, ttl_s: float | None = None) -> bool: ...

    async def set_cap(self, cap: SpendCap) -> None: ...

    async def delete_cap(self, scope: Scope, window: Window) -> bool: ...

    async def list_caps(self) -> list[SpendCap]: ...

    async def set_rate_limit(self, limit: RateLimit) -> None: ...

    async def delete_rate_limit(self, scope: Scope) -> bool: ...

    async def list_rate_limits(self) -> list[RateLimit]: ...

    async def set_share_quota(self, quota: ShareQuota) -> None: ...

    async def delete_share_quota(self, scope: Scope, tier: str, window_s: int) -> bool: ...

    async def list_share_quotas(self) -> list[ShareQuota]: ...

    async def load_static(
        self,
        caps: Sequence[SpendCap] = (),
        rate_limits: Sequence[RateLimit] = (),
        share_quotas: Sequence[ShareQuota] = (),
    ) -> None: ...

    async def get_spend(self, scope: Scope, window: Window, now: float | None = None) -> SpendStatus: ...

    async def reset_scope(self, scope: Scope) -> None: ...

    async def create_key(self, tenant: str, key_id: str | None = None, team: str | None = None) -> tuple[str, str]: ...

    async def revoke_key(self, key_id: str) -> bool: ...

    async def lookup_key(self, sha256_hex: str) -> KeyRecord | None: ...

    async def close(self) -> None: ...
