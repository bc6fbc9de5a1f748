"""The shared quota store: exact across replicas, one EVALSHA per decision.

Layout. Every key starts with one hash tag, `{<namespace>}:` (default `{gw}:`), so all keys
of a deployment live in a single Redis Cluster slot and every script runs unchanged on
Cluster. That keeps global, model and provider caps exact: a request's tenant, key, team,
route, model, provider and global counters are all read and reserved in one atomic script.
The price is that one shard carries all quota traffic. The alternative, per-tenant tags,
would spread tenants over shards but force global/model/provider counters to be duplicated
per tenant or split into per-shard allowances, which is no longer exact; deployments that
outgrow one shard can run several namespaces (one per group of tenants) instead.

Clock. Unless a `clock` is given (tests), scripts read Redis' own TIME, so replicas with
skewed clocks still agree on windows, rate-limit cells and reservation deadlines.

Failure modes. Every call has a deadline (`timeout_s`, also the socket timeout; redis-py's
own retries are off so nothing waits longer). When Redis errors or times out:
- fail_closed: `admit`/`extend` raise `QuotaUnavailable` (the HTTP layer answers 503);
- fail_open: the decision comes from the local `MemoryQuotaStore` kept as a mirror (limits
  and the shared spend as of the last snapshot, refreshed every `snapshot_interval_s`),
  marked `degraded=True` and counted in `degraded_count`. The spend it settles is
  journaled and pushed to Redis by `reconcile()`, which runs by itself on the first
  successful call after an outage.
After a failure Redis is not retried for `retry_interval_s`, so an outage costs one timeout,
not one per request. Settles and releases for Redis reservations that fail are queued and
replayed on recovery in either mode: spend that happened is never dropped.

Client keys. `lookup_key` keeps a local cache (hits and misses) for `key_cache_ttl_s`
(default 1 s), so a key revoked on another replica stops working within about a second;
revoking through this instance evicts it here at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import deque
from random import getrandbits
from typing import Any, Awaitable, Callable, Literal, Sequence

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .admission import decode_admission
from .base import (
    Admission,
    AdmissionRequest,
    KeyRecord,
    QuotaUnavailable,
    RateLimit,
    Scope,
    Settlement,
    SettleOutcome,
    ShareQuota,
    SpendCap,
    SpendStatus,
)
from .fields import (
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
from .memory import MemoryQuotaStore
from .redis_scripts import ScriptCaller
from .windows import Window

log = logging.getLogger(__name__)

FailureMode = Literal["fail_open", "fail_closed"]
_REDIS_FAILURES = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)
_LOCAL = "L:"  # reservation ids made by the fail_open fallback
_MAX_QUEUED = 100_000


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError, RedisTimeoutError))


class ScriptFailed(QuotaUnavailable):
    """A script rejected one call's data: logged and counted, and never queued for a retry."""


def make_client(url: str, timeout_s: float) -> Redis:
    """A client that reconnects on its own at the next call.

    The deadline of every call is the store's own `asyncio.timeout(timeout_s)` around it
    (ScriptCaller, `_guarded`); a cancelled send or read makes redis-py drop that connection,
    so no late reply is read by the next call. redis-py's `socket_timeout` is left unset: it
    would wrap every send in `asyncio.wait_for`, a task per command on the hot path.
    One immediate retry on a connection error (never on a timeout): after a Redis restart
    every pooled connection is stale, and each would otherwise fail one call and mark the
    whole store down although Redis answers again.
    """
    return Redis.from_url(
        url,
        socket_timeout=None,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],  # pipelines consult this list, not the Retry's
        retry_on_timeout=False,
        health_check_interval=0,
    )


