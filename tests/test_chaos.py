"""The chaos matrix: every upstream fault, on each of the three wire APIs, in JSON and streaming mode.

The simulator plays all three providers. The test policy (tests/policies/chaos.yaml) allows
one small model per wire API, and pinning one of them (`model:`) makes it the primary with
the other two providers as its fallbacks. A model-scoped directive `[[fault@MODEL:SPEC]]`
breaks the primary only, so each cell shows one failover path; a bare `[[fault:SPEC]]`
breaks every candidate, so the client must get the right explicit error.

Every cell asserts the client's result, the attempts in `x-gateway-attempts` (in order,
and for a stream continued mid-answer, the path it repeats before [DONE]), and that the
request ended within its latency budget. The cells share one simulator and a few gateways
(starting one costs ~0.1 s of config validation): the six cells of a fault run side by
side in one lane per wire API, each lane a gateway of its own, and every cell starts with
all circuit breakers closed, so a breaker opened by one cell never steers another.

The helpers at the top are shared by the other failover test modules.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping

import aiohttp
import orjson
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from gateway.simulate.faults import strip_directives
from gateway.state import STATE
from gateway.simulate.text import reply_words
from tests.servers import CLIENT_KEY, Running, start_gateway, start_simulator

CHAT = "/v1/chat/completions"
POLICY = Path(__file__).parent / "policies" / "chaos.yaml"
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
# One small model per wire API: the keys are the wire APIs, the values what a client pins.
PRIMARY = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-3.5-flash-lite"}
PROVIDER_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL", "gemini": "GEMINI_BASE_URL"}
# Short upstream timeouts keep timeout cells fast: an attempt that gets no headers ends
# after connect + first byte = 0.4 s; a stream silent for 0.3 s is stalled.
TIMEOUTS = {"connect_timeout_s": 0.1, "first_byte_timeout_s": 0.3, "idle_timeout_s": 0.3}
BUDGET_MS = 1500
DEADLINE_MARGIN_S = 0.6  # event-loop and client overhead on a busy 2-core machine
ANSWER_WORDS = 16  # the simulator's default answer length, one word per stream chunk
TRAILER = b": x-gateway-attempts: "
_ATTEMPT = re.compile(
    r"^(?P<provider>[a-z0-9-]+)/(?P<model>[^:]+):(?P<outcome>[a-z_]+)(?P<cont>\+cont)?:(?P<ms>\d+)ms$"
)


# --------------------------------------------------------------------------- shared helpers


def gateway_config(policy: Path = POLICY, **upstream: float) -> str:
    settings = {**TIMEOUTS, **upstream}
    inner = ", ".join(f"{k}: {v}" for k, v in settings.items())
    return f"policy: {policy}\nupstream: {{{inner}}}\n"


@dataclass(frozen=True, repr=False)
class Attempt:
    key: str  # provider/model
    outcome: str
    cont: bool = False

    def __repr__(self) -> str:  # the header's own form, so a failing comparison reads well
        return f"{self.key}:{self.outcome}{'+cont' if self.cont else ''}"


def parse_attempts(header: str) -> list[Attempt]:
    """x-gateway-attempts -> attempts, asserting the documented token format."""
    out = []
    for token in header.split(","):
        match = _ATTEMPT.match(token)
        assert match, f"malformed x-gateway-attempts token {token!r} in {header!r}"
        out.append(Attempt(f"{match['provider']}/{match['model']}", match["outcome"], bool(match["cont"])))
    return out


def logged_attempts(record: dict[str, Any]) -> list[Attempt]:
    return [Attempt(f"{a['provider']}/{a['model']}", a["outcome"], a["continuation"]) for a in record["attempts"]]


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive, as HTTP headers are
    elapsed: float
    json: Any = None  # the body of a JSON response (an answer or an error)
    events: list[bytes] = field(default_factory=list)  # data payloads of an SSE response
    trailer: str | None = None  # the `: x-gateway-attempts:` comment of a continued stream

    @property
    def attempts(self) -> list[Attempt]:
        return parse_attempts(self.headers["x-gateway-attempts"])

    @property
    def final_attempts(self) -> list[Attempt]:
        """The whole path: a stream that failed over mid-answer repeats it at its end."""
        return parse_attempts(self.trailer) if self.trailer is not None else self.attempts

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [orjson.loads(e) for e in self.events if e != b"[DONE]"]

    @property
    def stream_error(self) -> dict[str, Any] | None:
        errors = [c["error"] for c in self.chunks if "error" in c]
        return errors[-1] if errors else None

    @property
    def text(self) -> str:
        if not self.events:
            return self.json["choices"][0]["message"]["content"]
        return "".join(
            (choice.get("delta") or {}).get("content") or ""
            for c in self.chunks
            for choice in c.get("choices") or ()
            if choice.get("index", 0) == 0
        )

    @property
    def finish_reason(self) -> str | None:
        if not self.events:
            return self.json["choices"][0]["finish_reason"]
        reasons = [ch["finish_reason"] for c in self.chunks for ch in c.get("choices") or () if ch.get("finish_reason")]
        assert len(reasons) <= 1, f"more than one finish_reason in one stream: {reasons}"
        return reasons[0] if reasons else None


async def chat(
    gw: Running, body: dict[str, Any], *, budget_ms: int | None = BUDGET_MS, headers: dict[str, str] | None = None
) -> Reply:
    sent = {**AUTH, **(headers or {})}
    if budget_ms is not None:
        sent["x-gateway-latency-budget-ms"] = str(budget_ms)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + CHAT, json=body, headers=sent) as response:
            reply = Reply(response.status, CIMultiDict(response.headers), 0.0)
            if response.content_type == "text/event-stream":
                reply.events, reply.trailer = parse_sse(await response.read())
            else:
                reply.json = orjson.loads(await response.read())
    reply.elapsed = time.perf_counter() - started
    return reply


def parse_sse(raw: bytes) -> tuple[list[bytes], str | None]:
    """-> (the data payloads, the attempts comment if there is one, asserting it is alone)."""
    events: list[bytes] = []
    trailers: list[str] = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                events.append(line[6:])
            elif line.startswith(TRAILER):
                trailers.append(line[len(TRAILER):].decode())
                assert not any(e == b"[DONE]" or b'"error"' in e for e in events), "the path comes before the end"
    assert len(trailers) <= 1, trailers
    return events, (trailers[0] if trailers else None)


async def route_plan(gw: Running, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/route", json=body, headers={**AUTH, **(headers or {})}) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["plan"]


async def candidates(gw: Running, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    plan = await route_plan(gw, body, headers)
    return [f"{c['provider']}/{c['model']}" for c in plan["candidates"]]


def request(model: str, prompt: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}


def full_answer(prompt: str) -> str:
    """What the simulator answers to `prompt` when nothing breaks (the oracle for stitching)."""
    return " ".join(reply_words(strip_directives(prompt), ANSWER_WORDS))


def key(api: str) -> str:
    return f"{api}/{PRIMARY[api]}"


def assert_within_deadline(reply: Reply, budget_ms: int = BUDGET_MS) -> None:
    assert reply.elapsed < budget_ms / 1000 + DEADLINE_MARGIN_S, (
        f"the request took {reply.elapsed:.2f}s against a {budget_ms} ms budget"
    )


def assert_error_body(error: dict[str, Any], code: str) -> None:
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert error["message"]


def assert_clean_stream(reply: Reply, expected_text: str) -> None:
    """One stitched answer: one id, one role delta, all the text, one finish, then [DONE]."""
    assert reply.status == 200
    assert reply.events[-1] == b"[DONE]", reply.events[-3:]
    chunks = reply.chunks
    assert reply.stream_error is None, reply.stream_error
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}, "a stitched stream must keep one id"
    roles = [ch for c in chunks for ch in c.get("choices") or () if (ch.get("delta") or {}).get("role")]
    assert len(roles) == 1, f"the assistant role must open the message once, got {len(roles)}"
    assert reply.text == expected_text
    assert reply.finish_reason == "stop"


async def queue_fault(sim: Running, spec: str, model: str | None = None, count: int = 1) -> None:
    """Through the simulator's control API: the next `count` requests (-1: all) get the fault."""
    async with aiohttp.ClientSession() as session:
        payload = {"fault": spec, "model": model, "count": count}
        async with session.post(sim.url + "/_sim/faults", json=payload) as response:
            assert response.status == 201, await response.text()


