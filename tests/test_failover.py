"""Retries, deadlines and the degradation ladder, end to end against the simulator.

The ladder (tests/policies/chaos.yaml): a fallback candidate answering is `fallback`;
every candidate failing for availability reasons retries once with the route's reduced
request (`reduced`, max_tokens 5); still failing, the route's static step answers:
a static completion (`static`, status 200) on the `translate` route, an explicit
503/429/504 with retry-after elsewhere. A client can always tell which one it got.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from gateway.state import STATE
from tests.failover_env import clean_slate, gw, sim  # noqa: F401 - fixtures, used by name
from tests.servers import Running, start_app, start_gateway
from tests.test_chaos import (
    PRIMARY,
    Attempt,
    assert_error_body,
    assert_within_deadline,
    candidates,
    chat,
    full_answer,
    gateway_config,
    key,
    queue_fault,
    request,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
SINGLE = {"x-gateway-task": "classify"}  # the route with the primary only
STATIC = {"x-gateway-task": "translate"}  # the route whose ladder ends in a static completion
STATIC_TEXT = "Static answer: the assistant is busy, try again in a minute."




# --------------------------------------------------------------------------- retries


async def test_a_short_retry_after_is_honoured_on_the_same_provider(sim: Running, gw: Running) -> None:
    await queue_fault(sim, "rate_limited,retry_after=0.3", PRIMARY["anthropic"], count=1)
    started = time.perf_counter()
    reply = await chat(gw, request(PRIMARY["anthropic"], "tell me about otters"))
    assert reply.status == 200
    assert reply.attempts == [Attempt(key("anthropic"), "rate_limited"), Attempt(key("anthropic"), "ok")]
    assert time.perf_counter() - started >= 0.3  # it waited as told before trying again
    assert "x-gateway-degraded" not in reply.headers  # the requested model answered


async def test_a_retry_after_beyond_the_budget_goes_straight_to_the_next_provider(sim: Running, gw: Running) -> None:
    await queue_fault(sim, "rate_limited,retry_after=2", PRIMARY["anthropic"], count=1)
    plan = await candidates(gw, request(PRIMARY["anthropic"], "tell me about otters"))
    reply = await chat(gw, request(PRIMARY["anthropic"], "tell me about otters"), budget_ms=1500)
    assert reply.status == 200
    assert reply.attempts == [Attempt(key("anthropic"), "rate_limited"), Attempt(plan[1], "ok")]
    assert reply.elapsed < 1.0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_clients_own_bad_request_is_not_retried_elsewhere(gw: Running, stream: bool) -> None:
    prompt = f"[[fault@{PRIMARY['gemini']}:status=422]] tell me about otters"
    reply = await chat(gw, request(PRIMARY["gemini"], prompt, stream=stream))
    assert reply.status == 422
    assert_error_body(reply.json["error"], "bad_request")
    assert reply.attempts == [Attempt(key("gemini"), "bad_request")]
    assert "x-gateway-degraded" not in reply.headers


# --------------------------------------------------------------------------- deadlines


class StallingUpstream:
    """An OpenAI-wire upstream that sends the headers and half the body, then goes silent."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()
        body = b'{"id": "chatcmpl-stall", "object": "chat.completion", "choices": []}'
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(30)  # cancelled when the gateway gives up on this connection
        return response


async def test_a_json_body_that_stalls_after_the_headers_is_a_timeout_and_fails_over(sim: Running) -> None:
    """The idle timeout covers a JSON body too: a stalled body must not eat the whole budget."""
    upstream = StallingUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handle)
    stalling = await start_app(app)
    gw = await start_gateway(sim.url, gateway_config(), OPENAI_BASE_URL=f"{stalling.url}/v1")
    try:
        plan = await candidates(gw, request(PRIMARY["openai"], "tell me about otters"))
        reply = await chat(gw, request(PRIMARY["openai"], "tell me about otters"), budget_ms=4000)
    finally:
        await gw.stop()
        await stalling.stop()
    assert reply.status == 200
    assert reply.attempts == [Attempt(key("openai"), "timeout")] * 2 + [Attempt(plan[1], "ok")]
    assert upstream.requests == 2
    assert reply.elapsed < 2.0, "two idle timeouts of 0.3 s, not the 4 s budget"
    assert reply.text == full_answer("tell me about otters")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_budget_shorter_than_one_attempt_is_kept(gw: Running, stream: bool) -> None:
    prompt = "[[fault:delay_ms=3000]] tell me about otters"
    reply = await chat(gw, request(PRIMARY["openai"], prompt, stream=stream), budget_ms=250)
    assert_within_deadline(reply, 250)
    assert reply.status == 504
    assert_error_body(reply.json["error"], "timeout")
    assert reply.attempts[0] == Attempt(key("openai"), "timeout")
    assert int(reply.headers["retry-after"]) >= 1