class RedisQuotaStore:
    def __init__(
        self,
        redis: Redis | str,
        *,
        namespace: str = "gw",
        failure_mode: FailureMode = "fail_open",
        timeout_s: float = 0.25,
        reservation_ttl_s: float = 300.0,
        record_retention_s: float = 600.0,
        key_cache_ttl_s: float = 1.0,
        snapshot_interval_s: float = 5.0,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if failure_mode not in ("fail_open", "fail_closed"):
            raise ValueError("failure_mode must be 'fail_open' or 'fail_closed'")
        if not namespace or any(c in namespace for c in "{}"):
            raise ValueError("namespace must be a non-empty name without braces")
        self._owns_client = isinstance(redis, str)
        self.client = make_client(redis, timeout_s) if isinstance(redis, str) else redis
        self.prefix = "{" + namespace + "}:"
        self.failure_mode = failure_mode
        self.timeout_s = timeout_s
        self.reservation_ttl_s = reservation_ttl_s
        self.record_retention_s = record_retention_s
        self.key_cache_ttl_s = key_cache_ttl_s
        self.snapshot_interval_s = snapshot_interval_s
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self.redis_failures = 0  # calls that failed or timed out
        self.script_errors = 0  # calls a script rejected (a bug: logged, never silent)
        self.local = MemoryQuotaStore(
            reservation_ttl_s=reservation_ttl_s,
            record_retention_s=record_retention_s,
            clock=clock or time.time,
            id_prefix=_LOCAL,
            journal=[],
        )
        self._caller = ScriptCaller(self.client, self.prefix + "cfgidx", self.prefix, timeout_s)
        self._down_until = 0.0
        self._needs_reconcile = False
        self._reconcile_batch: tuple[str, int] | None = None  # (batch id, size) until Redis confirms it
        self._timeouts_in_a_row = 0
        self.timeouts_to_mark_down = 3
        self._outage = False
        self._last_snapshot = float("-inf")
        self._queued: deque[Settlement | str] = deque(maxlen=_MAX_QUEUED)
        self._background: asyncio.Task[None] | None = None
        self._key_cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._pending_static: dict[str, Any] | None = None  # policy limits Redis has not seen yet
        self._reconciling = asyncio.Lock()  # one pusher at a time, or a batch could be pushed twice

    @property
    def degraded_count(self) -> int:
        """Admissions decided by the local fail_open counters instead of Redis."""
        return self.local.degraded_count

    # ---- plumbing --------------------------------------------------------------------

    def _now(self) -> float | None:
        return self.clock() if self.clock is not None else None

    async def _run(self, name: str, payload: dict[str, Any]) -> Any:
        """One script call; raises QuotaUnavailable when Redis is (known to be) away."""
        if time.monotonic() < self._down_until:
            raise QuotaUnavailable("quota store unavailable (Redis down, retrying soon)")
        payload.setdefault("now", self._now())
        try:
            result = await self._caller.call(name, orjson.dumps(payload))
        except ResponseError as exc:
            if "script" not in str(exc).lower():
                raise self._mark_down(exc) from exc
            # a script that failed on this input is a bug, not an outage: answer this call
            # as unavailable (degraded under fail_open) without taking Redis out for everyone
            self.script_errors += 1
            log.error("quota store: script %s failed: %s", name, exc)
            raise ScriptFailed(f"quota script {name} failed: {exc}") from exc
        except _REDIS_FAILURES as exc:
            raise self._mark_down(exc) from exc
        self._timeouts_in_a_row = 0
        if self._outage:
            self._outage = False
            log.warning("quota store: Redis answers again; reconciling local spend")
        if self._needs_reconcile or time.monotonic() - self._last_snapshot > self.snapshot_interval_s:
            self._start_background()
        return result

    def _mark_down(self, exc: BaseException) -> QuotaUnavailable:
        """Count a failed call; take Redis out for `retry_interval_s` only when it is clearly away.

        A refused or broken connection is clear at once. A timeout alone may be this
        replica's own event-loop lag under a burst, not Redis: that call fails (degraded under
        fail_open), but the store is only taken out after `timeouts_to_mark_down` in a row.
        """
        self.redis_failures += 1
        self._needs_reconcile = True
        self._timeouts_in_a_row = self._timeouts_in_a_row + 1 if _is_timeout(exc) else 0
        if _is_timeout(exc) and self._timeouts_in_a_row < self.timeouts_to_mark_down:
            return QuotaUnavailable(f"quota store call timed out: {exc!r}")
        self._down_until = time.monotonic() + self.retry_interval_s
        if not self._outage:
            self._outage = True
            mode = "serving degraded from local counters" if self.failure_mode == "fail_open" else "refusing admissions"
            log.error("quota store: Redis unavailable (%r); %s", exc, mode)
        return QuotaUnavailable(f"quota store unavailable: {exc!r}")

    def _start_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.ensure_future(self._recover_and_refresh())

    async def _recover_and_refresh(self) -> None:
        try:
            if self._needs_reconcile:
                await self.reconcile()
            else:
                await self.refresh_snapshot()
        except QuotaUnavailable:
            pass

    async def reconcile(self) -> int:
        """Push what was charged locally and replay queued settles; returns items pushed."""
        async with self._reconciling:
            return await self._reconcile()

    async def _reconcile(self) -> int:
        journal = self.local.journal
        assert journal is not None
        pushed = 0
        if self._pending_static is not None:
            await self._run("load_static", self._pending_static)
            self._pending_static = None
        while journal:
            # The batch keeps its id until Redis confirms it, so a call that ran but whose
            # reply was lost is not charged twice when it is sent again.
            if self._reconcile_batch is None:
                self._reconcile_batch = (uuid.uuid4().hex, min(500, len(journal)))
            batch_id, size = self._reconcile_batch
            await self._run("reconcile", {"bid": batch_id, "items": journal[:size]})
            del journal[:size]
            self._reconcile_batch = None
            pushed += size
        while self._queued:
            item = self._queued[0]
            try:
                if isinstance(item, Settlement):
                    await self._run("settle", self._settle_payload([item]))
                else:
                    await self._run("release", {"id": item, "ret": self.record_retention_s})
            except ScriptFailed:
                pass  # logged in _run; retrying would block everything queued behind it
            self._queued.popleft()
            pushed += 1
        self._needs_reconcile = False
        await self.refresh_snapshot()
        return pushed

    async def refresh_snapshot(self) -> None:
        """Mirror the shared limits and spend into the local fail_open fallback."""
        raw = orjson.loads(await self._run("snapshot", {}))
        self._last_snapshot = time.monotonic()
        config = raw["cfg"] if isinstance(raw["cfg"], dict) else {}
        self.local.replace_config({scope: dict(fields) if fields else {} for scope, fields in config.items()})
        spend = {(s, spec, bucket): int(used) for s, spec, bucket, used in (raw["spend"] or [])}
        self.local.rebase(spend, float(raw["now"]))

    # ---- admission -------------------------------------------------------------------

    async def admit(self, request: AdmissionRequest) -> Admission:
        payload = {
            "now": request.now if request.now is not None else self._now(),
            "ttl": request.ttl_s or self.reservation_ttl_s,
            # unique, not secret (never shown to a client): the PRNG, seeded from os.urandom
            # and re-seeded in every forked worker, saves a system call per request
            "id": f"{getrandbits(96):024x}",
            "req": request.request_id,
            "ret": self.record_retention_s,
            "rs": [s.key for s in request.request_scopes()],
            "c": [
                [f"model:{c.model}", f"provider:{c.provider}", c.tier, c.worst_case_micros, c.tokens]
                for c in request.candidates
            ],
        }
        try:
            raw = await self._run("admit", payload)
        except QuotaUnavailable:
            if self.failure_mode == "fail_closed":
                raise
            return self.local.admit_now(request, degraded=True)
        return decode_admission(orjson.loads(raw), payload["id"])

    def _settle_payload(self, items: Sequence[Settlement]) -> dict[str, Any]:
        return {
            "ret": self.record_retention_s,
            "items": [[s.reservation_id, s.actual_micros, s.actual_tokens] for s in items],
        }

    async def settle(self, reservation_id: str, actual_micros: int, actual_tokens: int) -> SettleOutcome:
        return (await self.settle_many([Settlement(reservation_id, actual_micros, actual_tokens)]))[0]

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[SettleOutcome]:
        outcomes: list[SettleOutcome] = ["unknown"] * len(settlements)
        shared = [(i, s) for i, s in enumerate(settlements) if not s.reservation_id.startswith(_LOCAL)]
        for i, item in enumerate(settlements):
            if item.reservation_id.startswith(_LOCAL):
                outcomes[i] = self.local.settle_now(item)
        if shared:
            try:
                raw = await self._run("settle", self._settle_payload([s for _, s in shared]))
            except ScriptFailed:
                pass  # logged in _run; outcomes stay "unknown"
            except QuotaUnavailable:
                self._queued.extend(s for _, s in shared)
                for i, _ in shared:
                    outcomes[i] = "queued"
            else:
                for (i, _), outcome in zip(shared, orjson.loads(raw), strict=True):
                    outcomes[i] = outcome
        if self.local.journal and time.monotonic() >= self._down_until:
            self._needs_reconcile = True  # local spend is waiting to be pushed
            self._start_background()
        return outcomes

    async def release(self, reservation_id: str) -> bool:
        """True when given back now (or queued until Redis returns)."""
        if reservation_id.startswith(_LOCAL):
            return self.local.release_now(reservation_id)
        try:
            return bool(await self._run("release", {"id": reservation_id, "ret": self.record_retention_s}))
        except ScriptFailed:
            return False
        except QuotaUnavailable:
            self._queued.append(reservation_id)
            return True

    async def extend(self, reservation_id: str, extra_micros: int, ttl_s: float | None = None) -> bool:
        if extra_micros < 0:
            raise ValueError("extra_micros must be non-negative")
        if reservation_id.startswith(_LOCAL):
            return self.local.extend_now(reservation_id, extra_micros, ttl_s)
        payload = {
            "id": reservation_id,
            "extra": extra_micros,
            "ttl": ttl_s or self.reservation_ttl_s,
            "ret": self.record_retention_s,
        }
        try:
            return bool(await self._run("extend", payload))
        except QuotaUnavailable:
            if self.failure_mode == "fail_closed":
                raise
            self.local.degraded_count += 1
            return True

    # ---- limits (admin): always shared, so they fail loudly when Redis is away -----------

    async def _configure(self, scope: Scope, set_fields: dict[str, str], delete: Sequence[str]) -> int:
        deleted = await self._run("config", {"scope": scope.key, "set": set_fields or {}, "del": list(delete)})
        self._last_snapshot = float("-inf")  # mirror the change locally soon
        return int(deleted)

    async def set_cap(self, cap: SpendCap) -> None:
        await self._configure(cap.scope, fields_of_cap(cap), ())
        await self.local.set_cap(cap)

    async def delete_cap(self, scope: Scope, window: Window) -> bool:
        await self.local.delete_cap(scope, window)
        return await self._configure(scope, {}, [cap_field(window)]) > 0

    async def set_rate_limit(self, limit: RateLimit) -> None:
        fields = fields_of_rate_limit(limit)
        await self._configure(
            limit.scope, {k: v for k, v in fields.items() if v is not None}, [k for k, v in fields.items() if v is None]
        )
        await self.local.set_rate_limit(limit)

    async def delete_rate_limit(self, scope: Scope) -> bool:
        await self.local.delete_rate_limit(scope)
        return await self._configure(scope, {}, ["rpm", "tpm"]) > 0

    async def set_share_quota(self, quota: ShareQuota) -> None:
        await self._configure(quota.scope, fields_of_share(quota), ())
        await self.local.set_share_quota(quota)

    async def delete_share_quota(self, scope: Scope, tier: str, window_s: int) -> bool:
        await self.local.delete_share_quota(scope, tier, window_s)
        return await self._configure(scope, {}, [share_field(tier, window_s)]) > 0

    async def _all_config(self) -> dict[Scope, dict[str, str]]:
        raw = orjson.loads(await self._run("snapshot", {}))
        config = raw["cfg"] if isinstance(raw["cfg"], dict) else {}
        return {Scope.parse(k): dict(v) if v else {} for k, v in sorted(config.items())}

    async def list_caps(self) -> list[SpendCap]:
        return [cap for scope, fields in (await self._all_config()).items() for cap in caps_of(scope, fields)]

    async def list_rate_limits(self) -> list[RateLimit]:
        found = (rate_limit_of(scope, fields) for scope, fields in (await self._all_config()).items())
        return [limit for limit in found if limit is not None]

    async def list_share_quotas(self) -> list[ShareQuota]:
        return [q for scope, fields in (await self._all_config()).items() for q in shares_of(scope, fields)]

    async def load_static(
        self,
        caps: Sequence[SpendCap] = (),
        rate_limits: Sequence[RateLimit] = (),
        share_quotas: Sequence[ShareQuota] = (),
    ) -> None:
        """Seed the policy file's limits; values an admin set at run time win (see fields.py).

        With fail_open a gateway may start while Redis is away: the limits then apply locally
        at once and are written to Redis by the reconcile that follows its return.
        """
        await self.local.load_static(caps, rate_limits, share_quotas)
        payload = {"desired": static_fields(caps, rate_limits, share_quotas)}
        try:
            await self._run("load_static", payload)
        except QuotaUnavailable:
            if self.failure_mode == "fail_closed":
                raise
            self._pending_static = payload
        self._last_snapshot = float("-inf")

    # ---- spend -----------------------------------------------------------------------

    async def get_spend(self, scope: Scope, window: Window, now: float | None = None) -> SpendStatus:
        payload = {"now": now if now is not None else self._now(), "ret": self.record_retention_s}
        payload.update(scope=scope.key, spec=window.spec)
        spent, reserved, limit, resets_at = orjson.loads(await self._run("status", payload))
        spent, reserved = int(spent), max(0, int(reserved))
        limit = int(limit) if limit is not None else None
        remaining = None if limit is None else max(0, limit - spent - reserved)
        return SpendStatus(scope, window, spent, reserved, limit, remaining, float(resets_at))

    async def reset_scope(self, scope: Scope) -> None:
        await self._run("reset_scope", {"scope": scope.key})
        await self.local.reset_scope(scope)

    # ---- client keys -----------------------------------------------------------------

    async def create_key(self, tenant: str, key_id: str | None = None, team: str | None = None) -> tuple[str, str]:
        key_id = key_id or "key_" + secrets.token_hex(8)
        plaintext = "sk-gw-" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        payload = {"id": key_id, "sha": digest, "tenant": tenant, "team": team, "created": time.time()}
        if not await self._run("key_create", payload):
            raise ValueError(f"key_id {key_id!r} already exists")
        self._key_cache.pop(digest, None)
        return key_id, plaintext

    async def revoke_key(self, key_id: str) -> bool:
        digest = await self._run("key_revoke", {"id": key_id})
        if digest:
            self._key_cache.pop(digest.decode() if isinstance(digest, bytes) else digest, None)
        return bool(digest)

    async def lookup_key(self, sha256_hex: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._key_cache.get(sha256_hex)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            fields = await self._guarded(self.client.hgetall(self.prefix + "key:" + sha256_hex))
        except QuotaUnavailable:
            if cached is not None and self.failure_mode == "fail_open":
                return cached[1]  # stale, but better than locking every client out
            raise
        record = None
        if fields:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            record = KeyRecord(text["id"], text["tenant"], text.get("team"), float(text["created"]))
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[sha256_hex] = (now + self.key_cache_ttl_s, record)
        return record

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(call):
                call.close()
            raise QuotaUnavailable("quota store unavailable (Redis down, retrying soon)")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except _REDIS_FAILURES as exc:
            raise self._mark_down(exc) from exc

    async def ping(self) -> bool:
        """For readiness: can the shared store answer right now?"""
        try:
            return bool(await self._guarded(self.client.ping()))
        except QuotaUnavailable:
            return False

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
        await self._caller.close()
        if self._owns_client:
            await self.client.aclose()
