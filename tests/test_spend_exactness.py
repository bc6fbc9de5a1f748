"""Spend caps and route quotas hold exactly across gateway replicas, through real HTTP.

Four `gateway serve` OS processes (each its own port, event loop and Redis client) share
one real redis-server; 400 concurrent requests are spread over them round-robin. The
simulator plays the upstreams, as its own process. Each test uses its own tenant (client
keys map to tenants through GATEWAY_API_KEYS), so their caps and counters never meet.

Why the bounds below are exact rather than "about": a request is admitted only while
spent + reserved + its worst case fits the cap, and the worst case is known here (a pinned
model, no failover, an explicit max_tokens the simulator always reaches), so:
  - answered requests >= floor(cap / worst): every refusal saw the cap nearly full of
    worst cases, and nothing else holds any of it;
  - settled spend <= cap + what answers cost beyond their reservation (0 when the
    classifier's prompt estimate is at least the simulator's prompt count, as here).

The helpers at the top are shared with tests/test_quota_failures.py.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import aiohttp
import orjson
import pytest
import yaml

from tests.redis_server import RedisServer
from tests.servers import ROOT, free_port, upstream_env, wait_for_http

POLICIES = Path(__file__).parent / "policies"
BASE_POLICY = POLICIES / "quota-shared.yaml"
ADMIN_KEY = "admin-secret-quota-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# One client key per tenant: "sk-<tenant>" belongs to tenant "<tenant>".
TENANTS = ("cap", "share", "rpm", "kill", "admin", "outage", "closed", "lossy")
CHAT = "/v1/chat/completions"
MODEL = "gpt-4.1"  # the default route's only model: a pinned request's worst case is exact
MAX_TOKENS = 12  # below the simulator's natural answer (16 words): every answer uses all of it
# Forty one-letter words: the simulator counts 40 prompt tokens, the gateway's estimate a
# few more, so an answer costs just under the worst case the admission reserved.
PROMPT = "a " * 40
REPLICAS = 4
BURST = 400


def key_of(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-{tenant}"}


def chat_body(prompt: str = PROMPT, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": prompt}], **extra}


# ---- prices, read from the catalog file itself (not through the gateway's code) ---------


def _prices() -> dict[str, tuple[Fraction, Fraction]]:
    raw = yaml.safe_load((ROOT / "catalog" / "models.yaml").read_text())
    return {m["id"]: (Fraction(str(m["price"]["input"])), Fraction(str(m["price"]["output"]))) for m in raw["models"]}


PRICES = _prices()


def cost_micros(model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """USD per 1M tokens is micro-USD per token; a request's cost is rounded up to 1 micro-USD."""
    price_in, price_out = PRICES[model]
    return math.ceil(prompt_tokens * price_in + completion_tokens * price_out)


def micros(usd: float | None) -> int:
    return round((usd or 0) * 1_000_000)


# ---- policies ----------------------------------------------------------------------------


def write_policy(folder: Path, name: str, **limits: Any) -> Path:
    """The base test policy with some `limits` settings replaced (failure_mode, reservation_ttl_s...)."""
    policy = yaml.safe_load(BASE_POLICY.read_text())
    policy["version"] = f"{policy['version']}-{name}"
    policy["limits"].update(limits)
    path = folder / f"policy-{name}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


# ---- real processes ----------------------------------------------------------------------


