"""Streaming failover: invisible before the answer starts, one stitched answer after it.

Before the first piece of the answer reached the client, a broken stream is a plain
failed attempt and the next candidate answers as if nothing happened. After bytes were
sent, a cut or a stall makes the gateway ask the next candidate to continue the partial
text, and splices that into the same stream: one id, one role delta, partial +
continuation = the uninterrupted answer, one finish, [DONE]. Where continuing is
impossible (tool calls, JSON output, nobody left, deadline) the stream ends with an
explicit error event and never with a silent [DONE]. The x-gateway-attempts header left
with the first byte, so a continued stream repeats the whole path, `+cont` included, in
an SSE comment (`: x-gateway-attempts: ...`) before [DONE] or the error event.

Faults here come through the simulator's control API with a count, or as model-scoped
directives: a bare directive would also break the continuation request, which resends
the conversation.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.simulate.respond import abort_connection
from tests.failover_env import clean_slate, gw, sim  # noqa: F401 - fixtures, used by name
from tests.servers import Running, start_app, start_gateway
from tests.test_chaos import (
    AUTH,
    CHAT,
    PRIMARY,
    Attempt,
    assert_clean_stream,
    assert_error_body,
    assert_within_deadline,
    candidates,
    chat,
    decision,
    full_answer,
    gateway_config,
    key,
    logged_attempts,
    parse_attempts,
    queue_fault,
    request,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
APIS = list(PRIMARY)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}




@pytest.mark.parametrize("api", APIS)
async def test_a_failure_between_the_role_delta_and_the_first_word_is_invisible(gw: Running, api: str) -> None:
    """The upstream opens the message, then stalls before any content: plain failover."""
    prompt = f"[[fault@{PRIMARY[api]}:stall_after=0,stall_ms=3000]] tell me about otters"
    plan = await candidates(gw, request(PRIMARY[api], prompt))
    reply = await chat(gw, request(PRIMARY[api], prompt, stream=True))
    assert_within_deadline(reply)
    assert reply.attempts == [Attempt(key(api), "timeout"), Attempt(key(api), "timeout"), Attempt(plan[1], "ok")]
    assert reply.headers["x-gateway-degraded"] == "fallback"
    assert_clean_stream(reply, full_answer(prompt))
    assert not any(a.cont for a in logged_attempts(await decision(gw, reply)))
    assert reply.trailer is None  # the headers told the whole story


@pytest.mark.parametrize("api", APIS)
async def test_a_cut_mid_answer_continues_on_the_next_candidate(sim: Running, gw: Running, api: str) -> None:
    prompt = "tell me about otters"
    plan = await candidates(gw, request(PRIMARY[api], prompt))
    await queue_fault(sim, "cut_after=4", PRIMARY[api], count=1)
    body = request(PRIMARY[api], prompt, stream=True, stream_options={"include_usage": True})
    reply = await chat(gw, body)
    assert_within_deadline(reply)
    assert_clean_stream(reply, full_answer(prompt))
    chunks = reply.chunks
    # The first four words came from the primary, the rest from the continuation.
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert {c["model"] for c in content[:4]} == {PRIMARY[api]}
    assert {c["model"] for c in content[4:]} == {plan[1].split("/")[1]}
    # One usage chunk, after the finish, covering both segments.
    usage = [c for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0] is chunks[-1] and not usage[0]["choices"]
    assert usage[0]["usage"]["completion_tokens"] >= 12
    record = await decision(gw, reply)
    path = [Attempt(key(api), "ok"), Attempt(key(api), "connection", cont=True), Attempt(plan[1], "ok", cont=True)]
    assert logged_attempts(record) == path
    assert reply.final_attempts == path  # repeated in the stream, since the headers were gone
    assert record["chosen"] == plan[1]


async def test_the_continuation_tells_the_next_model_where_the_answer_stops(sim: Running, gw: Running) -> None:
    """The simulator continues exactly after the words it is given as the assistant's partial
    answer, so a stitched text equal to the whole answer proves the partial was sent."""
    prompt = "explain the migration of eels"
    await queue_fault(sim, "cut_after=7", PRIMARY["gemini"], count=1)
    reply = await chat(gw, request(PRIMARY["gemini"], prompt, stream=True))
    assert_clean_stream(reply, full_answer(prompt))
    assert reply.text.split()[:7] == full_answer(prompt).split()[:7]


@pytest.mark.parametrize("api", APIS)
async def test_a_stall_mid_answer_continues_within_the_deadline(gw: Running, api: str) -> None:
    prompt = f"[[fault@{PRIMARY[api]}:stall_after=5,stall_ms=4000]] tell me about otters"
    reply = await chat(gw, request(PRIMARY[api], prompt, stream=True))
    assert_within_deadline(reply)
    assert_clean_stream(reply, full_answer(prompt))
    path = logged_attempts(await decision(gw, reply))
    assert path[1] == Attempt(key(api), "timeout", cont=True)
    assert reply.final_attempts == path


@pytest.mark.parametrize("api", APIS)
async def test_a_cut_tool_call_stream_ends_with_an_error_event(sim: Running, gw: Running, api: str) -> None:
    """Half a tool call cannot be continued by another model: the client must know."""
    # Gemini sends a function call whole, in one event: cut right after it, before the finish.
    await queue_fault(sim, "cut_after=1" if api == "gemini" else "cut_after=2", PRIMARY[api], count=1)
    body = request(PRIMARY[api], "what is the weather in Paris", stream=True, tools=[WEATHER_TOOL])
    reply = await chat(gw, body)
    assert_within_deadline(reply)
    assert reply.status == 200
    assert b"[DONE]" not in reply.events, "a broken tool call must never end with [DONE]"
    assert reply.chunks[-1] == {"error": reply.stream_error}
    assert_error_body(reply.stream_error, "connection")
    assert any((ch.get("delta") or {}).get("tool_calls") for c in reply.chunks for ch in c.get("choices") or ())
    record = await decision(gw, reply)
    assert record["outcome"] == "stream_broken"
    assert logged_attempts(record) == [Attempt(key(api), "ok"), Attempt(key(api), "connection", cont=True)]
    assert reply.final_attempts == logged_attempts(record)


async def test_a_cut_json_output_stream_ends_with_an_error_event(sim: Running, gw: Running) -> None:
    """Another model's continuation of half a JSON document is not trustworthy JSON."""
    await queue_fault(sim, "cut_after=2", PRIMARY["openai"], count=1)
    body = request(PRIMARY["openai"], "give me a json object about otters", stream=True,
                   response_format={"type": "json_object"})
    reply = await chat(gw, body)
    assert reply.status == 200
    assert b"[DONE]" not in reply.events
    assert_error_body(reply.stream_error, "connection")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.text)  # the client got a fragment, and was told so


