"""Circuit breakers: the BreakerBoard on a fake clock, then a sustained outage end to end.

End to end, one model fails through the simulator's control API (count -1) while traffic
goes on: its breaker opens, the planner skips it (`/v1/route` shows `breaker_open`), the
other providers carry the traffic, a half-open probe into the still-failing model opens
it again for longer, and once the fault is cleared the next probe closes it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.health import BreakerBoard, BreakerSettings
from gateway.providers.errors import ErrorKind
from gateway.state import STATE
from tests.servers import Running, start_gateway
from tests.test_chaos import PRIMARY, Attempt, chat, clear_faults, gateway_config, key, queue_fault, request, route_plan

A, B = "openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def board(**settings: Any) -> tuple[BreakerBoard, FakeClock, list[tuple[str, str, float]]]:
    clock = FakeClock()
    changes: list[tuple[str, str, float]] = []
    defaults = {"consecutive_failures": 3, "min_requests": 10, "open_s": 10.0, "max_open_s": 35.0}
    b = BreakerBoard(BreakerSettings(**{**defaults, **settings}), clock, lambda *c: changes.append(c))
    return b, clock, changes


def fail(b: BreakerBoard, key: str, times: int, kind: ErrorKind = ErrorKind.SERVER_ERROR) -> None:
    for _ in range(times):
        b.begin(key)
        b.record(key, kind)


# --------------------------------------------------------------------------- unit: BreakerBoard


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    b, _, changes = board()
    fail(b, A, 2)
    b.record(A, None)
    fail(b, A, 2)
    assert b.state(A) == "closed" and A not in b.unavailable()
    fail(b, A, 1)
    assert b.state(A) == "open"
    assert b.unavailable() == {A}
    assert changes == [(A, "open", 10.0)]
    assert b.state(B) == "closed"  # one deployment's outage is its own


def test_opens_on_the_error_rate_over_the_window() -> None:
    b, clock, _ = board(consecutive_failures=100, min_requests=10, error_rate=0.5, window_s=30)
    for _ in range(5):
        b.record(A, None)
        b.record(A, ErrorKind.TIMEOUT)
    assert b.state(A) == "open"  # 5 of 10 failed, never more than one in a row

    b, clock, _ = board(consecutive_failures=100, min_requests=10, error_rate=0.5, window_s=30)
    for _ in range(4):
        b.record(A, ErrorKind.TIMEOUT)
    clock.advance(31)  # those fell out of the window
    for _ in range(3):
        b.record(A, ErrorKind.TIMEOUT)
        b.record(A, None)
    for _ in range(4):
        b.record(A, None)
    assert b.state(A) == "closed"  # 3 of 10 inside the window


def test_random_failures_at_volume_do_not_open_it() -> None:
    """At 30% random failures, five in a row happen by chance every few hundred attempts;
    with traffic enough to measure, the error rate decides, not a lucky run."""
    b, clock, _ = board(consecutive_failures=5, min_requests=20, error_rate=0.5)
    draw = random.Random(7)
    for _ in range(5000):
        clock.advance(0.01)
        b.record(A, ErrorKind.SERVER_ERROR if draw.random() < 0.3 else None)
        assert b.state(A) == "closed"


def test_a_deployment_going_down_under_heavy_traffic_opens_quickly() -> None:
    """The error rate looks at the latest outcomes only, so a long healthy history does not
    hide an outage for long."""
    b, clock, _ = board(consecutive_failures=5, min_requests=20, error_rate=0.5, window_s=30)
    for _ in range(3000):
        clock.advance(0.005)
        b.record(A, None)
    failures = 0
    while b.state(A) == "closed":
        clock.advance(0.005)
        b.record(A, ErrorKind.TIMEOUT)
        failures += 1
    assert failures <= 50


def test_failures_of_the_request_itself_do_not_count() -> None:
    b, _, _ = board()
    for kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER):
        fail(b, A, 5, kind)
    assert b.state(A) == "closed"


@pytest.mark.parametrize("kind", [ErrorKind.AUTH, ErrorKind.NOT_FOUND])
def test_an_unusable_deployment_is_marked_down_at_once(kind: ErrorKind) -> None:
    b, _, _ = board()
    fail(b, A, 1, kind)
    assert b.state(A) == "open"


def test_half_open_lets_one_probe_through_and_a_success_closes() -> None:
    b, clock, changes = board()
    fail(b, A, 3)
    clock.advance(9.9)
    assert A in b.unavailable()
    clock.advance(0.1)
    assert A not in b.unavailable()  # the probe may go
    assert b.state(A) == "half_open"
    b.begin(A)
    assert A in b.unavailable()  # one probe at a time
    b.record(A, None)
    assert b.state(A) == "closed" and not b.unavailable()
    assert changes[-1] == (A, "closed", 0.0)
    fail(b, A, 2)
    assert b.state(A) == "closed"  # the history was forgotten on close


def test_a_failed_probe_opens_again_for_twice_as_long_up_to_the_cap() -> None:
    b, clock, changes = board()
    fail(b, A, 3)
    opened = []
    for _ in range(3):
        clock.advance(changes[-1][2])
        assert b.state(A) == "half_open"
        fail(b, A, 1)
        opened.append(changes[-1][2])
    assert opened == [20.0, 35.0, 35.0]
    clock.advance(34.9)
    assert A in b.unavailable()


def test_a_lost_probe_gives_its_slot_back() -> None:
    """A probe whose request was cancelled never reports: the breaker must not stay blocked."""
    b, clock, _ = board(probe_timeout_s=5.0)
    fail(b, A, 3)
    clock.advance(10)
    assert A not in b.unavailable()
    b.begin(A)  # ... and its request is cancelled: no record() ever comes
    clock.advance(4.9)
    assert A in b.unavailable()
    clock.advance(0.1)
    assert A not in b.unavailable()
    b.begin(A)
    b.record(A, None)
    assert b.state(A) == "closed"


def test_next_probe_in_is_the_soonest_reopening() -> None:
    b, clock, _ = board()
    fail(b, A, 3)
    clock.advance(4)
    fail(b, B, 3)
    assert b.next_probe_in([A, B]) == pytest.approx(6.0)
    assert b.next_probe_in([B]) == pytest.approx(10.0)
    assert b.next_probe_in([A, "gemini/gemini-3.5-flash-lite"]) == 0.0  # that one is usable
    clock.advance(6)
    assert b.next_probe_in([A, B]) == 0.0


def test_reset_closes_everything_and_says_so() -> None:
    b, _, changes = board()
    fail(b, A, 3)
    fail(b, B, 1, ErrorKind.AUTH)
    b.reset()
    assert b.unavailable() == frozenset()
    assert b.snapshot() == {}
    assert sorted(changes[-2:]) == sorted([(A, "closed", 0.0), (B, "closed", 0.0)])


def test_remote_states_are_adopted_without_echo() -> None:
    b, _, changes = board()
    b.apply_remote(A, "open", 5.0)
    assert A in b.unavailable()
    b.apply_remote(A, "closed", 0.0)
    assert A not in b.unavailable()
    assert changes == []  # adopting is not publishing again


# --------------------------------------------------------------------------- end to end


def _breaker_rejected(plan: dict[str, Any], model: str) -> bool:
    return any(r["model"] == model and r["reason"] == "breaker_open" for r in plan["rejected"])


async def test_sustained_outage_opens_the_breaker_and_recovers_after_a_probe(sim: Running) -> None:
    open_s = 0.4
    gw = await start_gateway(sim.url, gateway_config())
    breakers = gw.app[STATE].breakers
    breakers.settings = BreakerSettings(consecutive_failures=3, open_s=open_s, max_open_s=2.0)
    claude = PRIMARY["anthropic"]
    pinned = request(claude, "tell me about otters")
    try:
        await queue_fault(sim, "status=500", claude, count=-1)
        # Two requests, each a try and a retry on claude before failing over: 4 failures.
        for _ in range(2):
            reply = await chat(gw, pinned)
            assert reply.status == 200
            assert [a.key for a in reply.attempts[:2]] == [key("anthropic")] * 2
        assert breakers.state(key("anthropic")) == "open"

        # Open: the planner skips claude, and traffic flows on the other providers.
        plan = await route_plan(gw, pinned)
        assert _breaker_rejected(plan, claude)
        assert claude not in [c["model"] for c in plan["candidates"]]
        for api in PRIMARY:
            reply = await chat(gw, request(PRIMARY[api], "tell me about otters"))
            assert reply.status == 200
            assert key("anthropic") not in [a.key for a in reply.attempts]
            assert reply.attempts[-1].outcome == "ok"
        reply = await chat(gw, pinned)
        assert reply.headers["x-gateway-degraded"] == "fallback"  # the pinned model could not answer
        assert "requested:pinned_unavailable" in reply.headers["x-gateway-route-reason"]

        # Half-open while the outage goes on: the one probe fails and opens it for longer.
        await asyncio.sleep(open_s + 0.05)
        assert not _breaker_rejected(await route_plan(gw, pinned), claude)
        reply = await chat(gw, pinned)
        assert reply.attempts[0] == Attempt(key("anthropic"), "server_error")
        assert breakers.state(key("anthropic")) == "open"
        await asyncio.sleep(open_s + 0.05)
        assert _breaker_rejected(await route_plan(gw, pinned), claude), "a failed probe doubles the open time"

        # The provider recovers: after the open period the next request is the probe; it closes.
        await clear_faults(sim)
        await asyncio.sleep(open_s + 0.1)
        reply = await chat(gw, pinned)
        assert reply.status == 200
        assert reply.attempts == [Attempt(key("anthropic"), "ok")]
        assert "x-gateway-degraded" not in reply.headers
        assert breakers.state(key("anthropic")) == "closed"
        assert not _breaker_rejected(await route_plan(gw, pinned), claude)
    finally:
        await gw.stop()


@pytest.mark.parametrize("task", ["chat", "translate"])
async def test_all_candidates_open_is_an_explicit_refusal(sim: Running, task: str) -> None:
    gw = await start_gateway(sim.url, gateway_config())
    try:
        for api in PRIMARY:  # an upstream auth failure marks each deployment down at once
            reply = await chat(gw, request(PRIMARY[api], f"[[fault:auth]] hello number {api}"))
        assert gw.app[STATE].breakers.unavailable() == {key(api) for api in PRIMARY}
        reply = await chat(gw, request(PRIMARY["openai"], "tell me about otters"), headers={"x-gateway-task": task})
    finally:
        await gw.stop()
    if task == "translate":  # the test policy's route whose ladder ends in a static completion
        assert reply.status == 200
        assert reply.headers["x-gateway-degraded"] == "static"
        return
    assert reply.status == 503
    assert reply.headers["x-gateway-degraded"] == "static"
    assert int(reply.headers["retry-after"]) >= 1