async def clear_faults(sim: Running) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.delete(sim.url + "/_sim/faults") as response:
            assert response.status == 200


async def decision(gw: Running, reply: Reply) -> dict[str, Any]:
    """The decision-log record of one request (the log is written by a background thread)."""
    assert gw.folder is not None
    request_id = reply.headers["x-request-id"]
    path = gw.folder / "decisions.jsonl"
    for _ in range(200):
        if path.exists():
            for line in path.read_text().splitlines():
                record = orjson.loads(line)
                if record["request_id"] == request_id:
                    return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"no decision record for {request_id}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose listen queue is full: connects to it hang until the client gives up.

    The one queue slot of a backlog-0 listener is taken by a connection nobody accepts;
    the kernel then drops further SYNs, which is what an unreachable upstream looks like.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    yield port
    filler.close()
    listener.close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chaos_sim() -> AsyncIterator[Running]:
    running = await start_simulator()
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chaos_gw(chaos_sim: Running) -> AsyncIterator[Running]:
    running = await start_gateway(chaos_sim.url, gateway_config())
    yield running
    await running.stop()


@pytest.fixture(autouse=True)
def closed_breakers(chaos_gw: Running) -> None:
    chaos_gw.app[STATE].breakers.reset()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lanes(chaos_sim: Running) -> AsyncIterator[dict[str, Running]]:
    """A gateway per wire API, so the cells of one fault run side by side (timeouts
    overlap), each lane with circuit breakers of its own."""
    gateways = {api: await start_gateway(chaos_sim.url, gateway_config()) for api in PRIMARY}
    yield gateways
    for running in gateways.values():
        await running.stop()