async def test_no_candidate_left_to_continue_ends_with_an_error_event(sim: Running, gw: Running) -> None:
    prompt = "tell me about otters"
    plan = await candidates(gw, request(PRIMARY["openai"], prompt))
    await queue_fault(sim, "cut_after=3", PRIMARY["openai"], count=1)
    await queue_fault(sim, "status=500", None, count=-1)  # then every model, the primary too
    reply = await chat(gw, request(PRIMARY["openai"], prompt, stream=True))
    assert_within_deadline(reply)
    assert reply.status == 200
    assert b"[DONE]" not in reply.events
    assert_error_body(reply.stream_error, "server_error")
    assert reply.text == " ".join(full_answer(prompt).split()[:3])
    path = logged_attempts(await decision(gw, reply))
    assert reply.final_attempts == path
    assert path[:2] == [Attempt(key("openai"), "ok"), Attempt(key("openai"), "connection", cont=True)]
    # Every candidate was asked to continue (the one that broke last), each with one retry.
    tried = [a.key for a in path[2:]]
    assert tried == [k for k in plan[1:] + plan[:1] for _ in range(2)]
    assert all(a.outcome == "server_error" and a.cont for a in path[2:])


async def test_a_continuation_never_restarts_the_message(sim: Running, gw: Running) -> None:
    """Every segment is cut: however many continuations, the client sees one message."""
    prompt = "[[fault:cut_after=2]] describe a sunny day at the beach"
    reply = await chat(gw, request(PRIMARY["openai"], prompt, stream=True))
    assert_within_deadline(reply)
    assert_clean_stream(reply, full_answer(prompt))
    continuations = [a for a in logged_attempts(await decision(gw, reply)) if a.cont and a.outcome == "ok"]
    assert len(continuations) >= 6


