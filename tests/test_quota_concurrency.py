"""Exactness across replicas and behaviour through Redis outages, against a real redis-server.

Four OS processes, each with its own event loop and Redis client, play four gateway
replicas admitting 100 requests each at the same moment.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
import uuid
from typing import Any, Iterator

import pytest

from gateway.quota.base import AdmissionRequest, CandidateCost, QuotaUnavailable, RateLimit, Scope, ShareQuota, SpendCap
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.windows import DAY
from tests.redis_server import RedisServer

PROCESSES = 4
PER_PROCESS = 100
WORST = 1_000  # micro-dollars a request may cost at most
CAP = 100 * WORST  # affords ~100 requests at their worst case
SHARE = 0.2
RPM = 100


def _request(tenant: str, *candidates: CandidateCost) -> AdmissionRequest:
    return AdmissionRequest(uuid.uuid4().hex, [Scope("tenant", tenant)], list(candidates))


async def _replica(url: str, namespace: str, barrier: Any) -> dict[str, Any]:
    store = RedisQuotaStore(url, namespace=namespace, timeout_s=10.0)
    await store.client.ping()  # connect before the starting gun
    rng = random.Random()
    report: dict[str, Any] = {}

    async def spend_once() -> tuple[bool, int, str]:
        admission = await store.admit(_request("cap", CandidateCost("m", "p", "standard", WORST, 10)))
        if not admission.admitted:
            return False, 0, ""
        await asyncio.sleep(rng.uniform(0, 0.02))  # the upstream call
        actual = rng.randint(WORST // 2, WORST)
        return True, actual, await store.settle(admission.reservation_id, actual, 10)

    async def route_once() -> int | None:
        plan = (CandidateCost("opus", "a", "premium", 10, 10), CandidateCost("haiku", "a", "economy", 1, 10))
        admission = await store.admit(_request("share", *plan))
        if admission.admitted:
            await store.settle(admission.reservation_id, 1, 10)
        return admission.candidate_index

    async def rate_once() -> bool:
        admission = await store.admit(_request("rate", CandidateCost("m", "p", "standard", 1, 10)))
        if admission.admitted:
            await store.settle(admission.reservation_id, 1, 10)
        return admission.admitted

    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    report["spend"] = await asyncio.gather(*(spend_once() for _ in range(PER_PROCESS)))
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    report["route"] = await asyncio.gather(*(route_once() for _ in range(PER_PROCESS)))
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    started = time.time()
    report["rate"] = await asyncio.gather(*(rate_once() for _ in range(PER_PROCESS)))
    report["rate_window"] = (started, time.time())
    await store.close()
    return report


def _replica_process(url: str, namespace: str, barrier: Any, results: Any) -> None:
    results.put(asyncio.run(_replica(url, namespace, barrier)))


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture(scope="module")
def replicas(server: RedisServer) -> dict[str, Any]:
    """Run the four replicas once; the tests below each check one part of what happened."""
    namespace = uuid.uuid4().hex[:12]

    async def configure() -> None:
        store = RedisQuotaStore(server.url, namespace=namespace)
        await store.set_cap(SpendCap(Scope("tenant", "cap"), DAY, CAP))
        await store.set_share_quota(ShareQuota(Scope("tenant", "share"), "premium", SHARE, 3600))
        await store.set_rate_limit(RateLimit(Scope("tenant", "rate"), rpm=RPM))
        await store.close()

    asyncio.run(configure())
    # forkserver: a clean process (no inherited loop or threads) that imports this module
    # once and forks the replicas from it, much faster than four spawns on two cores
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [
        context.Process(target=_replica_process, args=(server.url, namespace, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    return {"namespace": namespace, "reports": reports}


async def test_spend_cap_is_exact_across_processes(server: RedisServer, replicas: dict[str, Any]) -> None:
    outcomes = [item for report in replicas["reports"] for item in report["spend"]]
    admitted = [(actual, outcome) for ok, actual, outcome in outcomes if ok]
    assert len(admitted) >= CAP // WORST  # every reservation of the worst case fitted
    assert all(outcome == "settled" for _, outcome in admitted)  # every admitted request settled
    settled_total = sum(actual for actual, _ in admitted)
    store = RedisQuotaStore(server.url, namespace=replicas["namespace"])
    status = await store.get_spend(Scope("tenant", "cap"), DAY)
    assert status.spent_micros == settled_total
    assert settled_total <= CAP  # reserving the worst case keeps it exact, not merely close
    assert status.reserved_micros == 0
    assert await store.client.zcard(store.prefix + "rq:tenant:cap") == 0  # no reservation left behind
    await store.close()


def test_premium_share_is_held_across_processes(replicas: dict[str, Any]) -> None:
    picks = [index for report in replicas["reports"] for index in report["route"]]
    assert len(picks) == PROCESSES * PER_PROCESS and None not in picks
    share = picks.count(0) / len(picks)
    assert abs(share - SHARE) <= 0.01


def test_rpm_is_held_across_processes(replicas: dict[str, Any]) -> None:
    admitted = sum(sum(report["rate"]) for report in replicas["reports"])
    first = min(report["rate_window"][0] for report in replicas["reports"])
    last = max(report["rate_window"][1] for report in replicas["reports"])
    refilled = (last - first) * RPM / 60  # GCRA lets one more through every 60/RPM seconds
    assert RPM <= admitted <= RPM + refilled + 1


# ---- Redis outages ---------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


async def test_fail_open_keeps_admitting_and_reconciles(own_server: RedisServer) -> None:
    store = RedisQuotaStore(
        own_server.url, failure_mode="fail_open", timeout_s=0.3, retry_interval_s=0.1, snapshot_interval_s=0.1
    )
    tenant = Scope("tenant", "acme")
    await store.set_cap(SpendCap(tenant, DAY, 10_000_000))
    await store.refresh_snapshot()
    charged: list[int] = []
    degraded: list[bool] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            try:
                admission = await store.admit(
                    AdmissionRequest(
                        uuid.uuid4().hex, [tenant], [CandidateCost("m", "p", "standard", 1_000, 10)], ttl_s=2
                    )
                )
                assert admission.admitted
                degraded.append(admission.degraded)
                actual = random.randint(1, 1_000)
                assert await store.settle(admission.reservation_id, actual, 10) in ("settled", "queued")
                charged.append(actual)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)
                return
            await asyncio.sleep(0.005)

    runner = asyncio.ensure_future(traffic())
    await asyncio.sleep(0.1)
    await asyncio.to_thread(own_server.stop)
    await asyncio.sleep(0.3)
    outage_admissions = degraded.count(True)
    await asyncio.to_thread(own_server.start)
    for _ in range(200):  # until admissions come from Redis again
        await asyncio.sleep(0.02)
        if degraded and not degraded[-1] and degraded.count(True) > 0:
            break
    await asyncio.sleep(0.1)
    stop.set()
    await runner
    assert errors == []
    assert outage_admissions > 0 and store.degraded_count == degraded.count(True)
    assert degraded[0] is False and degraded[-1] is False
    await store.reconcile()
    status = await store.get_spend(tenant, DAY)
    assert status.spent_micros == sum(charged)  # nothing admitted during the outage went uncharged
    await store.close()


async def test_fail_closed_raises_promptly_when_redis_is_down_or_hung(own_server: RedisServer) -> None:
    store = RedisQuotaStore(own_server.url, failure_mode="fail_closed", timeout_s=0.3, retry_interval_s=0.2)
    tenant = Scope("tenant", "acme")
    await store.set_cap(SpendCap(tenant, DAY, 10_000))

    def request() -> AdmissionRequest:
        return AdmissionRequest(uuid.uuid4().hex, [tenant], [CandidateCost("m", "p", "standard", 100, 10)])

    held = await store.admit(request())
    assert held.admitted and not held.degraded

    own_server.pause()  # a hung server: connections open, nothing answers
    started = time.monotonic()
    with pytest.raises(QuotaUnavailable):
        await store.admit(request())
    assert time.monotonic() - started < 0.3 + 0.5
    assert await store.settle(held.reservation_id, 70, 10) == "queued"  # spend is never dropped
    own_server.resume()

    await asyncio.to_thread(own_server.stop)
    await asyncio.sleep(0.25)
    started = time.monotonic()
    with pytest.raises(QuotaUnavailable):
        await store.admit(request())
    assert time.monotonic() - started < 0.3 + 0.5
    assert store.degraded_count == 0  # fail_closed never serves from local counters

    await asyncio.to_thread(own_server.start)  # same port, data kept, scripts gone (NOSCRIPT path)
    await asyncio.sleep(0.25)
    for _ in range(50):
        try:
            admission = await store.admit(request())
            break
        except QuotaUnavailable:
            await asyncio.sleep(0.05)
    assert admission.admitted and not admission.degraded
    await store.reconcile()
    assert (await store.get_spend(tenant, DAY)).spent_micros == 70
    await store.close()


async def test_degraded_admissions_respect_the_last_known_shared_spend(own_server: RedisServer) -> None:
    store = RedisQuotaStore(own_server.url, failure_mode="fail_open", timeout_s=0.3, retry_interval_s=0.1)
    tenant = Scope("tenant", "acme")
    await store.set_cap(SpendCap(tenant, DAY, 1_000))

    def request(cost: int) -> AdmissionRequest:
        return AdmissionRequest(uuid.uuid4().hex, [tenant], [CandidateCost("m", "p", "standard", cost, 10)])

    await store.settle((await store.admit(request(400))).reservation_id, 400, 10)
    assert (await store.admit(request(400))).admitted  # still held when Redis goes away
    await store.refresh_snapshot()
    await asyncio.to_thread(own_server.stop)

    too_much = await store.admit(request(300))
    assert too_much.degraded and not too_much.admitted
    assert too_much.denial.code == "budget_exceeded"
    fits = await store.admit(request(200))
    assert fits.degraded and fits.admitted
    assert store.degraded_count == 2 and store.redis_failures >= 1
    assert await store.settle(fits.reservation_id, 150, 10) == "settled"

    await asyncio.to_thread(own_server.start)
    await asyncio.sleep(0.15)
    await store.reconcile()
    assert (await store.get_spend(tenant, DAY)).spent_micros == 550
    await store.close()


async def test_fail_open_starts_without_redis_and_seeds_it_on_return(own_server: RedisServer) -> None:
    await asyncio.to_thread(own_server.stop)
    store = RedisQuotaStore(own_server.url, failure_mode="fail_open", timeout_s=0.3, retry_interval_s=0.1)
    tenant = Scope("tenant", "acme")
    await store.load_static([SpendCap(tenant, DAY, 500)])  # the policy file, read at start-up
    request = AdmissionRequest(uuid.uuid4().hex, [tenant], [CandidateCost("m", "p", "standard", 400, 10)])
    first = await store.admit(request)
    assert first.admitted and first.degraded
    assert not (await store.admit(request)).admitted  # the static cap holds locally too
    await asyncio.to_thread(own_server.start)
    await asyncio.sleep(0.15)
    await store.reconcile()
    assert await store.list_caps() == [SpendCap(tenant, DAY, 500)]
    await store.close()