class ServerProcess:
    """`python -m gateway ...` as an OS process; its output goes to a file (a pipe nobody
    reads would fill up and block a busy server)."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], port: int, folder: Path, name: str, ready_path: str = "/health/live"
    ) -> None:
        self.port = port
        self.ready_path = ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = folder / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], env={**os.environ, **env}, cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            wait_for_http(self.url + self.ready_path, timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.url} did not start; its log:\n{self.log_path.read_text()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no drain, no settle, no goodbye to Redis."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_simulator_process(folder: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(["simulate", "--port", str(port)], {}, port, folder, "simulator", ready_path="/_sim/stats")


def gateway_env(sim_url: str, redis_url: str) -> dict[str, str]:
    return {
        **upstream_env(sim_url),
        "REDIS_URL": redis_url,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_API_KEYS": ",".join(f"sk-{t}={t}" for t in TENANTS),
    }


def start_gateway_process(
    policy: Path, sim_url: str, redis_url: str, folder: Path, name: str, redis_timeout_s: float | None = None
) -> ServerProcess:
    config = folder / f"{name}.yaml"
    text = f"policy: {policy}\ndecision_log: {{path: {folder / (name + '-decisions.jsonl')}}}\n"
    if redis_timeout_s is not None:
        text += f"redis: {{timeout_s: {redis_timeout_s}}}\n"
    config.write_text(text)
    port = free_port()
    args = ["serve", "--config", str(config), "--port", str(port), "--workers", "1", "--log-level", "WARNING"]
    return ServerProcess(args, gateway_env(sim_url, redis_url), port, folder, name)


def start_all(processes: Sequence[ServerProcess]) -> None:
    """Processes were spawned together (they import in parallel); wait for every one."""
    try:
        for process in processes:
            process.wait_ready()
    except BaseException:
        for process in processes:
            process.stop()
        raise


# ---- HTTP --------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]
    seconds: float
    started: float = 0.0  # monotonic, when the request was sent

    @property
    def error_code(self) -> str | None:
        return (self.body.get("error") or {}).get("code")

    @property
    def model(self) -> str | None:
        return self.headers.get("x-gateway-model")


async def call(session: aiohttp.ClientSession, method: str, url: str, headers: Mapping[str, str], json: Any = None) -> Reply:
    started = time.monotonic()
    async with session.request(method, url, json=json, headers=headers) as r:
        raw = await r.read()
        body = orjson.loads(raw) if raw else {}
        return Reply(r.status, r.headers.copy(), body, time.monotonic() - started, started)


def client_session(timeout_s: float = 30.0) -> aiohttp.ClientSession:
    # limit=0: all requests really are in flight at once (the default pool holds 100).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s))


async def admin(gateway: ServerProcess, method: str, path: str, json: Any = None) -> dict[str, Any]:
    async with client_session() as session:
        reply = await call(session, method, gateway.url + path, ADMIN, json)
    assert reply.status == 200, (method, path, reply.status, reply.body)
    return reply.body


async def spend(gateway: ServerProcess, scope: str, window: str) -> dict[str, Any]:
    return await admin(gateway, "GET", f"/admin/spend?scope={scope}&window={window}")


async def settled_spend(gateway: ServerProcess, scope: str, window: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Spend once no reservation is held: settling runs after the response, off the client's path."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await spend(gateway, scope, window)
        if status["reserved_usd"] == 0 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def worst_case_micros(gateway: ServerProcess, tenant: str, body: dict[str, Any]) -> int:
    """What the admission reserves for `body`: estimated input x input price + max_tokens x output price."""
    async with client_session() as session:
        reply = await call(session, "POST", gateway.url + "/v1/route", key_of(tenant), body)
    assert reply.status == 200, reply.body
    tokens = reply.body["classification"]["tokens"]
    assert tokens["output"] == body["max_tokens"]
    primary = reply.body["plan"]["candidates"][0]
    worst = cost_micros(primary["model"], tokens["input"], tokens["output"])
    assert micros(primary["estimated_cost_usd"]) == worst  # the dry run agrees with our arithmetic
    return worst


async def burst(gateways: Sequence[ServerProcess], tenant: str, body: dict[str, Any], count: int = BURST) -> tuple[list[Reply], float]:
    """`count` requests at once, round-robin over the gateways; -> (replies, seconds taken)."""
    async with client_session() as session:
        started = time.monotonic()
        replies = await asyncio.gather(
            *(call(session, "POST", gateways[i % len(gateways)].url + CHAT, key_of(tenant), body) for i in range(count))
        )
        return list(replies), time.monotonic() - started


def assert_shared(replies: Sequence[Reply]) -> None:
    """Every decision came from the shared store, none from a replica's fail_open fallback."""
    degraded = [r for r in replies if r.headers.get("x-gateway-quota") == "degraded"]
    assert not degraded, f"{len(degraded)} of {len(replies)} admissions were decided by local fallback counters"


