"""The embedded quota store: the same semantics as the Redis store, inside one process.

Used when REDIS_URL is unset, and inside the Redis store as its fail_open fallback. Every
public method does its work without awaiting, so each call is atomic on the event loop,
exactly as one Lua script is atomic in Redis. Expired reservations are swept by a heap
ordered by deadline at the start of every admit.

An admission walks the candidates as lua/admit.lua does (request rate limits, then per
candidate: caps, share quotas, rate limits) and words its outcome as AdmissionBuilder
does. The limits of a request's scopes and of a candidate's model and provider are
resolved once per configuration into flat tables, so a request reads only its counters.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

from .admission import Limits, cap_message, limits_from_fields, rate_message, share_message
from .base import (
    Admission,
    AdmissionRequest,
    CandidateCost,
    Denial,
    KeyRecord,
    RateLimit,
    RateLimitInfo,
    Scope,
    Settlement,
    SettleOutcome,
    ShareQuota,
    SkipReason,
    SpendCap,
    SpendStatus,
)
from .fields import (
    ADMIN,
    STATIC,
    cap_field,
    caps_of,
    fields_of_cap,
    fields_of_rate_limit,
    fields_of_share,
    rate_limit_of,
    share_field,
    shares_of,
    static_fields,
)
from .ledger import CounterKey, Ledger, SpendCounter
from .windows import GcraResult, Window, gcra, gcra_adjust

JournalEntry = tuple[str, str, str, int]  # scope key, window spec, bucket id, micro-dollars
RateCheck = tuple[str, str, int]  # scope key, "rpm" | "tpm", limit
CapCheck = tuple[str, Window, int]  # scope key, window, limit in micro-dollars
Tightest = tuple[int, int, float] | None  # the most restrictive rpm or tpm: limit, remaining, reset_s
# Slack in the share comparison, the same as AdmissionBuilder's and lua/admit.lua's.
_SHARE_EPSILON = 1e-9
_MAX_TABLES = 4096  # resolved scope sets kept; the oldest goes first
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class _RequestLimits:
    """The limits of one request's scopes (global first, deduplicated), in check order."""

    rates: tuple[RateCheck, ...]  # rpm then tpm per scope: the hard stop before the walk
    tpm: tuple[RateCheck, ...]  # charged again per candidate, with that candidate's tokens
    caps: tuple[CapCheck, ...]
    shares: Mapping[str, tuple[tuple[str, int, float], ...]]  # tier -> (scope key, window_s, max_share)
    share_windows: tuple[tuple[str, int], ...]  # (scope key, window_s) every admission counts in


@dataclass(frozen=True, slots=True)
class _CandidateLimits:
    """The limits of one candidate's model and provider scopes, in check order."""

    caps: tuple[CapCheck, ...]
    rates: tuple[RateCheck, ...]  # model rpm, tpm, then provider rpm, tpm


@dataclass(slots=True)
class _Blocks:
    """The nearest block of each kind met while walking the candidates: what a denial names."""

    cap: tuple[int, str, Window, int, float, int] | None = None  # remaining, scope, window, limit, resets_at, cost
    share: tuple[float, str, str, int, float] | None = None  # retry, scope, tier, window_s, max_share
    rate: tuple[float, str, str, int] | None = None  # retry, scope, rpm | tpm, limit


@dataclass(slots=True)
class _Reservation:
    amount: int  # worst-case micro-dollars held in every counter below
    tokens: int  # tokens charged to tpm cells at admission
    counters: list[CounterKey]
    token_scopes: list[str]  # scope keys whose tpm cell was charged
    shares: list[tuple[str, int, int, str]]  # scope key, window_s, slot index, tier
    deadline: float
    state: str = "active"  # active | expired | settled | released


