"""gateway_quota_denials counts the requests the caps and rate limits refused, by code."""

from __future__ import annotations

import aiohttp

from tests.servers import CLIENT_KEY, start_gateway, start_simulator

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": "Bearer admin-k"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def denials(metrics_text: str, code: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(f'gateway_quota_denials_total{{code="{code}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_cap_and_rate_limit_denials_are_counted() -> None:
    sim = await start_simulator()
    gw = await start_gateway(sim.url, GATEWAY_ADMIN_KEY="admin-k")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json=BODY, headers=AUTH) as r:
                assert r.status == 200  # admitted and answered: no denial
            cap = {"scope": "tenant:team-a", "window": "day", "limit_usd": 0.000001}
            async with session.put(gw.url + "/admin/caps", json=cap, headers=ADMIN) as r:
                assert r.status == 200
            for _ in range(2):
                async with session.post(gw.url + "/v1/chat/completions", json=BODY, headers=AUTH) as r:
                    assert r.status == 429
                    assert (await r.json())["error"]["code"] == "budget_exceeded"
            async with session.delete(gw.url + "/admin/caps?scope=tenant:team-a&window=day", headers=ADMIN) as r:
                assert r.status == 200
            limit = {"scope": "tenant:team-a", "rpm": 1}
            async with session.put(gw.url + "/admin/rate-limits", json=limit, headers=ADMIN) as r:
                assert r.status == 200
            statuses = []
            for _ in range(3):
                async with session.post(gw.url + "/v1/chat/completions", json=BODY, headers=AUTH) as r:
                    statuses.append(r.status)
            async with session.get(gw.url + "/metrics") as r:
                text = await r.text()
        assert statuses.count(429) == 2
        assert denials(text, "budget_exceeded") == 2
        assert denials(text, "rate_limited") == 2
    finally:
        await gw.stop()
        await sim.stop()
