"""Random mutations of valid chat bodies, sent over HTTP to a real gateway: whatever the
body, the answer is a success or an OpenAI-shaped error, and never the 500 of a bug.

The bodies are valid requests with one to three values replaced (by any JSON type, empty
containers, huge numbers, odd strings), removed or added; seeded, so a failure repeats.
(It found `"functions": 1.5` without `tools` crashing the classifier.) The admin API gets
the same treatment: random fields and values on every route."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import aiohttp
import orjson
import pytest

from tests import mutation
from tests.servers import Running

ATOMS: list[Any] = [
    None, True, False, 0, -1, 1, 2**63, -(2**63), 2**64, 1e308, -1e308, 0.5, "", " ", "x", "auto", "gpt-4o-mini",
    "user", "system", "assistant", "tool", "function", "developer", "text", "image_url", "json_schema", "json_object",
    "\u0000", "a" * 5000, "https://x/y.png", [], {}, [None], [{}], {"": None}, {"type": "text"}, {"type": "function"},
    "none", "required", "auto:cost", "openai/gpt-4o-mini", "flex", "-5", "NaN",
]
KEYS = ["type", "role", "content", "text", "name", "function", "arguments", "json_schema", "schema", "image_url",
        "url", "tool_calls", "id", "parameters", "include_usage"]
EXTRA_FIELDS = ["stream", "n", "tools", "functions", "function_call", "response_format", "service_tier", "metadata",
                "stream_options", "max_tokens", "max_completion_tokens", "tool_choice", "user", "seed", "logit_bias"]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
BASES: list[dict[str, Any]] = [
    {"model": "gpt-4o-mini", "max_tokens": 16,
     "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello, summarize this"}]},
    {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this image"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
    {"model": "auto:quality", "stream": True, "stream_options": {"include_usage": True}, "tools": [TOOL],
     "tool_choice": "auto", "messages": [{"role": "user", "content": "write code"}]},
    {"model": "gpt-4o-mini", "n": 2, "metadata": {"task": "code"},
     "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
     "messages": [{"role": "user", "content": "give json"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "ok"}, {"role": "user", "content": "again"}]},
    {"model": "claude-haiku-4-5", "max_completion_tokens": 20, "stop": ["x"],
     "messages": [{"role": "user", "content": "hi"}]},
    {"model": "gemini-3.5-flash", "stream": True, "functions": [{"name": "g"}], "function_call": {"name": "g"},
     "messages": [{"role": "user", "content": "hi"}]},
]


def random_value(rng: random.Random) -> Any:
    return mutation.random_value(rng, ATOMS, KEYS)


def mutated(rng: random.Random) -> dict[str, Any]:
    body = copy.deepcopy(rng.choice(BASES))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(mutation.places(body)))
        parent = mutation.parent_of(body, path)
        roll = rng.random()
        if roll < 0.7:
            parent[path[-1]] = random_value(rng)
        elif roll < 0.85:
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(EXTRA_FIELDS)] = random_value(rng)
        else:
            parent.append(random_value(rng))
    return body


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_mutated_body_never_gets_the_500_of_a_bug(gw: Running, auth: dict, seed: int) -> None:
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(headers=auth) as session:
        for _ in range(250):
            body = mutated(rng)
            path = "/v1/chat/completions" if rng.random() < 0.8 else "/v1/route"
            async with session.post(gw.url + path, data=json.dumps(body).encode(),  # (orjson stops at 64 bits)
                                    headers={"Content-Type": "application/json"}) as r:
                text = await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
            assert r.status != 500, (body, text)
            if r.status >= 400:
                error = orjson.loads(text)["error"]
                assert set(error) == {"message", "type", "param", "code"}, (body, text)
    # both kinds of answer were exercised, and validation refused a fair share by name
    assert statuses.get(200, 0) > 20 and statuses.get(400, 0) > 20, statuses


ADMIN_KEY = "admin-fuzz-key"
ADMIN_FIELDS = ["scope", "id", "window", "limit_usd", "rpm", "tpm", "tier", "max_share", "window_s", "tenant",
                "key_id", "team", "x"]
ADMIN_ATOMS: list[Any] = [None, True, 0, -1, 1, 0.5, 1e308, 2**64, "", "x", "tenant", "team", "key", "route", "model",
                          "global", "day", "month", "rolling:3600", "rolling:0", "rolling:x", "premium", "*", "a" * 3000,
                          [], {}, [1], {"a": 1}, "NaN"]
ADMIN_CALLS = [("GET", "/admin/caps"), ("PUT", "/admin/caps"), ("DELETE", "/admin/caps"), ("PUT", "/admin/rate-limits"),
               ("DELETE", "/admin/rate-limits"), ("PUT", "/admin/share-quotas"), ("DELETE", "/admin/share-quotas"),
               ("GET", "/admin/spend"), ("POST", "/admin/spend/reset"), ("POST", "/admin/keys"),
               ("DELETE", "/admin/keys/k"), ("POST", "/admin/policy/reload"), ("GET", "/admin/breakers")]


async def test_random_admin_calls_get_an_answer_or_an_openai_shaped_error(sim: Running) -> None:
    from tests.servers import start_gateway

    rng = random.Random(5)
    gw = await start_gateway(sim.url, GATEWAY_ADMIN_KEY=ADMIN_KEY)
    statuses: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as session:
            for _ in range(400):
                method, path = rng.choice(ADMIN_CALLS)
                fields = {rng.choice(ADMIN_FIELDS): copy.deepcopy(rng.choice(ADMIN_ATOMS)) for _ in range(rng.randint(0, 5))}
                data = json.dumps(fields).encode() if rng.random() < 0.9 else rng.choice([b"{", b"", b"null", b"[]"])
                params = {k: str(v)[:60] for k, v in fields.items()} if method in ("GET", "DELETE") else {}
                async with session.request(method, gw.url + path, data=data, params=params) as r:
                    text = await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                assert r.status < 500, (method, path, params, data, text)
                if r.status >= 400:
                    assert set(orjson.loads(text)["error"]) == {"message", "type", "param", "code"}, text
    finally:
        await gw.stop()
    assert statuses.get(200, 0) + statuses.get(201, 0) > 20 and statuses.get(400, 0) > 50, statuses