async def test_a_stream_that_never_starts_anywhere_is_a_plain_http_error(gw: Running) -> None:
    """Nothing was sent yet: the client gets a status code, not a 200 stream with an error."""
    prompt = "[[fault:stall_after=0,stall_ms=3000]] tell me about otters"
    reply = await chat(gw, request(PRIMARY["anthropic"], prompt, stream=True), budget_ms=1200)
    assert_within_deadline(reply, 1200)
    assert reply.status == 504
    assert not reply.events
    assert_error_body(reply.json["error"], "timeout")
    assert int(reply.headers["retry-after"]) >= 1



class ScriptedOpenAI:
    """An OpenAI-wire upstream: a first answer that breaks right after a paragraph end,
    and a continuation that opens with the paragraph break again, as models do."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            payload = {"id": f"chatcmpl-{len(self.bodies)}", "object": "chat.completion.chunk", "created": 1,
                       "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        continuing = body["messages"][-1]["role"] == "assistant"
        pieces = ["\n\nSecond", " paragraph."] if continuing else ["First", " paragraph.", "\n\n"]
        for piece in [None, *pieces]:
            await response.write(chunk({"role": "assistant", "content": ""} if piece is None else {"content": piece}))
        if not continuing:
            await abort_connection(request)
            return response
        await response.write(chunk({}, "stop") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def test_a_partial_answer_ending_in_whitespace_is_continued_cleanly(sim: Running) -> None:
    """Anthropic rejects a final assistant turn ending in whitespace: the prefill is sent
    without it, and the continuation's leading whitespace (already with the client) dropped."""
    upstream = ScriptedOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handle)
    scripted = await start_app(app)
    gw = await start_gateway(sim.url, gateway_config(), OPENAI_BASE_URL=f"{scripted.url}/v1")
    try:
        reply = await chat(gw, request("gpt-4.1-mini", "two paragraphs please", stream=True),
                           headers={"x-gateway-task": "extract"})
    finally:
        await gw.stop()
        await scripted.stop()
    assert_clean_stream(reply, "First paragraph.\n\nSecond paragraph.")
    assert len(upstream.bodies) == 2
    assert upstream.bodies[1]["model"] == "gpt-4.1-nano"
    assert upstream.bodies[1]["messages"][-1] == {"role": "assistant", "content": "First paragraph."}


async def test_a_continued_stream_tells_the_client_its_whole_attempt_path(sim: Running, gw: Running) -> None:
    await queue_fault(sim, "cut_after=3", PRIMARY["openai"], count=1)
    body = request(PRIMARY["openai"], "tell me about otters", stream=True)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + CHAT, json=body, headers=AUTH) as response:
            raw = await response.read()
    comments = [line[len(b": x-gateway-attempts: "):] for line in raw.split(b"\n")
                if line.startswith(b": x-gateway-attempts: ")]
    assert len(comments) == 1
    path = parse_attempts(comments[0].decode())
    assert path[0] == Attempt(key("openai"), "ok")
    assert path[-1].cont and path[-1].outcome == "ok"
    assert raw.index(b": x-gateway-attempts: ") < raw.index(b"data: [DONE]")