def answer_cost(reply: Reply) -> int:
    usage = reply.body["usage"]
    return cost_micros(reply.body["model"], usage["prompt_tokens"], usage["completion_tokens"])


# ---- the store, read directly ------------------------------------------------------------


async def decision_records(redis_url: str, tenant: str) -> list[dict[str, Any]]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        entries = await client.xrange("gateway:decisions", "-", "+")
    finally:
        await client.aclose()
    records = [orjson.loads(fields[b"d"]) for _, fields in entries]
    return [r for r in records if r["tenant"] == tenant]


async def active_reservations(redis_url: str) -> int:
    """Reservation records still holding money (state 'a'), whatever their scope."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        active = 0
        async for key in client.scan_iter(match="{gw}:res:*", count=1000):
            if await client.hget(key, "st") == b"a":
                active += 1
        return active
    finally:
        await client.aclose()


# ---- the cluster: 4 replicas, plus one with a short reservation TTL to kill ---------------


@dataclass
class Cluster:
    redis: RedisServer
    simulator: ServerProcess
    gateways: list[ServerProcess]
    short_ttl: ServerProcess  # a fifth replica whose reservations live KILL_TTL_S
    folder: Path


KILL_TTL_S = 2
# The store's deadline per Redis call (default 0.25 s) also counts the replica's own event-loop
# lag: 100 requests landing at once on one replica of a busy 2-core machine can hold a reply
# unread past 0.25 s, and the replica then serves from its local fail_open counters for a
# second, which are exact per replica only. These tests measure the shared store, so they give
# it room; `assert_shared` checks that no answer came from the fallback.
BURST_REDIS_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("quota-exact")
    redis = RedisServer()
    redis.start()
    simulator = start_simulator_process(folder)
    processes: list[ServerProcess] = [simulator]
    try:
        simulator.wait_ready()
        short_policy = write_policy(folder, "short-ttl", reservation_ttl_s=KILL_TTL_S)
        gateways = [
            start_gateway_process(BASE_POLICY, simulator.url, redis.url, folder, f"gw{i}", BURST_REDIS_TIMEOUT_S)
            for i in range(REPLICAS)
        ]
        short_ttl = start_gateway_process(short_policy, simulator.url, redis.url, folder, "gw-short-ttl", BURST_REDIS_TIMEOUT_S)
        processes += [*gateways, short_ttl]
        start_all([*gateways, short_ttl])
        yield Cluster(redis, simulator, gateways, short_ttl, folder)
    finally:
        for process in reversed(processes):
            process.stop()
        redis.close()


# ---- tests ---------------------------------------------------------------------------------


async def test_spend_cap_is_exact_across_four_processes(cluster: Cluster) -> None:
    gateways, scope, window = cluster.gateways, "tenant:cap", "rolling:3600"
    body = chat_body()
    worst = await worst_case_micros(gateways[0], "cap", body)
    cap = 100 * worst  # affords 100 requests at their worst case
    await admin(gateways[0], "PUT", "/admin/caps", {"scope": scope, "window": window, "limit_usd": cap / 1_000_000})

    replies, _ = await burst(gateways, "cap", body)
    assert_shared(replies)

    answered = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert all(r.status == 429 and r.error_code == "budget_exceeded" for r in refused), {(r.status, r.error_code) for r in refused}
    assert all(int(r.headers["retry-after"]) >= 1 and scope in r.body["error"]["message"] for r in refused)
    assert all(r.model == MODEL for r in answered)
    costs = [answer_cost(r) for r in answered]
    overshoot = sum(max(0, c - worst) for c in costs)  # answers dearer than their reservation

    status = await settled_spend(gateways[1], scope, window)
    spent = micros(status["spent_usd"])
    # Every admitted request was settled: nothing stays held, in the tenant's cap or anywhere.
    assert status["reserved_usd"] == 0
    assert await active_reservations(cluster.redis.url) == 0
    # The cap held exactly (never more than one worst case over it, as the issue allows;
    # here not even that) and was used up: less than one more request's worst case is left.
    assert spent <= cap + overshoot <= cap + worst, (spent, cap, overshoot)
    # (At the last refusal the cap was within one worst case of full; answers that settled
    # below their reservation after that gave the difference back.)
    assert cap - spent < worst + sum(max(0, worst - c) for c in costs), (spent, cap)
    # About cap/worst answers: at least that many, at most what the cheapest answer allows.
    assert cap // worst <= len(answered) <= (cap + overshoot) // min(costs), (len(answered), cap, worst, min(costs))
    # The spend recorded is what the answers cost (usage x price), to the micro-dollar.
    assert spent == sum(costs), (spent, sum(costs))
    # ... and what the four replicas' decision logs say they cost.
    records: list[dict[str, Any]] = []
    for _ in range(100):  # the log is flushed to Redis in the background
        records = await decision_records(cluster.redis.url, "cap")
        if len(records) >= len(replies):
            break
        await asyncio.sleep(0.05)
    assert len(records) == len(replies)
    logged = [r for r in records if r["outcome"] == "ok"]
    assert len(logged) == len(answered)
    assert sum(micros(r["cost_usd"]) for r in logged) == spent
    print(f"\ncap={cap} worst={worst} answered={len(answered)}/{len(replies)} spent={spent} "
          f"min_cost={min(costs)} max_cost={max(costs)}")


async def test_premium_share_quota_is_exact_across_four_processes(cluster: Cluster) -> None:
    gateways, max_share = cluster.gateways, 0.2
    quota = {"scope": "tenant:share", "tier": "premium", "max_share": max_share, "window_s": 3600}
    await admin(gateways[0], "PUT", "/admin/share-quotas", quota)
    body = chat_body(model="auto")
    async with client_session() as session:
        plan = (await call(session, "POST", gateways[2].url + "/v1/route", key_of("share"), body)).body["plan"]
    assert [(c["model"], c["tier"]) for c in plan["candidates"]] == [("gpt-5.5", "premium"), ("gpt-4.1-mini", "small")]

    replies, _ = await burst(gateways, "share", body)
    assert_shared(replies)

    assert all(r.status == 200 for r in replies), {(r.status, r.error_code) for r in replies}
    premium = [r for r in replies if r.model == "gpt-5.5"]
    fallback = [r for r in replies if r.model != "gpt-5.5"]
    assert all(r.model == "gpt-4.1-mini" for r in fallback)
    assert all("route_quota" in r.headers["x-gateway-route-reason"].split(",") for r in fallback)
    assert not any("route_quota" in r.headers["x-gateway-route-reason"] for r in premium)
    share = len(premium) / len(replies)
    # The store admits a premium answer only while (premium + 1) <= 0.2 x (all + 1).
    assert len(premium) <= max_share * len(replies)
    assert abs(share - max_share) <= 0.01, share
    assert await active_reservations(cluster.redis.url) == 0
    print(f"\npremium={len(premium)}/{len(replies)} share={share:.4f} limit={max_share}")


async def test_rpm_limit_is_exact_across_four_processes(cluster: Cluster) -> None:
    gateways, rpm = cluster.gateways, 100
    await admin(gateways[3], "PUT", "/admin/rate-limits", {"scope": "tenant:rpm", "rpm": rpm})

    replies, seconds = await burst(gateways, "rpm", chat_body())
    assert_shared(replies)

    admitted = [r for r in replies if r.status == 200]
    limited = [r for r in replies if r.status != 200]
    # GCRA: a full minute's allowance at once, then one more every 60/rpm seconds.
    refill = math.floor(seconds * rpm / 60)
    assert rpm <= len(admitted) <= rpm + refill + 1, (len(admitted), rpm, seconds)
    assert all(r.status == 429 and r.error_code == "rate_limited" for r in limited), {(r.status, r.error_code) for r in limited}
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"]
    for r in admitted:
        assert r.headers["x-ratelimit-limit-requests"] == str(rpm)
        assert 0 <= int(r.headers["x-ratelimit-remaining-requests"]) < rpm
    print(f"\nrpm={rpm} admitted={len(admitted)}/{len(replies)} in {seconds:.2f}s (refill allows {refill})")


async def test_killed_replica_mid_stream_gives_its_reservation_back_after_the_ttl(cluster: Cluster) -> None:
    victim, witness = cluster.short_ttl, cluster.gateways[0]
    scope, window = "tenant:kill", "rolling:3600"
    body = chat_body("[[fault:stall_after=2,stall_ms=10000]] tell me a long story", stream=True)
    worst = await worst_case_micros(victim, "kill", body)
    cap = 10 * worst
    await admin(witness, "PUT", "/admin/caps", {"scope": scope, "window": window, "limit_usd": cap / 1_000_000})

    async with client_session() as session:
        sent = time.monotonic()
        response = await session.post(victim.url + CHAT, json=body, headers=key_of("kill"))
        assert response.status == 200
        first = await response.content.readline()
        assert first.startswith(b"data: ")  # the stream is under way, and stalls after 2 chunks
        held = await spend(witness, scope, window)
        assert micros(held["reserved_usd"]) == worst and held["spent_usd"] == 0
        victim.kill()
        killed = time.monotonic()
        response.close()
    # Nobody settles or releases it: the reservation is held until its TTL passes ...
    after_kill = await spend(witness, scope, window)
    if time.monotonic() - sent < KILL_TTL_S:
        assert micros(after_kill["reserved_usd"]) == worst
    while True:
        status = await spend(witness, scope, window)
        if status["reserved_usd"] == 0 or time.monotonic() - killed > KILL_TTL_S + 5:
            break
        await asyncio.sleep(0.05)
    freed = time.monotonic()
    # ... and then the budget comes back whole, seen from another replica.
    assert status["reserved_usd"] == 0
    assert freed - sent >= KILL_TTL_S - 0.05  # not before the TTL (clock granularity aside)
    assert micros(status["remaining_usd"]) == cap and status["spent_usd"] == 0
    assert await active_reservations(cluster.redis.url) == 0
    print(f"\nreservation {worst} held {freed - sent:.2f}s after the request (TTL {KILL_TTL_S}s), then freed")


async def test_admin_change_through_one_process_holds_on_the_others_at_once(cluster: Cluster) -> None:
    a, b, c, d = cluster.gateways
    cap = {"scope": "tenant:admin", "window": "day"}
    await admin(a, "PUT", "/admin/caps", {**cap, "limit_usd": 0.000001})
    listed = await admin(b, "GET", "/admin/caps")
    assert {**cap, "limit_usd": 0.000001} in listed["data"]
    async with client_session() as session:
        refused = await call(session, "POST", c.url + CHAT, key_of("admin"), chat_body())
        assert refused.status == 429 and refused.error_code == "budget_exceeded"
        assert "tenant:admin" in refused.body["error"]["message"]
        await admin(d, "PUT", "/admin/caps", {**cap, "limit_usd": 1.0})
        assert (await call(session, "POST", c.url + CHAT, key_of("admin"), chat_body())).status == 200
        await admin(b, "PUT", "/admin/rate-limits", {"scope": "tenant:admin", "rpm": 1})
        assert (await call(session, "POST", a.url + CHAT, key_of("admin"), chat_body())).status == 200
        limited = await call(session, "POST", c.url + CHAT, key_of("admin"), chat_body())
        assert limited.status == 429 and limited.error_code == "rate_limited"
        await admin(c, "DELETE", "/admin/rate-limits?scope=tenant:admin")
        await admin(d, "DELETE", "/admin/caps?scope=tenant:admin&window=day")
        assert {**cap, "limit_usd": 1.0} not in (await admin(a, "GET", "/admin/caps"))["data"]
        assert (await call(session, "POST", b.url + CHAT, key_of("admin"), chat_body())).status == 200