# --------------------------------------------------------------------------- the degradation ladder


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_reduced_step_retries_with_the_policys_smaller_request(sim: Running, gw: Running, stream: bool) -> None:
    model = PRIMARY["openai"]
    await queue_fault(sim, "status=503", model, count=2)  # the try and the retry of the first pass
    reply = await chat(gw, request(model, "tell me about otters", stream=stream, max_tokens=200), headers=SINGLE)
    assert reply.status == 200
    assert reply.headers["x-gateway-degraded"] == "reduced"
    assert reply.attempts == [Attempt(key("openai"), "overloaded")] * 2 + [Attempt(key("openai"), "ok")]
    # The policy's reduced max_tokens is 5: five words, cut at the length limit.
    assert reply.text == " ".join(full_answer("tell me about otters").split()[:5])
    assert reply.finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_static_completion_is_a_valid_answer_that_says_it_is_static(gw: Running, stream: bool) -> None:
    reply = await chat(gw, request(PRIMARY["gemini"], "[[fault:status=500]] hello", stream=stream), headers=STATIC)
    assert reply.status == 200
    assert reply.headers["x-gateway-degraded"] == "static"
    assert reply.headers["x-gateway-model"] == "gateway-static"
    assert reply.text == STATIC_TEXT
    assert reply.finish_reason == "stop"
    if stream:
        assert reply.events[-1] == b"[DONE]"
        assert {c["model"] for c in reply.chunks} == {"gateway-static"}
    else:
        assert reply.json["model"] == "gateway-static"
    # Every candidate failed twice (try + retry) in each of the two passes, normal and reduced.
    attempts = reply.attempts
    assert len(attempts) == 12 and all(a.outcome == "server_error" for a in attempts)


async def test_static_error_comes_after_both_passes_with_retry_after(gw: Running) -> None:
    reply = await chat(gw, request(PRIMARY["anthropic"], "[[fault:status=500]] hello"), headers=SINGLE)
    assert reply.status == 503
    assert reply.headers["x-gateway-degraded"] == "static"
    assert reply.headers["retry-after"] == "7"  # the policy's static retry_after_s
    assert reply.json["error"]["type"] == "service_unavailable"
    assert "Chaos route unavailable" in reply.json["error"]["message"]
    assert reply.attempts == [Attempt(key("anthropic"), "server_error")] * 4


async def test_a_client_can_always_tell_a_degraded_answer_from_a_normal_one(sim: Running, gw: Running) -> None:
    model = PRIMARY["openai"]
    seen = {}
    normal = await chat(gw, request(model, "tell me about otters"))
    seen[normal.headers.get("x-gateway-degraded")] = normal
    fallback = await chat(gw, request(model, f"[[fault@{model}:auth]] tell me about otters"))
    seen[fallback.headers.get("x-gateway-degraded")] = fallback
    gw.app[STATE].breakers.reset()
    await queue_fault(sim, "status=500", model, count=2)
    reduced = await chat(gw, request(model, "tell me about otters"), headers=SINGLE)
    seen[reduced.headers.get("x-gateway-degraded")] = reduced
    static = await chat(gw, request(model, "[[fault:status=500]] hello"), headers=STATIC)
    seen[static.headers.get("x-gateway-degraded")] = static
    assert set(seen) == {None, "fallback", "reduced", "static"}
    assert all(r.status == 200 for r in seen.values())
    assert normal.headers["x-gateway-model"] == model
    assert fallback.headers["x-gateway-model"] != model
    assert static.headers["x-gateway-model"] == "gateway-static"