@dataclass(slots=True)
class MemoryQuotaStore:
    reservation_ttl_s: float = 300.0
    record_retention_s: float = 3600.0  # how long finished reservations answer idempotent calls
    clock: Callable[[], float] = time.time
    id_prefix: str = ""
    degraded_count: int = 0
    # Set (to a list) by the Redis store when this store is its fail_open fallback: every local
    # charge is appended so it can be pushed to Redis once it is back.
    journal: list[JournalEntry] | None = None
    _config: dict[str, dict[str, str]] = field(default_factory=dict)
    _sources: dict[str, dict[str, str]] = field(default_factory=dict)
    _limits: dict[str, Limits] = field(default_factory=dict)
    _ledger: Ledger = field(default_factory=Ledger)
    _reservations: dict[str, _Reservation] = field(default_factory=dict)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    _finished: deque[tuple[float, str]] = field(default_factory=deque)
    _keys: dict[str, KeyRecord] = field(default_factory=dict)
    _key_hashes: dict[str, str] = field(default_factory=dict)
    _last_prune: float = 0.0
    # Resolved from _config; emptied whenever it changes.
    _request_limits: dict[tuple[Scope, ...], _RequestLimits] = field(default_factory=dict)
    _candidate_limits: dict[tuple[str, str], _CandidateLimits] = field(default_factory=dict)

    # ---- admission -------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> Admission:
        return self.admit_now(request)

    def admit_now(self, request: AdmissionRequest, degraded: bool = False) -> Admission:
        now = request.now if request.now is not None else self.clock()
        if degraded:
            self.degraded_count += 1
        self._sweep(now)
        limits = self._limits_of_request(request)
        cells = self._ledger.cells

        # 1. Request-scoped rate limits: a hard stop before any candidate is considered.
        requests: Tightest = None
        tokens: Tightest = None
        passed_rpm: list[tuple[tuple[str, str], int, GcraResult]] = []  # cell, limit, result
        blocked: tuple[float, str, str, int] | None = None
        if limits.rates:
            fewest_tokens = min(c.tokens for c in request.candidates)
            for scope_key, kind, limit in limits.rates:
                cell = (scope_key, kind)
                result = gcra(cells.get(cell), now, 1 if kind == "rpm" else fewest_tokens, limit)
                if kind == "rpm":
                    requests = _offer(requests, limit, result)
                    if result.allowed:
                        passed_rpm.append((cell, limit, result))
                else:
                    tokens = _offer(tokens, limit, result)
                if not result.allowed and (blocked is None or result.retry_after_s > blocked[0]):
                    blocked = (result.retry_after_s, scope_key, kind, limit)
            if blocked is not None:
                retry, scope_key, kind, limit = blocked
                info = _rate_info(requests, tokens)
                message = rate_message(scope_key, kind, limit, retry)
                denial = Denial("rate_limited", Scope.parse(scope_key), None, message, retry, info)
                return Admission(False, None, None, (), denial, degraded, info)

        # 2. The candidates in plan order: the first that every cap, share quota and rate
        # limit lets through is reserved.
        skipped: list[tuple[int, SkipReason]] = []
        blocks = _Blocks()
        for index, candidate in enumerate(request.candidates):
            requests, tokens = None, None  # the headers describe the candidate under consideration
            for _, limit, result in passed_rpm:
                requests = _offer(requests, limit, result)
            own = self._limits_of_candidate(candidate)
            held = self._check_caps((limits.caps, own.caps), candidate.worst_case_micros, now, blocks)
            if held is None:
                skipped.append((index, "credit_limit"))
                continue
            if not self._check_shares(limits.shares.get(candidate.tier, ()), candidate.tier, now, blocks):
                skipped.append((index, "route_quota"))
                continue
            passed: list[tuple[tuple[str, str], GcraResult]] = [(cell, result) for cell, _, result in passed_rpm]
            failed = False
            for checks in (limits.tpm, own.rates):
                for scope_key, kind, limit in checks:
                    cell = (scope_key, kind)
                    result = gcra(cells.get(cell), now, 1 if kind == "rpm" else candidate.tokens, limit)
                    if kind == "rpm":
                        requests = _offer(requests, limit, result)
                    else:
                        tokens = _offer(tokens, limit, result)
                    if result.allowed:
                        passed.append((cell, result))
                    else:
                        failed = True
                        if blocks.rate is None or result.retry_after_s < blocks.rate[0]:
                            blocks.rate = (result.retry_after_s, scope_key, kind, limit)
            if failed:
                skipped.append((index, "rate_limit"))
                continue
            reservation_id = self._commit(request, candidate, held, passed, limits.share_windows, now)
            return Admission(True, index, reservation_id, tuple(skipped), None, degraded, _rate_info(requests, tokens))
        return _deny(skipped, blocks, _rate_info(requests, tokens), now, degraded)

    def _check_caps(self, groups: tuple[tuple[CapCheck, ...], ...], cost: int, now: float,
                    blocks: _Blocks) -> list[tuple[CounterKey, SpendCounter]] | None:
        """The counters to reserve in, or None when a cap cannot afford `cost` (every cap is
        still read: the denial names the one with the least left)."""
        held = []
        failed = False
        for caps in groups:
            for scope_key, window, limit in caps:
                key, counter = self._ledger.counter(scope_key, window, now)
                held.append((key, counter))
                remaining = limit - (counter.spent_total(now) + counter.reserved)
                if cost > remaining:
                    failed = True
                    if blocks.cap is None or remaining < blocks.cap[0]:
                        blocks.cap = (remaining, scope_key, window, limit, counter.resets_at(now), cost)
        return None if failed else held

    def _check_shares(self, shares: tuple[tuple[str, int, float], ...], tier: str, now: float,
                      blocks: _Blocks) -> bool:
        """Whether one more request of `tier` stays within every share quota on it."""
        fits = True
        for scope_key, window_s, max_share in shares:
            counts = self._ledger.share_counts(scope_key, window_s, now)
            if counts.total(tier) + 1 > max_share * (counts.total("n") + 1) + _SHARE_EPSILON:
                fits = False
                retry = max(0.0, counts.drop_time(tier, now) - now)
                if blocks.share is None or retry < blocks.share[0]:
                    blocks.share = (retry, scope_key, tier, window_s, max_share)
        return fits

    def _commit(self, request: AdmissionRequest, candidate: CandidateCost, held: list[tuple[CounterKey, SpendCounter]],
                passed: list[tuple[tuple[str, str], GcraResult]], share_windows: tuple[tuple[str, int], ...],
                now: float) -> str:
        cost = candidate.worst_case_micros
        for _, counter in held:
            counter.reserved += cost
        token_scopes = []
        cells = self._ledger.cells
        for cell, result in passed:
            cells[cell] = result.tat
            if cell[1] == "tpm":
                token_scopes.append(cell[0])
        shares = []
        for scope_key, window_s in share_windows:
            counts = self._ledger.share_counts(scope_key, window_s, now)
            slot = counts.slot_of(now)
            counts.add(slot, "n", 1)
            counts.add(slot, candidate.tier, 1)
            shares.append((scope_key, window_s, slot, candidate.tier))
        reservation_id = self.id_prefix + os.urandom(12).hex()
        deadline = now + (request.ttl_s or self.reservation_ttl_s)
        self._reservations[reservation_id] = _Reservation(
            cost, candidate.tokens, [key for key, _ in held], token_scopes, shares, deadline
        )
        heapq.heappush(self._expiry, (deadline, reservation_id))
        return reservation_id

    def _sweep(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, reservation_id = heapq.heappop(self._expiry)
            reservation = self._reservations.get(reservation_id)
            if reservation is None or reservation.state != "active" or reservation.deadline > now:
                continue  # finished, or extended (a later heap entry carries the new deadline)
            self._unreserve(reservation)
            reservation.state = "expired"
            self._finished.append((now, reservation_id))
        horizon = now - self.record_retention_s
        while self._finished and self._finished[0][0] < horizon:
            self._reservations.pop(self._finished.popleft()[1], None)
        if now - self._last_prune > 60:
            self._last_prune = now
            self._ledger.prune(now)

    def _unreserve(self, reservation: _Reservation) -> None:
        for key in reservation.counters:
            self._ledger.counter_by_key(key).reserved -= reservation.amount

    # ---- settle / release / extend ---------------------------------------------------

    async def settle(self, reservation_id: str, actual_micros: int, actual_tokens: int) -> SettleOutcome:
        return self.settle_now(Settlement(reservation_id, actual_micros, actual_tokens))

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[SettleOutcome]:
        return [self.settle_now(item) for item in settlements]

    def settle_now(self, item: Settlement) -> SettleOutcome:
        reservation = self._reservations.get(item.reservation_id)
        if reservation is None:
            return "unknown"
        if reservation.state in ("settled", "released"):
            return "duplicate" if reservation.state == "settled" else "released"
        now = self.clock()
        was_active = reservation.state == "active"
        for key in reservation.counters:
            counter = self._ledger.counter_by_key(key)
            if was_active:
                counter.reserved -= reservation.amount
            counter.charge(item.actual_micros, now)
            if self.journal is not None and item.actual_micros:
                bucket = counter.window.bucket(now) if counter.rolling is not None else key[2]
                self.journal.append((key[0], key[1], bucket, item.actual_micros))
        self._adjust_tokens(reservation, item.actual_tokens - reservation.tokens, now)
        reservation.state = "settled"
        self._finished.append((now, item.reservation_id))
        return "settled" if was_active else "late"

    def _adjust_tokens(self, reservation: _Reservation, delta: int, now: float) -> None:
        for scope_key in reservation.token_scopes:
            tpm = self._limits_of(scope_key).tpm
            if tpm and delta:
                cell = (scope_key, "tpm")
                self._ledger.cells[cell] = gcra_adjust(self._ledger.cells.get(cell), now, delta, tpm)

    async def release(self, reservation_id: str) -> bool:
        return self.release_now(reservation_id)

    def release_now(self, reservation_id: str) -> bool:
        reservation = self._reservations.get(reservation_id)
        if reservation is None or reservation.state in ("settled", "released"):
            return False
        now = self.clock()
        if reservation.state == "active":
            self._unreserve(reservation)
        self._adjust_tokens(reservation, -reservation.tokens, now)
        for scope_key, window_s, slot, tier in reservation.shares:
            counts = self._ledger.share_counts(scope_key, window_s, now)
            if counts.is_live(slot, now) and slot in counts.slots:
                counts.add(slot, "n", -1)
                counts.add(slot, tier, -1)
        reservation.state = "released"
        self._finished.append((now, reservation_id))
        return True

    async def extend(self, reservation_id: str, extra_micros: int, ttl_s: float | None = None) -> bool:
        return self.extend_now(reservation_id, extra_micros, ttl_s)

    def extend_now(self, reservation_id: str, extra_micros: int, ttl_s: float | None = None) -> bool:
        if extra_micros < 0:
            raise ValueError("extra_micros must be non-negative")
        reservation = self._reservations.get(reservation_id)
        now = self.clock()
        if reservation is None or reservation.state != "active" or reservation.deadline <= now:
            return False
        counters = [self._ledger.counter_by_key(key) for key in reservation.counters]
        for key, counter in zip(reservation.counters, counters, strict=True):
            limit = self._config.get(key[0], {}).get(cap_field(counter.window))
            if limit is not None and counter.spent_total(now) + counter.reserved + extra_micros > int(limit):
                return False
        for counter in counters:
            counter.reserved += extra_micros
        reservation.amount += extra_micros
        reservation.deadline = now + (ttl_s or self.reservation_ttl_s)
        heapq.heappush(self._expiry, (reservation.deadline, reservation_id))
        return True

    # ---- limits (admin) --------------------------------------------------------------

    def _limits_of(self, scope_key: str) -> Limits:
        found = self._limits.get(scope_key)
        if found is None:
            found = self._limits[scope_key] = limits_from_fields(self._config.get(scope_key, {}))
        return found

    def _limits_of_request(self, request: AdmissionRequest) -> _RequestLimits:
        key = tuple(request.scopes)
        found = self._request_limits.get(key)
        if found is None:
            rates, tpm, caps, windows = [], [], [], []
            shares: dict[str, list[tuple[str, int, float]]] = {}
            for scope_key in [s.key for s in request.request_scopes()]:
                limits = self._limits_of(scope_key)
                if limits.rpm:
                    rates.append((scope_key, "rpm", limits.rpm))
                if limits.tpm:
                    rates.append((scope_key, "tpm", limits.tpm))
                    tpm.append((scope_key, "tpm", limits.tpm))
                caps.extend((scope_key, window, limit) for window, limit in limits.caps)
                for tier, window_s, max_share in limits.shares:
                    shares.setdefault(tier, []).append((scope_key, window_s, max_share))
                windows.extend((scope_key, w) for w in sorted({w for _, w, _ in limits.shares}))
            found = _RequestLimits(
                tuple(rates), tuple(tpm), tuple(caps), {t: tuple(v) for t, v in shares.items()}, tuple(windows)
            )
            _remember(self._request_limits, key, found)
        return found

    def _limits_of_candidate(self, candidate: CandidateCost) -> _CandidateLimits:
        key = (candidate.model, candidate.provider)
        found = self._candidate_limits.get(key)
        if found is None:
            caps: list[CapCheck] = []
            rates: list[RateCheck] = []
            for scope in candidate.scopes:
                limits = self._limits_of(scope.key)
                caps.extend((scope.key, window, limit) for window, limit in limits.caps)
                if limits.rpm:
                    rates.append((scope.key, "rpm", limits.rpm))
                if limits.tpm:
                    rates.append((scope.key, "tpm", limits.tpm))
            found = _CandidateLimits(tuple(caps), tuple(rates))
            _remember(self._candidate_limits, key, found)
        return found

    def _config_changed(self) -> None:
        self._limits.clear()
        self._request_limits.clear()
        self._candidate_limits.clear()

    def _write(self, scope_key: str, values: dict[str, str | None], source: str) -> None:
        fields = self._config.setdefault(scope_key, {})
        sources = self._sources.setdefault(scope_key, {})
        for name, value in values.items():
            if value is None:
                fields.pop(name, None)
                sources.pop(name, None)
            else:
                fields[name] = value
                sources[name] = source
        self._config_changed()

    def _delete_field(self, scope: Scope, name: str) -> bool:
        present = name in self._config.get(scope.key, {})
        self._write(scope.key, {name: None}, ADMIN)
        return present

    def replace_config(self, config: dict[str, dict[str, str]]) -> None:
        """Take a whole configuration snapshot (the Redis store mirrors its shared config here)."""
        self._config = {k: dict(v) for k, v in config.items()}
        self._config_changed()

    def rebase(self, shared_spend: dict[CounterKey, int], now: float) -> None:
        """Forget locally charged spend that has been pushed and count the shared spend instead."""
        for counter in self._ledger.spend.values():
            counter.clear_spent()
        for (scope_key, spec, _bucket), amount in shared_spend.items():
            _, counter = self._ledger.counter(scope_key, Window.parse(spec), now)
            counter.baseline = amount

    async def set_cap(self, cap: SpendCap) -> None:
        self._write(cap.scope.key, dict(fields_of_cap(cap)), ADMIN)

    async def delete_cap(self, scope: Scope, window: Window) -> bool:
        return self._delete_field(scope, cap_field(window))

    async def list_caps(self) -> list[SpendCap]:
        return [cap for key, fields in sorted(self._config.items()) for cap in caps_of(Scope.parse(key), fields)]

    async def set_rate_limit(self, limit: RateLimit) -> None:
        self._write(limit.scope.key, fields_of_rate_limit(limit), ADMIN)

    async def delete_rate_limit(self, scope: Scope) -> bool:
        present = rate_limit_of(scope, self._config.get(scope.key, {})) is not None
        self._write(scope.key, {"rpm": None, "tpm": None}, ADMIN)
        return present

    async def list_rate_limits(self) -> list[RateLimit]:
        found = (rate_limit_of(Scope.parse(key), fields) for key, fields in sorted(self._config.items()))
        return [limit for limit in found if limit is not None]

    async def set_share_quota(self, quota: ShareQuota) -> None:
        self._write(quota.scope.key, dict(fields_of_share(quota)), ADMIN)

    async def delete_share_quota(self, scope: Scope, tier: str, window_s: int) -> bool:
        return self._delete_field(scope, share_field(tier, window_s))

    async def list_share_quotas(self) -> list[ShareQuota]:
        return [q for key, fields in sorted(self._config.items()) for q in shares_of(Scope.parse(key), fields)]

    async def load_static(
        self,
        caps: Sequence[SpendCap] = (),
        rate_limits: Sequence[RateLimit] = (),
        share_quotas: Sequence[ShareQuota] = (),
    ) -> None:
        desired = static_fields(caps, rate_limits, share_quotas)
        for scope_key, sources in list(self._sources.items()):
            stale = [n for n, src in sources.items() if src == STATIC and n not in desired.get(scope_key, {})]
            self._write(scope_key, {n: None for n in stale}, STATIC)
        for scope_key, values in desired.items():
            sources = self._sources.get(scope_key, {})
            self._write(scope_key, {n: v for n, v in values.items() if sources.get(n) != ADMIN}, STATIC)

    # ---- spend -----------------------------------------------------------------------

    async def get_spend(self, scope: Scope, window: Window, now: float | None = None) -> SpendStatus:
        now = self.clock() if now is None else now
        self._sweep(now)
        _, counter = self._ledger.counter(scope.key, window, now)
        spent = counter.spent_total(now)
        raw_limit = self._config.get(scope.key, {}).get(cap_field(window))
        limit = int(raw_limit) if raw_limit is not None else None
        remaining = None if limit is None else max(0, limit - spent - counter.reserved)
        return SpendStatus(scope, window, spent, counter.reserved, limit, remaining, counter.resets_at(now))

    async def reset_scope(self, scope: Scope) -> None:
        self._ledger.reset_scope(scope.key)

    # ---- client keys -----------------------------------------------------------------

    async def create_key(self, tenant: str, key_id: str | None = None, team: str | None = None) -> tuple[str, str]:
        key_id = key_id or "key_" + secrets.token_hex(8)
        if key_id in self._key_hashes:
            raise ValueError(f"key_id {key_id!r} already exists")
        plaintext = "sk-gw-" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        self._keys[digest] = KeyRecord(key_id, tenant, team, self.clock())
        self._key_hashes[key_id] = digest
        return key_id, plaintext

    async def revoke_key(self, key_id: str) -> bool:
        digest = self._key_hashes.pop(key_id, None)
        return digest is not None and self._keys.pop(digest, None) is not None

    async def lookup_key(self, sha256_hex: str) -> KeyRecord | None:
        return self._keys.get(sha256_hex)

    async def close(self) -> None:
        return None


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= _MAX_TABLES:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _offer(best: Tightest, limit: int, result: GcraResult) -> Tightest:
    """The tighter of `best` and this decision: fewest remaining, then longest reset."""
    entry = (limit, result.remaining, result.reset_s)
    if best is None or (entry[1], -entry[2]) < (best[1], -best[2]):
        return entry
    return best


def _rate_info(requests: Tightest, tokens: Tightest) -> RateLimitInfo | None:
    if requests is None and tokens is None:
        return None
    r = requests or (None, None, None)
    t = tokens or (None, None, None)
    return RateLimitInfo(r[0], r[1], r[2], t[0], t[1], t[2])


def _deny(skipped: list[tuple[int, SkipReason]], blocks: _Blocks, info: RateLimitInfo | None, now: float,
          degraded: bool) -> Admission:
    """No candidate fits: rate_limited if rate limits alone stood in the way, else the cap
    with the least left, else the share quota that frees up first."""
    if {reason for _, reason in skipped} == {"rate_limit"} and blocks.rate is not None:
        retry, scope_key, kind, limit = blocks.rate
        message = rate_message(scope_key, kind, limit, retry)
        denial = Denial("rate_limited", Scope.parse(scope_key), None, message, retry, info)
    elif blocks.cap is not None:
        remaining, scope_key, window, limit, resets_at, cost = blocks.cap
        message = cap_message(scope_key, window, limit, remaining, cost)
        denial = Denial("budget_exceeded", Scope.parse(scope_key), window, message, max(0.0, resets_at - now))
    else:
        assert blocks.share is not None
        retry, scope_key, tier, window_s, max_share = blocks.share
        message = share_message(scope_key, tier, window_s, max_share)
        denial = Denial("budget_exceeded", Scope.parse(scope_key), Window("rolling", window_s), message, retry)
    return Admission(False, None, None, tuple(skipped), denial, degraded, info)
