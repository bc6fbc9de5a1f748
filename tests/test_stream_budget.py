"""A stream that outgrows its reservation must ask for more, and stop when the cap says no."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from gateway.policy import default_policy_path
from tests.servers import CLIENT_KEY, read_sse, start_gateway, start_simulator

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": "Bearer admin-k"}


async def test_stream_past_its_reservation_is_cut_at_the_cap(tmp_path) -> None:
    # Paced like a real model (400 chunks/s): cutting the stream stops the generation. An
    # unpaced upstream can deliver all 400 chunks, and its usage block, in one socket read
    # before the first check, and then the whole answer is what it really cost.
    sim = await start_simulator(default_completion_tokens=400, token_rate=400)
    policy = tmp_path / "policy.yaml"
    # Reserve as if the answer were one token long, so the stream outgrows it at once.
    policy.write_text(default_policy_path().read_text().replace("default_max_tokens: 4096", "default_max_tokens: 1"))
    gw = await start_gateway(sim.url, f"policy: {policy}\n", GATEWAY_ADMIN_KEY="admin-k")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me a long story"}], "stream": True}
    try:
        async with aiohttp.ClientSession() as session:
            # The cap affords the one-token reservation plus a little, far less than 400 tokens.
            cap = {"scope": "tenant:team-a", "window": "day", "limit_usd": 0.00002}
            async with session.put(gw.url + "/admin/caps", json=cap, headers=ADMIN) as r:
                assert r.status == 200
            async with session.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                assert r.status == 200
                events = await read_sse(r)
            assert events[-1] != b"[DONE]"
            error = orjson.loads(events[-1])["error"]
            assert error["code"] == "budget_exceeded"
            content_chunks = [e for e in events[:-1] if orjson.loads(e)["choices"]]
            assert 32 <= len(content_chunks) < 400
            spend = {}
            for _ in range(50):
                async with session.get(gw.url + "/admin/spend?scope=tenant:team-a&window=day", headers=ADMIN) as r:
                    spend = await r.json()
                if spend["reserved_usd"] == 0 and spend["spent_usd"] > 0:
                    break
                await asyncio.sleep(0.02)
        assert spend["reserved_usd"] == 0
        # Settled at what was streamed: over the one-token reservation, and above the cap by
        # at most one check interval (32 tokens of gpt-4o-mini output, about $0.00002).
        assert 0 < spend["spent_usd"] <= cap["limit_usd"] + 0.00002
    finally:
        await gw.stop()
        await sim.stop()
