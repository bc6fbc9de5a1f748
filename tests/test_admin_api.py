"""The admin API and spend/quota enforcement through HTTP, against a real redis-server.

Two gateway instances share one Redis: a change made through one holds on the other at once.
"""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest

from gateway.policy import default_policy_path
from tests.redis_server import RedisServer
from tests.servers import CLIENT_KEY, Running, start_gateway

ADMIN_KEY = "admin-secret-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture
async def pair(sim: Running, redis_server: RedisServer, tmp_path):
    """Two gateways on one Redis (a fresh namespace per test via FLUSHDB)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    await client.aclose()
    policy = tmp_path / "policy.yaml"
    shutil.copy(default_policy_path(), policy)
    config = f"policy: {policy}\n"
    env = {"REDIS_URL": redis_server.url, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    a = await start_gateway(sim.url, config, **env)
    b = await start_gateway(sim.url, config, **env)
    a.policy_path = policy  # type: ignore[attr-defined]
    yield a, b
    await a.stop()
    await b.stop()


async def call(gw: Running, method: str, path: str, headers: dict, json: object = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, gw.url + path, json=json, headers=headers) as r:
            return r.status, await r.json(), r.headers.copy()


def chat(content: str = "Say hi", model: str = "gpt-4o-mini", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def test_admin_auth(pair) -> None:
    a, _ = pair
    assert (await call(a, "GET", "/admin/caps", {}))[0] == 401
    assert (await call(a, "GET", "/admin/caps", {"Authorization": "Bearer nope"}))[0] == 401
    status, body, _ = await call(a, "GET", "/admin/caps", CLIENT)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert (await call(a, "GET", "/admin/caps", ADMIN))[0] == 200


async def test_admin_disabled_without_key(sim: Running) -> None:
    gw = await start_gateway(sim.url)
    try:
        status, body, _ = await call(gw, "GET", "/admin/caps", ADMIN)
        assert status == 403 and body["error"]["code"] == "admin_disabled"
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    ("method", "path", "payload", "param"),
    [
        ("PUT", "/admin/caps", {"window": "day", "limit_usd": 1}, "scope"),
        ("PUT", "/admin/caps", {"scope": "planet:earth", "window": "day", "limit_usd": 1}, "scope"),
        ("PUT", "/admin/caps", {"scope": "tenant:a", "window": "week", "limit_usd": 1}, "window"),
        ("PUT", "/admin/caps", {"scope": "tenant:a", "window": "day", "limit_usd": -1}, "limit_usd"),
        ("PUT", "/admin/caps", {"scope": "tenant:a", "window": "day"}, "limit_usd"),
        ("PUT", "/admin/caps", {"scope": "tenant:a", "window": "day", "limit_usd": 1, "extra": 1}, "extra"),
        ("PUT", "/admin/rate-limits", {"scope": "tenant:a"}, "rpm"),
        ("PUT", "/admin/rate-limits", {"scope": "tenant:a", "rpm": 0}, "rpm"),
        ("PUT", "/admin/rate-limits", {"scope": "tenant:a", "tpm": "lots"}, "tpm"),
        ("PUT", "/admin/share-quotas", {"scope": "tenant:a", "tier": "gold", "max_share": 0.2}, "tier"),
        ("PUT", "/admin/share-quotas", {"scope": "tenant:a", "tier": "premium", "max_share": 2}, "max_share"),
        ("PUT", "/admin/share-quotas", {"scope": "tenant:a", "tier": "premium", "max_share": 0.2, "window_s": 0}, "window_s"),
        ("GET", "/admin/spend", None, "scope"),
        ("GET", "/admin/spend?scope=tenant:a&window=year", None, "window"),
        ("POST", "/admin/spend/reset", {}, "scope"),
        ("POST", "/admin/keys", {}, "tenant"),
        ("POST", "/admin/keys", {"tenant": ""}, "tenant"),
        ("POST", "/admin/keys", {"tenant": "a", "team": 5}, "team"),
        ("DELETE", "/admin/caps?scope=tenant:a", None, "window"),
    ],
)
async def test_admin_validation_names_the_field(pair, method: str, path: str, payload: object, param: str) -> None:
    a, _ = pair
    status, body, _ = await call(a, method, path, ADMIN, payload)
    assert status == 400, body
    assert body["error"]["param"] == param


async def test_cap_set_on_one_replica_holds_on_the_other(pair) -> None:
    a, b = pair
    status, body, _ = await call(a, "PUT", "/admin/caps", ADMIN, {"scope": "tenant:team-a", "window": "day", "limit_usd": 0.000001})
    assert status == 200 and body["limit_usd"] == 0.000001
    _, listed, _ = await call(b, "GET", "/admin/caps", ADMIN)
    assert {"scope": "tenant:team-a", "window": "day", "limit_usd": 0.000001} in listed["data"]
    status, body, headers = await call(b, "POST", "/v1/chat/completions", CLIENT, chat())
    assert status == 429
    assert body["error"]["code"] == "budget_exceeded"
    assert "tenant:team-a" in body["error"]["message"] and "day" in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1
    status, _, _ = await call(a, "DELETE", "/admin/caps?scope=tenant:team-a&window=day", ADMIN)
    assert status == 200
    assert (await call(b, "POST", "/v1/chat/completions", CLIENT, chat()))[0] == 200
    assert (await call(a, "DELETE", "/admin/caps?scope=tenant:team-a&window=day", ADMIN))[0] == 404


async def test_spend_is_settled_and_reported(pair) -> None:
    a, b = pair
    await call(a, "PUT", "/admin/caps", ADMIN, {"scope": "tenant:team-a", "window": "month", "limit_usd": 10})
    for _ in range(3):
        assert (await call(b, "POST", "/v1/chat/completions", CLIENT, chat(max_tokens=20)))[0] == 200
    spend = {}
    for _ in range(50):  # settling happens after the response, off the client's path
        _, spend, _ = await call(a, "GET", "/admin/spend?scope=tenant:team-a&window=month", ADMIN)
        if spend["reserved_usd"] == 0 and spend["spent_usd"] > 0:
            break
        await asyncio.sleep(0.02)
    assert spend["reserved_usd"] == 0
    assert 0 < spend["spent_usd"] < 0.01
    assert spend["remaining_usd"] == pytest.approx(10 - spend["spent_usd"])
    assert spend["resets_at"] > 0
    status, _, _ = await call(a, "POST", "/admin/spend/reset", ADMIN, {"scope": "tenant:team-a"})
    assert status == 200
    _, after, _ = await call(a, "GET", "/admin/spend?scope=tenant:team-a&window=month", ADMIN)
    assert after["spent_usd"] == 0


async def test_credit_limit_picks_an_affordable_model(pair) -> None:
    a, b = pair
    body = chat("Analyze step by step the trade-offs of these designs " * 30, model="auto", max_tokens=2000)
    _, planned, _ = await call(a, "POST", "/v1/route", CLIENT, body)
    costs = [c["estimated_cost_usd"] for c in planned["plan"]["candidates"]]
    assert len(costs) >= 2 and costs[0] > min(costs)
    limit = (costs[0] + min(costs)) / 2  # affords a cheaper candidate, not the primary
    await call(a, "PUT", "/admin/caps", ADMIN, {"scope": "key:" + _env_key_id(), "window": "day", "limit_usd": limit})
    status, response, headers = await call(b, "POST", "/v1/chat/completions", CLIENT, body)
    assert status == 200, response
    assert headers["x-gateway-model"] != planned["plan"]["candidates"][0]["model"]
    assert headers["x-gateway-route-reason"].startswith("credit_limit")


def _env_key_id() -> str:
    from gateway.auth import hash_key

    return f"env-{hash_key(CLIENT_KEY)[:8]}"


async def test_rate_limit_429_with_openai_headers(pair) -> None:
    a, b = pair
    await call(a, "PUT", "/admin/rate-limits", ADMIN, {"scope": "tenant:team-a", "rpm": 2})
    statuses = []
    for _ in range(3):
        status, body, headers = await call(b, "POST", "/v1/chat/completions", CLIENT, chat())
        statuses.append(status)
    assert statuses[:2] == [200, 200] and statuses[2] == 429
    assert body["error"]["code"] == "rate_limited"
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]
    assert int(headers["retry-after"]) >= 1


async def test_keys_created_and_revoked_across_replicas(pair) -> None:
    a, b = pair
    status, created, _ = await call(a, "POST", "/admin/keys", ADMIN, {"tenant": "acme", "team": "web"})
    assert status == 201 and created["key"].startswith("sk-")
    their = {"Authorization": f"Bearer {created['key']}"}
    status, body, headers = await call(b, "POST", "/v1/chat/completions", their, chat())
    assert status == 200
    status, _, _ = await call(a, "DELETE", f"/admin/keys/{created['key_id']}", ADMIN)
    assert status == 200
    await asyncio.sleep(1.2)  # replicas cache key lookups for up to a second
    assert (await call(b, "POST", "/v1/chat/completions", their, chat()))[0] == 401
    assert (await call(a, "DELETE", f"/admin/keys/{created['key_id']}", ADMIN))[0] == 404


async def test_policy_reload_through_admin(pair) -> None:
    a, b = pair
    path = a.policy_path  # type: ignore[attr-defined]
    original = path.read_text()
    _, before, _ = await call(b, "POST", "/v1/route", CLIENT, chat())
    path.write_text(original.replace("routes:", "routes: [", 1))
    status, body, _ = await call(a, "POST", "/admin/policy/reload", ADMIN)
    assert status == 400 and body["error"]["code"] == "invalid_policy"
    assert before["policy_version"] in body["error"]["message"]
    version_line = next(line for line in original.splitlines() if line.startswith("version:"))
    path.write_text(original.replace(version_line, 'version: "via-admin"', 1))
    status, body, _ = await call(a, "POST", "/admin/policy/reload", ADMIN)
    assert status == 200 and body["policy_version"].startswith("via-admin+") and body["replicas_notified"]
    version = ""
    for _ in range(40):  # the other replica follows within its sync interval
        _, routed, _ = await call(b, "POST", "/v1/route", CLIENT, chat())
        version = routed["policy_version"]
        if version.startswith("via-admin+"):
            break
        await asyncio.sleep(0.1)
    assert version.startswith("via-admin+")
