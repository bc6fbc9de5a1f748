"""One suite, two stores: the embedded memory store and the Redis store (real redis-server).

Both run on a fake clock, so windows, resets and expiry are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import datetime, timezone
from typing import AsyncIterator

import pytest

from gateway.quota import open_store
from gateway.quota.base import (
    GLOBAL,
    AdmissionRequest,
    CandidateCost,
    RateLimit,
    Scope,
    Settlement,
    ShareQuota,
    SpendCap,
    format_duration,
)
from gateway.quota.memory import MemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.windows import DAY, MONTH, Window
from tests.redis_server import RedisServer

START = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc).timestamp()
TENANT = Scope("tenant", "acme")
KEY = Scope("key", "k1")
TEAM = Scope("team", "search")
ROUTE = Scope("route", "chat")


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cand(
    model: str = "gpt-4o", cost: int = 400, tier: str = "standard", tokens: int = 100, provider: str = "openai"
) -> CandidateCost:
    return CandidateCost(model, provider, tier, cost, tokens)


def request(
    *candidates: CandidateCost, scopes=(TENANT, KEY, TEAM, ROUTE), ttl_s: float | None = None
) -> AdmissionRequest:
    return AdmissionRequest(uuid.uuid4().hex, list(scopes), list(candidates or [cand()]), ttl_s=ttl_s)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
async def store(request, clock: FakeClock) -> AsyncIterator[MemoryQuotaStore | RedisQuotaStore]:
    if request.param == "memory":
        yield MemoryQuotaStore(clock=clock)
        return
    server = request.getfixturevalue("redis_server")
    # a namespace per test keeps tests apart without flushing the server
    redis_store = RedisQuotaStore(server.url, namespace=uuid.uuid4().hex[:12], clock=clock, timeout_s=2.0)
    yield redis_store
    await redis_store.close()


# ---- spend caps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope", [GLOBAL, TENANT, TEAM, KEY, ROUTE, Scope("model", "gpt-4o"), Scope("provider", "openai")]
)
async def test_day_cap_applies_to_every_scope_kind(store, clock, scope: Scope) -> None:
    await store.set_cap(SpendCap(scope, DAY, 1000))
    assert (await store.admit(request())).admitted
    assert (await store.admit(request())).admitted
    denied = await store.admit(request())
    assert not denied.admitted
    assert denied.skipped == ((0, "credit_limit"),)
    assert denied.denial.code == "budget_exceeded"
    assert denied.denial.scope == scope and denied.denial.window == DAY
    assert scope.key in denied.denial.message and "day" in denied.denial.message
    assert denied.denial.retry_after_s == pytest.approx(12 * 3600)  # to the next UTC midnight
    status = await store.get_spend(scope, DAY)
    assert (status.spent_micros, status.reserved_micros, status.remaining_micros) == (0, 800, 200)


async def test_reservation_is_all_or_nothing_across_scopes(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    await store.set_cap(SpendCap(KEY, MONTH, 500))
    assert (await store.admit(request())).admitted
    denied = await store.admit(request())
    assert denied.denial.scope == KEY and denied.denial.window == MONTH
    # the tenant cap could afford it, but nothing was reserved there either
    assert (await store.get_spend(TENANT, DAY)).reserved_micros == 400
    assert (await store.get_spend(KEY, MONTH)).reserved_micros == 400


async def test_denial_names_the_tightest_cap(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 300))
    await store.set_cap(SpendCap(GLOBAL, DAY, 100))
    denied = await store.admit(request())
    assert denied.denial.scope == GLOBAL


async def test_denial_names_the_tightest_cap_even_when_an_earlier_one_refused_first(store) -> None:
    await store.set_cap(SpendCap(GLOBAL, DAY, 300))  # checked first, refuses first
    await store.set_cap(SpendCap(TENANT, DAY, 350))
    await store.set_cap(SpendCap(Scope("provider", "openai"), DAY, 100))  # checked last, least left
    denied = await store.admit(request())
    assert denied.denial.scope == Scope("provider", "openai") and "100 of 100" in denied.denial.message
    for scope in (GLOBAL, TENANT, Scope("provider", "openai")):
        assert (await store.get_spend(scope, DAY)).reserved_micros == 0


async def test_candidate_fallback_skips_what_a_cap_cannot_afford(store) -> None:
    await store.set_cap(SpendCap(Scope("model", "gpt-4o"), DAY, 500))
    premium, small = cand("gpt-4o", 400, "premium"), cand("gpt-4o-mini", 50, "economy")
    first = await store.admit(request(premium, small))
    assert first.candidate_index == 0 and first.skipped == ()
    second = await store.admit(request(premium, small))
    assert second.admitted and second.candidate_index == 1
    assert second.skipped == ((0, "credit_limit"),)
    assert (await store.get_spend(Scope("model", "gpt-4o"), DAY)).reserved_micros == 400


async def test_month_and_day_buckets_reset_on_utc_boundaries(store, clock) -> None:
    clock.now = datetime(2026, 12, 31, 23, 59, 30, tzinfo=timezone.utc).timestamp()
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    await store.set_cap(SpendCap(TENANT, MONTH, 1000))
    admitted = await store.admit(request())
    await store.settle(admitted.reservation_id, 700, 10)
    new_year = datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp()
    assert (await store.get_spend(TENANT, DAY)).resets_at == new_year
    assert (await store.get_spend(TENANT, MONTH)).resets_at == new_year
    denied = await store.admit(request())
    assert denied.denial.retry_after_s == pytest.approx(30)
    clock.now = new_year + 1
    assert (await store.get_spend(TENANT, MONTH)).spent_micros == 0
    assert (await store.get_spend(TENANT, MONTH)).resets_at == datetime(2027, 2, 1, tzinfo=timezone.utc).timestamp()
    assert (await store.admit(request())).admitted


async def test_february_month_reset(store, clock) -> None:
    clock.now = datetime(2028, 2, 29, 8, tzinfo=timezone.utc).timestamp()  # leap year
    await store.set_cap(SpendCap(TENANT, MONTH, 10))
    status = await store.get_spend(TENANT, MONTH)
    assert status.resets_at == datetime(2028, 3, 1, tzinfo=timezone.utc).timestamp()
    assert MONTH.resets_at(clock.now) == status.resets_at


async def test_rolling_window_spend_drops_out(store, clock) -> None:
    window = Window.parse("rolling:60")
    await store.set_cap(SpendCap(TENANT, window, 1000))
    first = await store.admit(request(cand(cost=800)))
    await store.settle(first.reservation_id, 800, 10)
    clock.advance(30)
    denied = await store.admit(request(cand(cost=400)))
    assert denied.denial.window == window
    assert 30 <= denied.denial.retry_after_s <= 31  # when the 800 leaves the window
    clock.advance(31)
    assert (await store.get_spend(TENANT, window)).spent_micros == 0
    assert (await store.admit(request(cand(cost=400)))).admitted


# ---- settle, release, extend, expiry ---------------------------------------------------


async def test_settle_replaces_reservation_and_is_idempotent(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    await store.set_cap(SpendCap(Scope("provider", "openai"), DAY, 10_000))
    admitted = await store.admit(request())
    assert await store.settle(admitted.reservation_id, 123, 40) == "settled"
    assert await store.settle(admitted.reservation_id, 123, 40) == "duplicate"
    for scope in (TENANT, Scope("provider", "openai")):
        status = await store.get_spend(scope, DAY)
        assert (status.spent_micros, status.reserved_micros) == (123, 0)
    assert not await store.release(admitted.reservation_id)
    assert await store.settle("no-such-reservation", 1, 1) == "unknown"


async def test_settle_many_in_one_call(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 10_000))
    ids = [(await store.admit(request())).reservation_id for _ in range(3)]
    outcomes = await store.settle_many([Settlement(rid, 100 * (i + 1), 5) for i, rid in enumerate(ids)])
    assert outcomes == ["settled"] * 3
    assert (await store.get_spend(TENANT, DAY)).spent_micros == 600


async def test_release_gives_everything_back(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 400))
    await store.set_rate_limit(RateLimit(TENANT, rpm=None, tpm=100))
    admitted = await store.admit(request(cand(tokens=100)))
    assert not (await store.admit(request(cand(tokens=100)))).admitted
    assert await store.release(admitted.reservation_id)
    assert not await store.release(admitted.reservation_id)  # idempotent
    assert await store.settle(admitted.reservation_id, 10, 10) == "released"
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.reserved_micros) == (0, 0)
    assert (await store.admit(request(cand(tokens=100)))).admitted  # money and tokens both back


async def test_expired_reservation_returns_budget_and_late_settle_still_charges(store, clock) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 500))
    leaked = await store.admit(request(ttl_s=5))
    assert not (await store.admit(request(ttl_s=5))).admitted
    clock.advance(6)  # the gateway that held `leaked` died
    replacement = await store.admit(request(ttl_s=5))
    assert replacement.admitted
    assert (await store.get_spend(TENANT, DAY)).reserved_micros == 400
    assert await store.settle(leaked.reservation_id, 90, 10) == "late"
    assert await store.settle(leaked.reservation_id, 90, 10) == "duplicate"
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.reserved_micros) == (90, 400)


async def test_extend_holds_more_and_pushes_the_deadline(store, clock) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    admitted = await store.admit(request(ttl_s=5))
    clock.advance(4)
    assert await store.extend(admitted.reservation_id, 500, ttl_s=5)
    assert not await store.extend(admitted.reservation_id, 200)  # 900 held + 200 > 1000
    clock.advance(4)  # past the first deadline, within the extended one
    assert (await store.get_spend(TENANT, DAY)).reserved_micros == 900
    assert await store.settle(admitted.reservation_id, 950, 10) == "settled"
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.reserved_micros) == (950, 0)
    assert not await store.extend(admitted.reservation_id, 1)


# ---- share quotas ----------------------------------------------------------------------


async def test_share_quota_routes_premium_to_the_next_candidate(store) -> None:
    await store.set_share_quota(ShareQuota(TENANT, "premium", 0.25, 3600))
    plan = (cand("opus", 100, "premium"), cand("haiku", 10, "economy"))
    results = [await store.admit(request(*plan)) for _ in range(20)]
    assert all(r.admitted for r in results)
    premium = [r for r in results if r.candidate_index == 0]
    assert len(premium) == 5
    assert all(r.skipped == ((0, "route_quota"),) for r in results if r.candidate_index == 1)
    # only premium candidates: deny with the share quota named
    denied = await store.admit(request(plan[0]))
    assert denied.denial.code == "budget_exceeded" and denied.skipped == ((0, "route_quota"),)
    assert denied.denial.window == Window("rolling", 3600) and "premium" in denied.denial.message
    # a released premium request no longer counts
    assert await store.release(premium[0].reservation_id)
    assert (await store.admit(request(plan[0]))).candidate_index == 0


async def test_share_quota_window_rolls(store, clock) -> None:
    await store.set_share_quota(ShareQuota(TENANT, "premium", 0.5, 60))
    plan = (cand("opus", 1, "premium"), cand("haiku", 1, "economy"))
    assert [(await store.admit(request(*plan))).candidate_index for _ in range(4)] == [1, 0, 1, 0]
    clock.advance(62)
    assert (await store.admit(request(*plan))).candidate_index == 1  # a fresh window starts at 0%


# ---- rate limits -----------------------------------------------------------------------


async def test_rpm_limit_with_header_values(store, clock) -> None:
    await store.set_rate_limit(RateLimit(KEY, rpm=3))
    remaining = []
    for _ in range(3):
        admitted = await store.admit(request())
        remaining.append(admitted.rate_limit.remaining_requests)
    assert remaining == [2, 1, 0]
    denied = await store.admit(request())
    assert denied.denial.code == "rate_limited" and denied.denial.scope == KEY
    assert denied.denial.retry_after_s == pytest.approx(20)
    headers = denied.denial.rate_limit.headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-ratelimit-limit-tokens" not in headers
    clock.advance(20)
    assert (await store.admit(request())).admitted


async def test_tpm_limit_is_corrected_by_actual_tokens(store) -> None:
    await store.set_rate_limit(RateLimit(TENANT, rpm=100, tpm=1000))
    first = await store.admit(request(cand(tokens=400)))
    assert first.rate_limit.limit_tokens == 1000 and first.rate_limit.remaining_tokens == 600
    assert first.rate_limit.limit_requests == 100 and first.rate_limit.remaining_requests == 99
    assert (await store.admit(request(cand(tokens=400)))).admitted
    denied = await store.admit(request(cand(tokens=400)))
    assert denied.denial.code == "rate_limited" and "tokens" in denied.denial.message
    await store.settle(first.reservation_id, 10, 100)  # 300 tokens fewer than estimated
    assert (await store.admit(request(cand(tokens=400)))).admitted


async def test_model_rate_limit_skips_the_candidate(store) -> None:
    await store.set_rate_limit(RateLimit(Scope("model", "opus"), rpm=1))
    await store.set_rate_limit(RateLimit(Scope("provider", "anthropic"), rpm=2))
    plan = (cand("opus", 1, provider="anthropic"), cand("sonnet", 1, provider="anthropic"))
    assert (await store.admit(request(*plan))).candidate_index == 0
    second = await store.admit(request(*plan))
    assert second.candidate_index == 1 and second.skipped == ((0, "rate_limit"),)
    denied = await store.admit(request(*plan))
    assert denied.skipped == ((0, "rate_limit"), (1, "rate_limit"))
    assert denied.denial.code == "rate_limited"
    assert denied.denial.scope in (Scope("model", "opus"), Scope("provider", "anthropic"))


def test_durations_look_like_openai_headers() -> None:
    assert [format_duration(s) for s in (0.02, 1, 6.5, 360, 3723)] == ["20ms", "1s", "6.5s", "6m0s", "1h2m3s"]


# ---- admin -----------------------------------------------------------------------------


async def test_admin_limits_round_trip(store) -> None:
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    await store.set_cap(SpendCap(TENANT, Window.parse("rolling:3600"), 50))
    await store.set_rate_limit(RateLimit(KEY, rpm=10, tpm=None))
    await store.set_share_quota(ShareQuota(TENANT, "premium", 0.2, 3600))
    assert set(await store.list_caps()) == {
        SpendCap(TENANT, DAY, 1000),
        SpendCap(TENANT, Window.parse("rolling:3600"), 50),
    }
    assert await store.list_rate_limits() == [RateLimit(KEY, 10, None)]
    assert await store.list_share_quotas() == [ShareQuota(TENANT, "premium", 0.2, 3600)]
    assert await store.delete_cap(TENANT, DAY)
    assert not await store.delete_cap(TENANT, DAY)
    assert await store.delete_rate_limit(KEY)
    assert await store.delete_share_quota(TENANT, "premium", 3600)
    assert await store.list_caps() == [SpendCap(TENANT, Window.parse("rolling:3600"), 50)]
    assert await store.list_rate_limits() == [] and await store.list_share_quotas() == []


async def test_load_static_never_clobbers_admin_values(store) -> None:
    await store.load_static([SpendCap(TENANT, DAY, 100), SpendCap(KEY, DAY, 5)], [RateLimit(TENANT, rpm=60)])
    await store.set_cap(SpendCap(TENANT, DAY, 999))  # an operator raised it at run time
    await store.load_static([SpendCap(TENANT, DAY, 200)], [RateLimit(TENANT, rpm=30)])
    caps = await store.list_caps()
    assert SpendCap(TENANT, DAY, 999) in caps  # admin wins
    assert SpendCap(KEY, DAY, 5) not in caps  # dropped from the policy file: gone
    assert await store.list_rate_limits() == [RateLimit(TENANT, 30, None)]  # static follows the file


async def test_get_spend_without_cap_and_reset_scope(store) -> None:
    admitted = await store.admit(request())
    status = await store.get_spend(TENANT, DAY)
    assert status.limit_micros is None and status.remaining_micros is None
    await store.set_cap(SpendCap(TENANT, DAY, 1000))
    await store.set_rate_limit(RateLimit(TENANT, rpm=1))
    held = await store.admit(request(cand(cost=300)))
    await store.settle(held.reservation_id, 900, 1)
    assert (await store.get_spend(TENANT, DAY)).spent_micros == 900
    assert not (await store.admit(request(cand(cost=50)))).admitted
    await store.reset_scope(TENANT)
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.remaining_micros) == (0, 1000)
    assert (await store.admit(request(cand(cost=50)))).admitted  # the rpm cell was cleared too
    assert await store.settle(admitted.reservation_id, 1, 1) == "settled"


async def test_client_keys_store_only_the_hash(store) -> None:
    key_id, plaintext = await store.create_key("acme", team="search")
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    record = await store.lookup_key(digest)
    assert record is not None and (record.key_id, record.tenant, record.team) == (key_id, "acme", "search")
    assert await store.lookup_key(hashlib.sha256(b"wrong").hexdigest()) is None
    with pytest.raises(ValueError, match="already exists"):
        await store.create_key("other", key_id=key_id)
    assert await store.revoke_key(key_id)
    assert not await store.revoke_key(key_id)
    assert await store.lookup_key(digest) is None  # revoked here: no cache delay
    if isinstance(store, RedisQuotaStore):
        stored = await store.client.keys(store.prefix + "*")
        assert not any(plaintext.encode() in k for k in stored)


# ---- Redis only ------------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisQuotaStore]:
    store = RedisQuotaStore(redis_server.url, namespace=uuid.uuid4().hex[:12], timeout_s=2.0)
    yield store
    await store.close()


async def test_concurrent_admissions_share_round_trips(redis_store: RedisQuotaStore) -> None:
    await redis_store.set_cap(SpendCap(TENANT, DAY, 10 * 400))
    before = redis_store._caller.round_trips
    results = await asyncio.gather(*(redis_store.admit(request()) for _ in range(32)))
    assert redis_store._caller.round_trips - before < 32  # pipelined, not one trip each
    assert sum(r.admitted for r in results) == 10  # and still exact: each script is atomic
    assert (await redis_store.get_spend(TENANT, DAY)).reserved_micros == 4000


async def test_scripts_reload_after_script_flush(redis_store: RedisQuotaStore) -> None:
    assert (await redis_store.admit(request())).admitted
    await redis_store.client.script_flush()
    assert (await redis_store.admit(request())).admitted
    results = await asyncio.gather(*(redis_store.admit(request()) for _ in range(3)))
    await redis_store.client.script_flush()
    results += await asyncio.gather(*(redis_store.admit(request()) for _ in range(3)))  # NOSCRIPT inside a pipeline
    assert all(r.admitted for r in results)


async def test_every_key_carries_the_namespace_hash_tag(redis_store: RedisQuotaStore) -> None:
    await redis_store.set_cap(SpendCap(TENANT, DAY, 10_000))
    await redis_store.set_rate_limit(RateLimit(Scope("model", "gpt-4o"), rpm=10, tpm=10_000))
    await redis_store.set_share_quota(ShareQuota(TENANT, "standard", 1.0, 60))
    admitted = await redis_store.admit(request())
    await redis_store.create_key("acme")
    keys = await redis_store.client.keys("*" + redis_store.prefix[1:-2] + "*")
    assert len(keys) >= 6
    assert all(k.decode().startswith(redis_store.prefix) for k in keys)
    await redis_store.settle(admitted.reservation_id, 1, 1)


async def test_a_finished_reservation_shrinks_to_its_state(redis_store: RedisQuotaStore) -> None:
    """Records are kept for idempotent repeats: at thousands of requests/s, only the state."""
    await redis_store.set_cap(SpendCap(TENANT, DAY, 10_000))
    settled = await redis_store.admit(request())
    released = await redis_store.admit(request())
    await redis_store.settle(settled.reservation_id, 100, 5)
    await redis_store.release(released.reservation_id)
    for rid, state in ((settled.reservation_id, b"s"), (released.reservation_id, b"r")):
        key = f"{redis_store.prefix}res:{rid}"
        fields = await redis_store.client.hgetall(key)
        assert fields[b"st"] == state
        assert not {b"amt", b"tok", b"dl", b"d"} & set(fields)
        assert 0 < await redis_store.client.ttl(key) <= redis_store.record_retention_s
    assert await redis_store.settle(settled.reservation_id, 100, 5) == "duplicate"
    assert (await redis_store.get_spend(TENANT, DAY)).spent_micros == 100


async def test_revocation_on_another_replica_is_honoured_within_the_cache_ttl(redis_server: RedisServer) -> None:
    namespace = uuid.uuid4().hex[:12]
    replica_a = RedisQuotaStore(redis_server.url, namespace=namespace, key_cache_ttl_s=0.2)
    replica_b = RedisQuotaStore(redis_server.url, namespace=namespace)
    key_id, plaintext = await replica_b.create_key("acme")
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert (await replica_a.lookup_key(digest)).tenant == "acme"
    assert await replica_b.revoke_key(key_id)
    await asyncio.sleep(0.25)
    assert await replica_a.lookup_key(digest) is None
    await replica_a.close()
    await replica_b.close()


async def test_limits_set_on_one_replica_apply_on_another_at_once(redis_server: RedisServer) -> None:
    namespace = uuid.uuid4().hex[:12]
    replica_a = RedisQuotaStore(redis_server.url, namespace=namespace)
    replica_b = RedisQuotaStore(redis_server.url, namespace=namespace)
    await replica_b.set_cap(SpendCap(TENANT, DAY, 500))
    assert (await replica_a.admit(request())).admitted
    assert not (await replica_b.admit(request())).admitted  # 400 held by A + 400 > 500
    await replica_b.set_cap(SpendCap(TENANT, DAY, 800))
    assert (await replica_a.admit(request())).admitted
    await replica_a.close()
    await replica_b.close()


async def test_open_store_picks_the_implementation_from_the_url(redis_server: RedisServer) -> None:
    assert isinstance(open_store(None), MemoryQuotaStore)
    shared = open_store(redis_server.url, failure_mode="fail_closed", namespace=uuid.uuid4().hex[:12])
    assert isinstance(shared, RedisQuotaStore) and shared.failure_mode == "fail_closed"
    assert await shared.ping()
    await shared.close()


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match="worst_case_micros"):
        CandidateCost("m", "p", "standard", -1, 10)
    with pytest.raises(ValueError, match="provider"):
        CandidateCost("m", "", "standard", 1, 10)
    with pytest.raises(ValueError, match="scope.kind"):
        Scope("org", "x")
    with pytest.raises(ValueError, match="candidates"):
        AdmissionRequest("r", [TENANT], [])
    with pytest.raises(ValueError, match="rolling:N"):
        Window.parse("week")
    with pytest.raises(ValueError, match="max_share"):
        ShareQuota(TENANT, "premium", 1.5, 60)


async def test_a_failing_script_is_reported_not_taken_for_an_outage(redis_store: RedisQuotaStore) -> None:
    await redis_store.set_cap(SpendCap(TENANT, DAY, 1000))
    # corrupt one reservation record the way a bug would: its settle script then fails
    admitted = await redis_store.admit(request())
    await redis_store.client.hset(redis_store.prefix + "res:" + admitted.reservation_id, "d", "not json")
    assert await redis_store.settle(admitted.reservation_id, 1, 1) == "unknown"  # not queued: it would fail again
    assert redis_store.script_errors == 1 and redis_store.redis_failures == 0
    following = await redis_store.admit(request())
    assert following.admitted and not following.degraded  # Redis was not marked down


async def test_admissions_batched_into_one_script_call_fail_alone(redis_store: RedisQuotaStore) -> None:
    """Concurrent admits share one `admit_many` call; a payload that breaks the script fails
    only its own caller, and the others are decided as if each had been sent alone."""
    from redis.exceptions import ResponseError

    await redis_store.set_cap(SpendCap(TENANT, DAY, 3 * 400))
    before = redis_store._caller.round_trips
    good = [redis_store.admit(request()) for _ in range(5)]
    broken = redis_store._caller.call("admit", b"{not json")
    *results, failure = await asyncio.gather(*good, broken, return_exceptions=True)
    assert redis_store._caller.round_trips - before == 1
    assert isinstance(failure, ResponseError) and "invalid token" in str(failure)
    assert [r.admitted for r in results] == [True, True, True, False, False]  # the cap affords three
    assert (await redis_store.get_spend(TENANT, DAY)).reserved_micros == 1200


async def test_finished_reservations_in_memory_share_one_record_per_state() -> None:
    store = MemoryQuotaStore()
    await store.set_cap(SpendCap(TENANT, DAY, 10_000))
    settled = [(await store.admit(request())).reservation_id for _ in range(3)]
    released = [(await store.admit(request())).reservation_id for _ in range(2)]
    for rid in settled:
        assert await store.settle(rid, 100, 5) == "settled"
    for rid in released:
        assert await store.release(rid)
    assert len({id(store._reservations[rid]) for rid in settled}) == 1
    assert len({id(store._reservations[rid]) for rid in released}) == 1
    assert [await store.settle(rid, 100, 5) for rid in settled + released] == ["duplicate"] * 3 + ["released"] * 2
    status = await store.get_spend(TENANT, DAY)
    assert (status.spent_micros, status.reserved_micros) == (300, 0)
