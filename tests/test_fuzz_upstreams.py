"""Answers of the wrong shape from every provider: a proxy in front of the simulator changes
one value (or drops one) in each JSON answer or in one event of each stream, for OpenAI,
Anthropic and Gemini alike. Whatever arrives, the client gets an answer, the route's static
step or an explicit error, never the 500 of a crash, and a stream always ends with [DONE]
or an error event. Seeded, so a failure repeats. (It found a Gemini candidate index that
crashed the stream translator, and OpenAI chunks whose choices were not objects.)"""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import mutation
from tests.servers import Running, start_app, start_gateway

ATOMS: list[Any] = [None, True, 0, -1, 1.5, "", "x", "end_turn", "STOP", "SAFETY", "tool_use", "text_delta",
                    "message_stop", "stop", "length", [], {}, [None], [{}], {"a": 1}]
KEYS = ["type", "text", "delta", "index", "content", "parts", "candidates", "choices", "usage", "usageMetadata",
        "finishReason", "finish_reason", "stop_reason", "input_tokens", "output_tokens", "message", "name",
        "functionCall", "args", "tool_calls", "arguments"]


def mutated(rng: random.Random, doc: Any) -> Any:
    paths = list(mutation.places(doc))
    if not paths:
        return mutation.random_value(rng, ATOMS, KEYS)
    path = rng.choice(paths)
    parent = mutation.parent_of(doc, path)
    if rng.random() < 0.8:
        parent[path[-1]] = mutation.random_value(rng, ATOMS, KEYS)
    else:
        del parent[path[-1]]
    return doc


async def mutating_proxy(upstream: str, rng: random.Random) -> Running:
    async def relay(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session:
            async with session.post(upstream + request.path_qs, data=await request.read(), headers=headers) as r:
                raw, status, kind = await r.read(), r.status, r.headers.get("Content-Type", "")
        if "event-stream" in kind:
            events = raw.split(b"\n\n")
            with_json = [i for i, e in enumerate(events) if b"data: {" in e]
            if with_json:
                i = rng.choice(with_json)
                lines = events[i].split(b"\n")
                lines = [b"data: " + json.dumps(mutated(rng, json.loads(line[6:]))).encode()
                         if line.startswith(b"data: {") else line for line in lines]
                events[i] = b"\n".join(lines)
            return web.Response(body=b"\n\n".join(events), status=status, content_type="text/event-stream")
        try:
            return web.json_response(mutated(rng, json.loads(raw)), status=status)
        except ValueError:
            return web.Response(body=raw, status=status)

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", relay)
    return await start_app(app)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_an_answer_of_any_shape_never_crashes_the_gateway(sim: Running, auth: dict, seed: int) -> None:
    rng = random.Random(seed)
    proxy = await mutating_proxy(sim.url, rng)
    gw = await start_gateway(sim.url, OPENAI_BASE_URL=proxy.url + "/v1", ANTHROPIC_BASE_URL=proxy.url,
                             GEMINI_BASE_URL=proxy.url)
    outcomes: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession(headers=auth) as session:
            for _ in range(120):
                stream = rng.random() < 0.5
                request: dict[str, Any] = {
                    "model": rng.choice(["gpt-4o-mini", "claude-haiku-4-5", "gemini-3.5-flash", "auto"]),
                    "stream": stream, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "hi there"}],
                }
                if rng.random() < 0.3:
                    request["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
                async with session.post(gw.url + "/v1/chat/completions", json=request) as r:
                    text = await r.read()
                outcomes[r.status] = outcomes.get(r.status, 0) + 1
                assert r.status != 500, (request, text[-300:])
                if stream and r.status == 200:
                    assert text.rstrip().endswith(b"data: [DONE]") or b'"error"' in text.rstrip().splitlines()[-1], text[-300:]
    finally:
        await gw.stop()
        await proxy.stop()
    assert outcomes.get(200, 0) > 30, outcomes  # most mutations leave an answer the gateway can still use
