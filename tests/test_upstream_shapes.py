"""An OpenAI-compatible upstream that answers with the wrong shapes (found by fuzzing the
upstream side): the attempt fails as malformed_response and the request fails over or
ends with an explicit error, never with a crash; a failure of ours after a stream began
ends it with an error event, and never corrupts the connection for the next request."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from gateway import forward
from tests.servers import Running, read_sse, start_app, start_gateway

CHAT = "/v1/chat/completions"


def chunk(**choice: object) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None, **choice}]}


BROKEN_CHUNKS = [
    {**chunk(), "choices": "Hello"},
    {**chunk(), "choices": ["Hello"]},
    chunk(delta="Hello"),
    chunk(delta={"content": 42}),
    chunk(finish_reason=7),
    {**chunk(), "usage": [5, 2]},
]


async def broken_upstream(first: dict) -> Running:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in (first, chunk(), chunk(delta={}, finish_reason="stop")):
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post(CHAT, handler)
    return await start_app(app)


@pytest.mark.parametrize("first", BROKEN_CHUNKS, ids=range(len(BROKEN_CHUNKS)))
async def test_a_chunk_of_the_wrong_shape_is_a_malformed_answer(first: dict, auth: dict) -> None:
    upstream = await broken_upstream(first)
    gw = await start_gateway(upstream.url)  # every provider points at it; only the OpenAI path exists
    try:
        async with aiohttp.ClientSession(headers=auth) as session:
            request = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(gw.url + CHAT, json=request) as r:
                text = await r.text()
                assert "openai/gpt-4o-mini:malformed_response" in r.headers["x-gateway-attempts"]
                # nothing else could answer: the route's static answer, or an explicit upstream error
                if r.status == 200:
                    assert r.headers["x-gateway-degraded"] == "static" and text.rstrip().endswith("data: [DONE]")
                else:
                    assert r.status in (502, 503) and json.loads(text)["error"]["code"] != "internal_error", text
    finally:
        await gw.stop()
        await upstream.stop()


async def test_a_failure_of_ours_mid_stream_ends_it_with_an_error_event(sim: Running, auth: dict, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    track = forward.UpstreamStream._track
    calls = {"n": 0}

    def failing_after_three(self, chunk):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("a bug")
        return track(self, chunk)

    monkeypatch.setattr(forward.UpstreamStream, "_track", failing_after_three)
    gw = await start_gateway(sim.url, "upstream: {first_byte_timeout_s: 10}\n")
    try:
        async with aiohttp.ClientSession(headers=auth) as session:
            # a slow stream: its chunks come in several reads, so the failure is after the headers
            request = {"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "[[fault:stall_after=2,stall_ms=50]] tell me a long story"}]}
            async with session.post(gw.url + CHAT, json=request) as r:
                assert r.status == 200
                events = await read_sse(r)
            last = json.loads(events[-1])
            assert last["error"]["code"] == "internal_error" and b"[DONE]" not in events
            # the connection is still good for the next request
            async with session.post(gw.url + CHAT, json={**request, "stream": False}) as r:
                assert r.status == 200
    finally:
        await gw.stop()


async def test_a_failure_after_the_stream_ends_closes_the_connection_instead_of_corrupting_it(
        sim: Running, auth: dict, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def failing_close(self) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(forward.UpstreamStream, "aclose", failing_close)  # raised in the handler's finally
    gw = await start_gateway(sim.url)
    try:
        async with aiohttp.ClientSession(headers=auth) as session:
            request = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(gw.url + CHAT, json=request) as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):  # cut, not followed by a second response
                    await r.read()
            async with session.post(gw.url + CHAT, json={**request, "stream": False}) as r:
                assert r.status == 200 and (await r.json())["object"] == "chat.completion"
    finally:
        await gw.stop()
