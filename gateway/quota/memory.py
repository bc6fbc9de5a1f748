"""The embedded quota store: the same semantics as the Redis store, inside one process.

Used when REDIS_URL is unset, and inside the Redis store as its fail_open fallback. Every
public method does its work without awaiting, so each call is atomic on the event loop,
exactly as one Lua script is atomic in Redis. Expired reservations are swept by a heap
ordered by deadline at the start of every admit.

Which candidate an admission goes to is decided in memory_admit.py; this module is the
store around it: the configuration, the counters and reservations, holding an admitted
cost, and settle, release, extend, the admin methods and client keys.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .base import (
    Admission,
    AdmissionRequest,
    CandidateCost,
    KeyRecord,
    RateLimit,
    Scope,
    Settlement,
    SettleOutcome,
    ShareQuota,
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
from .ledger import CounterKey, Ledger
from .memory_admit import Held, LimitTables, Passed, ShareWindows, decide_admission
from .windows import Window, gcra_adjust

JournalEntry = tuple[str, str, str, int]  # scope key, window spec, bucket id, micro-dollars


@dataclass(slots=True)
class _Reservation:
    amount: int  # worst-case micro-dollars held in every counter below
    tokens: int  # tokens charged to tpm cells at admission
    counters: list[CounterKey]
    token_scopes: Sequence[str]  # scope keys whose tpm cell was charged
    shares: Sequence[tuple[str, int, int, str]]  # scope key, window_s, slot index, tier
    deadline: float
    state: str = "active"  # active | expired | settled | released


# What a settled or released reservation leaves behind until its retention ends: only its
# state is read again, so every one of them shares these two records (at thousands of
# requests a second, a full record each kept the collector busy and memory growing).
_SETTLED = _Reservation(0, 0, [], [], [], 0.0, "settled")
_RELEASED = _Reservation(0, 0, [], [], [], 0.0, "released")
_NONE: tuple[()] = ()  # a reservation's token scopes or shares when there are none (most have none)


@dataclass(slots=True)
class MemoryQuotaStore:
    reservation_ttl_s: float = 300.0
    record_retention_s: float = 600.0  # how long finished reservations answer idempotent calls
    clock: Callable[[], float] = time.time
    id_prefix: str = ""
    degraded_count: int = 0
    # Set (to a list) by the Redis store when this store is its fail_open fallback: every local
    # charge is appended so it can be pushed to Redis once it is back.
    journal: list[JournalEntry] | None = None
    _config: dict[str, dict[str, str]] = field(default_factory=dict)
    _sources: dict[str, dict[str, str]] = field(default_factory=dict)
    _ledger: Ledger = field(default_factory=Ledger)
    _reservations: dict[str, _Reservation] = field(default_factory=dict)
    # Deadlines to sweep: in the order they come when that is deadline order (every
    # reservation made with the same TTL, the usual case: popping costs nothing), in a heap
    # when one comes earlier than the last (a shorter TTL, an extension).
    _expiring: deque[tuple[float, str]] = field(default_factory=deque)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    _finished: deque[tuple[float, str]] = field(default_factory=deque)
    _keys: dict[str, KeyRecord] = field(default_factory=dict)
    _key_hashes: dict[str, str] = field(default_factory=dict)
    _last_prune: float = 0.0
    # Resolved from _config; replaced whenever it changes.
    _limit_tables: LimitTables = field(init=False)
    # Reservation ids: a random base per store and a counter. Unique within the store, which
    # is all an id must be (it never leaves the process); a random id per admission cost a
    # getrandom system call each.
    _id_head: str = field(init=False)  # id_prefix + the random base
    _id_count: Iterator[int] = field(init=False)

    def __post_init__(self) -> None:
        self._limit_tables = LimitTables(self._config)
        self._id_head = self.id_prefix + os.urandom(8).hex()
        self._id_count = itertools.count()

    # ---- admission -------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> Admission:
        return self.admit_now(request)

    def admit_now(self, request: AdmissionRequest, degraded: bool = False) -> Admission:
        now = request.now if request.now is not None else self.clock()
        if degraded:
            self.degraded_count += 1
        self._sweep(now)
        return decide_admission(request, now, degraded, self._limit_tables, self._ledger, self._commit)

    def _commit(self, request: AdmissionRequest, candidate: CandidateCost, held: Held, passed: Passed,
                share_windows: ShareWindows, now: float) -> str:
        """Hold the admitted candidate's worst case in its counters and record the reservation."""
        cost = candidate.worst_case_micros
        counters = []
        for key, counter in held:
            counter.reserved += cost
            counters.append(key)
        token_scopes = self._hold_rates(passed) if passed else _NONE
        shares = self._count_shares(share_windows, candidate.tier, now) if share_windows else _NONE
        reservation_id = f"{self._id_head}{next(self._id_count)}"  # one head per store: the count tells ids apart
        deadline = now + (request.ttl_s or self.reservation_ttl_s)
        self._reservations[reservation_id] = _Reservation(cost, candidate.tokens, counters, token_scopes, shares, deadline)
        expiring = self._expiring
        if not expiring or expiring[-1][0] <= deadline:  # = self._expire_at, inlined
            expiring.append((deadline, reservation_id))
        else:
            heapq.heappush(self._expiry, (deadline, reservation_id))
        return reservation_id

    def _hold_rates(self, passed: Passed) -> list[str]:
        """Move the GCRA cells that let the admission through; the scopes whose tpm it charged."""
        cells = self._ledger.cells
        token_scopes = []
        for cell, result in passed:
            cells[cell] = result.tat
            if cell[1] == "tpm":
                token_scopes.append(cell[0])
        return token_scopes

    def _count_shares(self, share_windows: ShareWindows, tier: str, now: float) -> list[tuple[str, int, int, str]]:
        """Count the admission in every share window of its scopes, under "n" and its tier."""
        shares = []
        for scope_key, window_s in share_windows:
            counts = self._ledger.share_counts(scope_key, window_s, now)
            slot = counts.slot_of(now)
            counts.add(slot, "n", 1)
            counts.add(slot, tier, 1)
            shares.append((scope_key, window_s, slot, tier))
        return shares

    def _expire_at(self, deadline: float, reservation_id: str) -> None:
        expiring = self._expiring
        if not expiring or expiring[-1][0] <= deadline:
            expiring.append((deadline, reservation_id))
        else:
            heapq.heappush(self._expiry, (deadline, reservation_id))

    def _sweep(self, now: float) -> None:
        expiring, expiry, reservations = self._expiring, self._expiry, self._reservations
        while expiring and expiring[0][0] <= now:
            reservation_id = expiring.popleft()[1]
            reservation = reservations.get(reservation_id)
            # Most are finished by now; an extended one has a later entry with its new deadline.
            if reservation is not None and reservation.state == "active" and reservation.deadline <= now:
                self._expire(reservation, reservation_id, now)
        while expiry and expiry[0][0] <= now:
            reservation_id = heapq.heappop(expiry)[1]
            reservation = reservations.get(reservation_id)
            if reservation is not None and reservation.state == "active" and reservation.deadline <= now:
                self._expire(reservation, reservation_id, now)
        horizon = now - self.record_retention_s
        while self._finished and self._finished[0][0] < horizon:
            self._reservations.pop(self._finished.popleft()[1], None)
        if now - self._last_prune > 60:
            self._last_prune = now
            self._ledger.prune(now)

    def _expire(self, reservation: _Reservation, reservation_id: str, now: float) -> None:
        self._unreserve(reservation)
        reservation.state = "expired"
        self._finished.append((now, reservation_id))

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
        spend, micros, journal = self._ledger.spend, item.actual_micros, self.journal
        for key in reservation.counters:
            counter = spend.get(key) or self._ledger.counter_by_key(key)
            if was_active:
                counter.reserved -= reservation.amount
            counter.charge(micros, now)
            if journal is not None and micros:
                bucket = counter.window.bucket(now) if counter.rolling is not None else key[2]
                journal.append((key[0], key[1], bucket, micros))
        if reservation.token_scopes:
            self._adjust_tokens(reservation, item.actual_tokens - reservation.tokens, now)
        self._reservations[item.reservation_id] = _SETTLED
        self._finished.append((now, item.reservation_id))
        return "settled" if was_active else "late"

    def _adjust_tokens(self, reservation: _Reservation, delta: int, now: float) -> None:
        for scope_key in reservation.token_scopes:
            tpm = self._limit_tables.of_scope(scope_key).tpm
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
        self._reservations[reservation_id] = _RELEASED
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
        self._expire_at(reservation.deadline, reservation_id)
        return True

    # ---- limits (admin) --------------------------------------------------------------

    def _config_changed(self) -> None:
        self._limit_tables = LimitTables(self._config)

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