Cell = Callable[[Running, str, bool], Awaitable[None]]  # (gateway, wire API, stream?)


async def collect(cells: Mapping[str, Awaitable[None]]) -> None:
    """Run the cells at once and report every failure: one cell's must not hide another's."""
    results = await asyncio.gather(*cells.values(), return_exceptions=True)
    failures = []
    for name, result in zip(cells, results):
        if isinstance(result, Exception):
            result.add_note(f"cell {name}")
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
    if failures:
        names = ", ".join(note for f in failures for note in f.__notes__[-1:])
        raise ExceptionGroup(f"{len(failures)} of {len(cells)} cells failed ({names})", failures)


async def side_by_side(lanes: dict[str, Running], cell: Cell, modes: tuple[bool, ...] = (False, True)) -> None:
    """Every wire API's cells in its own lane, one after another, each on closed breakers."""
    locks = {api: asyncio.Lock() for api in lanes}

    async def in_lane(api: str, stream: bool) -> None:
        async with locks[api]:
            lanes[api].app[STATE].breakers.reset()
            await cell(lanes[api], api, stream)

    await collect({f"{api}-{'stream' if s else 'json'}": in_lane(api, s) for api in lanes for s in modes})


# --------------------------------------------------------------------------- matrix A: the primary fails


@dataclass(frozen=True)
class Fault:
    name: str
    spec: str
    # outcomes recorded on the primary before failover: one per try (a retry is a second try)
    outcomes: tuple[str, ...]
    per_api: dict[str, tuple[str, ...]] = field(default_factory=dict)  # where a wire API maps it differently
    json: bool = True  # the simulator has no JSON form of a mid-stream stall
    midstream: bool = False  # in a stream, it strikes after the first content chunk

    def primary_outcomes(self, api: str) -> tuple[str, ...]:
        return self.per_api.get(api, self.outcomes)


