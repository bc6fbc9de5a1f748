"""/v1/route end to end, routed completions with their headers, the decision log, hot reload."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import aiohttp
import orjson

from gateway.policy import default_policy_path
from tests.servers import CLIENT_KEY, Process, Running, free_port, upstream_env, wait_for_http

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
LEGAL = (
    "Analyze the following master services agreement clause by clause. Compare the indemnification and "
    "limitation of liability provisions, assess the trade-offs for each party, and explain step by step "
    "which obligations survive termination. " * 12
)


async def route(gw: Running, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/route", json=body, headers={**AUTH, **(headers or {})}) as r:
            return r.status, await r.json()


async def test_route_dry_run_shape(gw: Running, sim: Running) -> None:
    status, payload = await route(gw, {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert status == 200
    c = payload["classification"]
    assert set(c) >= {"complexity", "intent", "risk", "format", "latency_class", "tokens", "reasons"}
    assert c["complexity"]["tier"] in ("trivial", "simple", "standard", "complex", "expert")
    assert 0.0 <= c["complexity"]["score"] <= 1.0
    candidates = payload["plan"]["candidates"]
    assert candidates and candidates[0]["role"] == "primary"
    assert {"model", "provider", "score", "reasons"} <= set(candidates[0])
    assert payload["policy_version"]
    async with aiohttp.ClientSession() as session:  # nothing was forwarded
        async with session.get(sim.url + "/_sim/stats") as r:
            assert (await r.json())["requests_total"] == 0


async def test_easy_and_hard_prompts_route_differently(gw: Running) -> None:
    _, easy = await route(gw, {"model": "auto", "messages": [{"role": "user", "content": "Hi there!"}]})
    _, hard = await route(gw, {"model": "auto", "messages": [{"role": "user", "content": LEGAL}]})
    assert easy["classification"]["complexity"]["score"] < hard["classification"]["complexity"]["score"]
    easy_primary, hard_primary = easy["plan"]["candidates"][0], hard["plan"]["candidates"][0]
    tiers = ["small", "medium", "large", "premium"]
    assert tiers.index(easy_primary["tier"]) < tiers.index(hard_primary["tier"])
    assert easy_primary["estimated_cost_usd"] < hard_primary["estimated_cost_usd"]


async def test_card_number_raises_risk_and_privacy(gw: Running) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Charge card 4111 1111 1111 1111 for the order"}]}
    _, payload = await route(gw, body)
    assert payload["classification"]["risk"] in ("high", "regulated")
    assert payload["plan"]["privacy_tier"] in ("restricted", "regulated")


async def test_route_errors(gw: Running) -> None:
    status, payload = await route(gw, {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and payload["error"]["param"] == "model"
    status, payload = await route(gw, {"model": "auto", "messages": []})
    assert status == 400 and payload["error"]["param"] == "messages"
    status, payload = await route(gw, {"model": "auto", "messages": [{"role": "user", "content": "x"}]}, {"x-gateway-risk": "spicy"})
    assert status == 400 and payload["error"]["param"] == "x-gateway-risk"
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/route", json={"model": "auto", "messages": []}) as r:
            assert r.status == 401


async def test_auto_completion_is_routed_and_logged(gw: Running) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": LEGAL}], "max_tokens": 50}
    _, planned = await route(gw, body)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body, headers={**AUTH, "x-request-id": "legal-1"}) as r:
            assert r.status == 200
            payload = await r.json()
            headers = r.headers
    primary = planned["plan"]["candidates"][0]
    assert headers["x-gateway-model"] == primary["model"] == payload["model"]
    assert headers["x-gateway-provider"] == primary["provider"]
    assert headers["x-gateway-policy-version"] == planned["policy_version"]
    assert headers["x-gateway-route-reason"] == ",".join(primary["reasons"])
    c = planned["classification"]
    assert headers["x-gateway-task-class"] == f"{c['intent']}:{c['complexity']['tier']}"
    record = await _last_decision(gw, "legal-1")
    assert record["tenant"] == "team-a"
    assert record["chosen"] == f"{primary['provider']}/{primary['model']}"
    assert record["policy_version"] == planned["policy_version"]
    assert record["usage"]["completion_tokens"] > 0 and record["cost_usd"] >= 0
    assert record["attempts"][0]["outcome"] == "ok"
    assert record["outcome"] == "ok"
    assert "messages" not in record and LEGAL[:40] not in orjson.dumps(record).decode()


async def _last_decision(gw: Running, request_id: str) -> dict:
    assert gw.folder is not None
    path = gw.folder / "decisions.jsonl"
    for _ in range(100):  # the log is written by a background thread
        if path.exists():
            for line in reversed(path.read_text().splitlines()):
                record = orjson.loads(line)
                if record["request_id"] == request_id:
                    return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"no decision logged for {request_id}")


async def test_sighup_reload_keeps_running_policy_on_bad_file(sim: Running, tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    shutil.copy(default_policy_path(), policy)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policy: {policy}\ndecision_log: {{path: {tmp_path / 'd.jsonl'}}}\n")
    port = free_port()
    proc = Process(["serve", "--config", str(config), "--port", str(port)], upstream_env(sim.url))
    url = f"http://127.0.0.1:{port}"
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    try:
        await asyncio.to_thread(wait_for_http, url + "/health/live")
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(url + "/v1/route", json=body) as r:
                before = (await r.json())["policy_version"]
            original = policy.read_text()
            policy.write_text(original.replace("routes:", "routes: [oops", 1))
            os.kill(proc.proc.pid, signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with session.post(url + "/v1/route", json=body) as r:
                assert r.status == 200 and (await r.json())["policy_version"] == before
            version_line = next(line for line in original.splitlines() if line.startswith("version:"))
            policy.write_text(original.replace(version_line, 'version: "reloaded-1"', 1))
            os.kill(proc.proc.pid, signal.SIGHUP)
            after = before
            for _ in range(50):
                await asyncio.sleep(0.1)
                async with session.post(url + "/v1/route", json=body) as r:
                    after = (await r.json())["policy_version"]
                if after != before:
                    break
            assert after.startswith("reloaded-1+")
    finally:
        code, err = await asyncio.to_thread(proc.terminate)
    assert code == 0
    assert "reload rejected" in err and "not valid YAML" in err