FAULTS = [
    Fault("429", "rate_limited", ("rate_limited", "rate_limited")),
    # A retry-after longer than the forwarder will wait: straight to the next provider.
    Fault("429-retry-after", "rate_limited,retry_after=30", ("rate_limited",)),
    Fault("500", "status=500", ("server_error", "server_error")),
    # Anthropic's 503 body is an api_error; Gemini's 529 is a status Google never sends.
    Fault("503", "status=503", ("overloaded", "overloaded"), {"anthropic": ("server_error", "server_error")}),
    Fault("529", "status=529", ("overloaded", "overloaded"), {"gemini": ("server_error", "server_error")}),
    Fault("overloaded", "overloaded", ("overloaded", "overloaded")),
    Fault("first-byte-timeout", "delay_ms=2000", ("timeout", "timeout")),
    Fault("reset", "reset", ("connection", "connection")),
    Fault("malformed", "malformed", ("malformed_response", "malformed_response")),
    Fault("cut", "cut_after=3", ("connection", "connection"), midstream=True),
    Fault("stall", "stall_after=3,stall_ms=3000", ("timeout",), json=False, midstream=True),
    Fault("auth", "auth", ("auth",)),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_primary_fault_fails_over_to_the_next_provider(lanes: dict[str, Running], fault: Fault) -> None:
    """Six cells: the primary on each wire API, in JSON and streaming mode."""

    async def cell(gw: Running, api: str, stream: bool) -> None:
        await _primary_fault_cell(gw, fault, api, stream)

    await side_by_side(lanes, cell, (False, True) if fault.json else (True,))


async def _primary_fault_cell(gw: Running, fault: Fault, api: str, stream: bool) -> None:
    prompt = f"[[fault@{PRIMARY[api]}:{fault.spec}]] tell me about otters"
    plan = await candidates(gw, request(PRIMARY[api], prompt, stream=stream))
    reply = await chat(gw, request(PRIMARY[api], prompt, stream=stream))
    assert plan[0] == key(api) and len(plan) == 3
    assert_within_deadline(reply)
    assert reply.status == 200, reply.json
    fallback = plan[1]

    if stream and fault.midstream:
        # Bytes reached the client before the break: the headers could only tell the
        # start; the stream repeats the whole path before [DONE], the decision log has it
        # too, and the client gets ONE stitched answer.
        assert reply.attempts == [Attempt(key(api), "ok")], reply.attempts
        assert "x-gateway-degraded" not in reply.headers
        assert_clean_stream(reply, full_answer(prompt))
        path = [
            Attempt(key(api), "ok"),
            Attempt(key(api), fault.primary_outcomes(api)[0], cont=True),
            Attempt(fallback, "ok", cont=True),
        ]
        assert reply.final_attempts == path, reply.final_attempts
        assert logged_attempts(await decision(gw, reply)) == path
        return

    if stream and fault.name == "malformed":
        # The broken frame follows the first content chunk: whether it arrives in the same
        # read as that chunk (a failure before the first byte) or in the next one (a
        # continuation) is up to the kernel. Both must give one clean answer.
        assert_clean_stream(reply, full_answer(prompt))
        path = reply.final_attempts
        assert path[0].key == key(api) and path[0].outcome in ("malformed_response", "ok")
        assert Attempt(key(api), "malformed_response", cont=path[0].outcome == "ok") in path
        assert path[-1].outcome == "ok"
        return

    expected = [Attempt(key(api), outcome) for outcome in fault.primary_outcomes(api)] + [Attempt(fallback, "ok")]
    assert reply.attempts == expected, f"{reply.attempts} != {expected}"
    assert reply.headers["x-gateway-degraded"] == "fallback"
    assert reply.headers["x-gateway-model"] == fallback.split("/")[1]
    if stream:
        assert_clean_stream(reply, full_answer(prompt))
        assert reply.trailer is None  # nothing happened after the headers left
    else:
        assert reply.json["model"] == fallback.split("/")[1]
        assert reply.text == full_answer(prompt)


@pytest.mark.parametrize("where", ["refused", "blackhole"])
async def test_unreachable_provider_fails_over(
    chaos_sim: Running, closed_port: int, blackhole: int, where: str
) -> None:
    """Connect failures: a closed port refuses at once; a full listen queue times out.

    Each wire API in turn points at the dead address, in a gateway of its own."""
    port = closed_port if where == "refused" else blackhole
    outcome = "connection" if where == "refused" else "timeout"
    dead = {api: f"http://127.0.0.1:{port}" + ("/v1" if api == "openai" else "") for api in PRIMARY}
    gateways = {}
    for api in PRIMARY:
        gateways[api] = await start_gateway(chaos_sim.url, gateway_config(), **{PROVIDER_ENV[api]: dead[api]})

    async def cell(gw: Running, api: str, stream: bool) -> None:
        prompt = "tell me about otters"
        plan = await candidates(gw, request(PRIMARY[api], prompt))
        reply = await chat(gw, request(PRIMARY[api], prompt, stream=stream))
        assert_within_deadline(reply)
        assert reply.status == 200
        # Two tries on the dead address, then the next candidate. A refused connect can still
        # be reported as a timeout when the loop is busier than the 0.1 s connect timeout
        # (six cells at once on a loaded machine): both mean "could not connect".
        could_not_connect = {outcome, "timeout"}
        assert [a.key for a in reply.attempts] == [key(api), key(api), plan[1]], reply.attempts
        assert {a.outcome for a in reply.attempts[:2]} <= could_not_connect and reply.attempts[2].outcome == "ok", reply.attempts
        assert reply.headers["x-gateway-degraded"] == "fallback"
        if stream:
            assert_clean_stream(reply, full_answer(prompt))
        else:
            assert reply.text == full_answer(prompt)

    try:
        await side_by_side(gateways, cell)
    finally:
        for gw in gateways.values():
            await gw.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", list(PRIMARY))
async def test_context_length_skips_models_with_no_larger_window(chaos_gw: Running, api: str, stream: bool) -> None:
    # Windows in the catalog: claude-haiku-4-5 200k < gpt-4.1-mini 1,047,576 < gemini-3.5-flash-lite 1,048,576.
    windows = {"anthropic": 200_000, "openai": 1_047_576, "gemini": 1_048_576}
    prompt = f"[[fault@{PRIMARY[api]}:context_length]] tell me about otters"
    plan = await candidates(chaos_gw, request(PRIMARY[api], prompt))
    reply = await chat(chaos_gw, request(PRIMARY[api], prompt, stream=stream))
    assert_within_deadline(reply)
    larger = [k for k in plan[1:] if windows[k.split("/")[0]] > windows[api]]
    if not larger:
        # Nowhere bigger to go: the client's own error, not a degraded answer.
        assert reply.status == 400
        assert_error_body(reply.json["error"], "context_length")
        assert reply.attempts == [Attempt(key(api), "context_length")]
        assert "x-gateway-degraded" not in reply.headers
        return
    assert reply.status == 200
    assert reply.attempts == [Attempt(key(api), "context_length"), Attempt(larger[0], "ok")]
    assert reply.text == full_answer(prompt)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", list(PRIMARY))
async def test_content_filter_goes_to_the_content_fallback(chaos_gw: Running, api: str, stream: bool) -> None:
    # The test policy's default route names claude-haiku-4-5 as its content fallback.
    prompt = f"[[fault@{PRIMARY[api]}:content_filter]] tell me about otters"
    plan = await route_plan(chaos_gw, request(PRIMARY[api], prompt))
    reply = await chat(chaos_gw, request(PRIMARY[api], prompt, stream=stream))
    assert plan["content_fallback"] == "claude-haiku-4-5"
    assert_within_deadline(reply)
    if api == "anthropic":
        # The content fallback itself refused: nobody else is cleared to try.
        assert reply.status == 400
        assert_error_body(reply.json["error"], "content_filter")
        assert reply.attempts == [Attempt(key(api), "content_filter")]
        return
    assert reply.status == 200
    assert reply.attempts == [Attempt(key(api), "content_filter"), Attempt("anthropic/claude-haiku-4-5", "ok")]
    assert reply.text == full_answer(prompt)
    if stream:
        assert_clean_stream(reply, full_answer(prompt))


# --------------------------------------------------------------------------- matrix B: every provider fails


@dataclass(frozen=True)
class Outage:
    name: str
    spec: str
    status: int
    code: str | tuple[str, ...]  # the last provider's mapping decides; several are right
    retry_after: int | None  # the retry-after the client must get (None: no header required)
    degraded: str | None = "static"


OUTAGES = [
    # The test policy's static step is error mode with retry_after_s 7; an upstream's own
    # retry-after wins when it has one.
    Outage("429", "rate_limited", 429, "rate_limited", 7),
    Outage("429-retry-after", "rate_limited,retry_after=30", 429, "rate_limited", 30),
    Outage("500", "status=500", 503, "server_error", 7),
    # Anthropic maps its 503 body to server_error, Gemini its 529: see matrix A.
    Outage("503", "status=503", 503, ("overloaded", "server_error"), 7),
    Outage("529", "status=529", 503, ("overloaded", "server_error"), 7),
    Outage("first-byte-timeout", "delay_ms=5000", 504, "timeout", 7),
    Outage("reset", "reset", 503, "connection", 7),
    Outage("malformed-json", "malformed", 503, "malformed_response", 7),
    Outage("auth", "auth", 503, "auth", 7),
    Outage("context-length", "context_length", 400, "context_length", None, degraded=None),
    Outage("content-filter", "content_filter", 400, "content_filter", None, degraded=None),
]


@pytest.mark.parametrize("outage", OUTAGES, ids=[o.name for o in OUTAGES])
async def test_everything_failing_gives_an_explicit_error(lanes: dict[str, Running], outage: Outage) -> None:
    """Two cells side by side: JSON and streaming mode, each in a lane of its own."""
    await collect({
        "json": _outage_cell(lanes["openai"], outage, stream=False),
        "stream": _outage_cell(lanes["anthropic"], outage, stream=True),
    })


async def _outage_cell(chaos_gw: Running, outage: Outage, stream: bool) -> None:
    chaos_gw.app[STATE].breakers.reset()
    prompt = f"[[fault:{outage.spec}]] tell me about otters"
    budget_ms = 1000 if outage.code == "timeout" else BUDGET_MS  # a timeout runs to the deadline
    reply = await chat(chaos_gw, request(PRIMARY["openai"], prompt, stream=stream), budget_ms=budget_ms)
    assert_within_deadline(reply, budget_ms)
    # Failures before the first byte never open a stream: the client gets a plain HTTP error.
    assert reply.status == outage.status, reply.json
    assert reply.json is not None and not reply.events
    error = reply.json["error"]
    codes = outage.code if isinstance(outage.code, tuple) else (outage.code,)
    assert_error_body(error, error["code"] if error["code"] in codes else codes[0])
    if outage.retry_after is not None:
        assert int(reply.headers["retry-after"]) == outage.retry_after
    assert reply.headers.get("x-gateway-degraded") == outage.degraded
    attempts = reply.attempts
    assert attempts and all(a.outcome != "ok" for a in attempts)
    assert attempts[0].key == key("openai")


async def test_stream_cut_on_every_provider_is_still_one_answer(chaos_gw: Running) -> None:
    """Every segment breaks after three chunks; each continuation moves the answer on."""
    prompt = "[[fault:cut_after=3]] tell me about otters"
    reply = await chat(chaos_gw, request(PRIMARY["anthropic"], prompt, stream=True))
    assert_within_deadline(reply)
    assert_clean_stream(reply, full_answer(prompt))
    path = logged_attempts(await decision(chaos_gw, reply))
    assert reply.final_attempts == path
    assert path[0] == Attempt(key("anthropic"), "ok")
    assert sum(1 for a in path if a.outcome == "ok" and a.cont) >= ANSWER_WORDS // 3 - 1
    assert all(a.cont for a in path[1:])


async def test_stream_stalling_everywhere_ends_with_an_error_event_at_the_deadline(chaos_gw: Running) -> None:
    """Each segment gives one word, then stalls: the budget runs out mid-answer."""
    prompt = "[[fault:stall_after=1,stall_ms=5000]] tell me about otters"
    reply = await chat(chaos_gw, request(PRIMARY["gemini"], prompt, stream=True), budget_ms=1000)
    assert_within_deadline(reply, 1000)
    assert reply.status == 200
    assert b"[DONE]" not in reply.events, "a truncated answer must never end with [DONE]"
    error = reply.stream_error
    assert error is not None
    assert_error_body(error, "timeout")
    assert reply.text and full_answer(prompt).startswith(reply.text)
