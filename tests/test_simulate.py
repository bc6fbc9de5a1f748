"""The simulator: real HTTP over loopback, the official openai SDK for the OpenAI format."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.providers.base import SSEDecoder
from gateway.simulate import FaultSpecError, SimulatorConfig, create_app, main, parse_fault
from gateway.simulate.faults import find_directive

ROOT = Path(__file__).resolve().parent.parent
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 3},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "detailed": {"type": "boolean"},
                "hours": {"type": "array", "items": {"type": "number"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                "optional_note": {"type": "string"},
            },
            "required": ["city", "days", "unit", "detailed", "hours", "where"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

MakeClient = Callable[..., Awaitable[TestClient]]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse(raw: bytes) -> list[tuple[str | None, bytes]]:
    decoder = SSEDecoder()
    return decoder.feed(raw) + decoder.flush()


@pytest.fixture
def sim_client(aiohttp_client: Any) -> MakeClient:
    """A test client of a fresh simulator app with the given config options."""

    async def make(**options: Any) -> TestClient:
        return await aiohttp_client(create_app(SimulatorConfig(**options)))

    return make


@pytest.fixture
async def sim_url() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A real simulator server on 127.0.0.1 with a free port; returns its base URL."""
    servers: list[TestServer] = []

    async def start(**options: Any) -> str:
        server = TestServer(create_app(SimulatorConfig(**options)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def oai(sim_url: Callable[..., Awaitable[str]]) -> AsyncIterator[openai.AsyncOpenAI]:
    url = await sim_url()
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


# -- OpenAI format through the official SDK ------------------------------------------


async def test_openai_json_answer_and_usage(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}] + user("What is the weather in Paris today?")
    result = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert result.object == "chat.completion"
    assert result.model == "gpt-4o-mini"
    content = result.choices[0].message.content
    assert content.startswith("Simulated reply about What is the weather in")
    assert len(content.split()) == 16
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == 2 + 7
    assert result.usage.completion_tokens == 16
    assert result.usage.total_tokens == 25
    assert result.usage.prompt_tokens_details.cached_tokens == 0
    again = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert again.choices[0].message.content == content  # deterministic
    assert again.id != result.id


async def test_openai_max_tokens_n_and_stop(oai: openai.AsyncOpenAI) -> None:
    short = await oai.chat.completions.create(model="m", messages=user("hello"), max_tokens=4, n=3)
    assert [c.index for c in short.choices] == [0, 1, 2]
    assert all(c.message.content == "Simulated reply about hello" for c in short.choices)
    assert all(c.finish_reason == "length" for c in short.choices)
    assert short.usage.completion_tokens == 12
    newer = await oai.chat.completions.create(model="m", messages=user("hello"), max_completion_tokens=2)
    assert newer.choices[0].message.content == "Simulated reply"
    stopped = await oai.chat.completions.create(model="m", messages=user("hello"), stop=[" hello", "xyz"])
    assert stopped.choices[0].message.content == "Simulated reply about"
    assert stopped.choices[0].finish_reason == "stop"


async def test_openai_stream_reassembles_to_the_json_answer(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.chat.completions.create(model="gpt-4o", messages=user("tell me about rivers"))
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=user("tell me about rivers"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {"gpt-4o"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 16  # one word per chunk
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


async def test_openai_tool_call_fills_required_parameters(oai: openai.AsyncOpenAI) -> None:
    result = await oai.chat.completions.create(
        model="m", messages=user("weather?"), tools=[TIME_TOOL, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {
        "city": "sample", "days": 3, "unit": "celsius", "detailed": True, "hours": [1.5], "where": {"lat": 1.5}
    }


async def test_openai_tool_choice_variants(oai: openai.AsyncOpenAI) -> None:
    parallel = await oai.chat.completions.create(model="m", messages=user("x"), tools=[TIME_TOOL, WEATHER_TOOL])
    assert [c.function.name for c in parallel.choices[0].message.tool_calls] == ["get_time", "get_weather"]
    single = await oai.chat.completions.create(
        model="m", messages=user("x"), tools=[TIME_TOOL, WEATHER_TOOL], parallel_tool_calls=False
    )
    assert [c.function.name for c in single.choices[0].message.tool_calls] == ["get_time"]
    none = await oai.chat.completions.create(model="m", messages=user("x"), tools=[TIME_TOOL], tool_choice="none")
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason == "stop"
    call = parallel.choices[0].message.tool_calls[0]
    after = await oai.chat.completions.create(
        model="m", tools=[TIME_TOOL],
        messages=user("what time is it")
        + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
           {"role": "tool", "tool_call_id": call.id, "content": "noon sharp"}],
    )
    assert after.choices[0].message.content.startswith("Simulated reply about noon sharp")


async def test_openai_streamed_tool_call_arguments(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="m", messages=user("weather?"), tools=[WEATHER_TOOL], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert len(deltas) > 3 and all(d.id is None for d in deltas[1:])
    arguments = json.loads("".join(d.function.arguments for d in deltas))
    assert arguments["city"] == "sample" and arguments["where"] == {"lat": 1.5}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_response_formats(oai: openai.AsyncOpenAI) -> None:
    loose = await oai.chat.completions.create(
        model="m", messages=user("give json"), response_format={"type": "json_object"}
    )
    assert json.loads(loose.choices[0].message.content)["reply"].startswith("Simulated reply about give json")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
        "required": ["name", "age", "tags"],
        "$defs": {"tag": {"type": "string", "enum": ["red"]}},
    }
    strict = await oai.chat.completions.create(
        model="m", messages=user("person"),
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    assert json.loads(strict.choices[0].message.content) == {"name": "sample", "age": 1, "tags": ["red"]}


async def test_openai_continues_a_partial_assistant_answer(oai: openai.AsyncOpenAI) -> None:
    full = (await oai.chat.completions.create(model="m", messages=user("a story"))).choices[0].message.content
    partial = " ".join(full.split()[:5])
    rest = await oai.chat.completions.create(
        model="m", messages=user("a story") + [{"role": "assistant", "content": partial}], stream=True
    )
    continued = "".join([c.choices[0].delta.content or "" async for c in rest])
    assert continued.startswith(" ") and partial + continued == full


async def test_azure_path_with_the_azure_sdk(sim_url: Callable[..., Awaitable[str]]) -> None:
    url = await sim_url(require_key="azure-key")
    client = openai.AsyncAzureOpenAI(azure_endpoint=url, api_key="azure-key", api_version="2024-10-21", max_retries=0)
    try:
        result = await client.chat.completions.create(model="my-deployment", messages=user("hi"))
        assert result.model == "my-deployment" and result.choices[0].message.content
    finally:
        await client.close()


# -- Anthropic format -------------------------------------------------------------------


async def test_anthropic_json_shape(sim_client: MakeClient) -> None:
    client = await sim_client()
    body = {"model": "claude-x", "max_tokens": 100, "system": "terse", "messages": user("name a fruit")}
    response = await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert response.status == 200 and response.headers["request-id"].startswith("req_")
    data = await response.json()
    assert data["type"] == "message" and data["role"] == "assistant" and data["model"] == "claude-x"
    assert data["id"].startswith("msg_")
    assert data["content"][0]["type"] == "text"
    assert data["content"][0]["text"].startswith("Simulated reply about name a fruit")
    assert data["stop_reason"] == "end_turn" and data["stop_sequence"] is None
    assert data["usage"] == {"input_tokens": 4, "output_tokens": 16,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    body.update(max_tokens=3)
    data = await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert data["stop_reason"] == "max_tokens" and data["content"][0]["text"] == "Simulated reply about"
    body.update(max_tokens=50, stop_sequences=[" about"])
    data = await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert data["stop_reason"] == "stop_sequence" and data["stop_sequence"] == " about"
    assert data["content"][0]["text"] == "Simulated reply"


async def test_anthropic_requires_max_tokens_and_version(sim_client: MakeClient) -> None:
    client = await sim_client()
    response = await client.post("/v1/messages", json={"model": "c", "messages": user("x")}, headers=ANTHROPIC_HEADERS)
    assert response.status == 400
    data = await response.json()
    assert set(data) == {"type", "error", "request_id"} and data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error" and "max_tokens" in data["error"]["message"]
    response = await client.post("/v1/messages", json={"model": "c", "max_tokens": 5, "messages": user("x")})
    assert response.status == 400 and "anthropic-version" in (await response.json())["error"]["message"]


async def test_anthropic_stream_events(sim_client: MakeClient) -> None:
    client = await sim_client()
    body = {"model": "claude-x", "max_tokens": 100, "stream": True, "messages": user("name a fruit")}
    response = await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse(await response.read())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names))
    assert payloads[0]["message"]["usage"]["input_tokens"] == 3
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text.startswith("Simulated reply about name a fruit") and len(text.split()) == 16
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn" and payloads[-2]["usage"]["output_tokens"] == 16


async def test_anthropic_tool_use_json_and_stream(sim_client: MakeClient) -> None:
    client = await sim_client()
    tools = [{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}},
                                                  "required": ["q"]}},
             {"name": "other", "input_schema": {"type": "object"}}]
    body = {"model": "c", "max_tokens": 100, "messages": user("find it"), "tools": tools,
            "tool_choice": {"type": "tool", "name": "lookup"}}
    data = await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert data["stop_reason"] == "tool_use"
    (block,) = data["content"]
    assert block["type"] == "tool_use" and block["name"] == "lookup" and block["input"] == {"q": "sample"}
    assert block["id"].startswith("toolu_")

    body["stream"] = True
    events = [json.loads(d) for _, d in sse(await (await client.post(
        "/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).read())]
    start = next(e for e in events if e["type"] == "content_block_start")["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "lookup" and start["input"] == {}
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert all(e["delta"]["type"] == "input_json_delta" for e in events if e["type"] == "content_block_delta")
    assert json.loads("".join(fragments)) == {"q": "sample"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    body.update(stream=False, tool_choice={"type": "none"})
    data = await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert data["stop_reason"] == "end_turn" and data["content"][0]["type"] == "text"


# -- Gemini format ------------------------------------------------------------------------


async def test_gemini_json_shape(sim_client: MakeClient) -> None:
    client = await sim_client()
    body = {"systemInstruction": {"parts": [{"text": "be kind"}]},
            "contents": [{"role": "user", "parts": [{"text": "name a colour"}]}],
            "generationConfig": {"maxOutputTokens": 5, "candidateCount": 2, "temperature": 0.2}}
    response = await client.post("/v1beta/models/gemini-2.0-flash:generateContent",
                                 json=body, headers={"x-goog-api-key": "k"})
    data = await response.json()
    assert [c["index"] for c in data["candidates"]] == [0, 1]
    candidate = data["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert candidate["content"]["parts"] == [{"text": "Simulated reply about name a"}]
    assert candidate["finishReason"] == "MAX_TOKENS"
    usage = data["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (5, 10, 15)
    assert usage["cachedContentTokenCount"] == 0 and data["modelVersion"] == "gemini-2.0-flash"


async def test_gemini_function_call_and_structured_output(sim_client: MakeClient) -> None:
    client = await sim_client()
    declaration = {"name": "find", "parameters": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}},
                                                  "required": ["n"]}}
    body = {"contents": [{"parts": [{"text": "go"}]}], "tools": [{"functionDeclarations": [declaration]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}
    data = await (await client.post("/v1beta/models/g:generateContent", json=body)).json()
    assert data["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "find", "args": {"n": 1}}}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    body["toolConfig"]["functionCallingConfig"]["mode"] = "NONE"
    data = await (await client.post("/v1beta/models/g:generateContent", json=body)).json()
    assert "text" in data["candidates"][0]["content"]["parts"][0]

    schema = {"type": "OBJECT", "properties": {"ok": {"type": "BOOLEAN"}}, "required": ["ok"]}
    body = {"contents": [{"parts": [{"text": "go"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": schema}}
    data = await (await client.post("/v1beta/models/g:generateContent", json=body)).json()
    assert json.loads(data["candidates"][0]["content"]["parts"][0]["text"]) == {"ok": True}


async def test_gemini_stream(sim_client: MakeClient) -> None:
    client = await sim_client()
    body = {"contents": [{"role": "user", "parts": [{"text": "name a colour"}]}]}
    response = await client.post("/v1beta/models/gemini-pro:streamGenerateContent?alt=sse", json=body)
    raw = await response.read()
    assert b"\r\n\r\n" in raw and b"[DONE]" not in raw
    events = [json.loads(data) for _, data in sse(raw)]
    assert len(events) == 17
    assert all("finishReason" not in e["candidates"][0] and "usageMetadata" not in e for e in events[:-1])
    text = "".join(p["text"] for e in events for p in e["candidates"][0]["content"]["parts"])
    assert text.startswith("Simulated reply about name a colour")
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 16


# -- keys, health, bad input ---------------------------------------------------------------


async def test_required_key_errors_in_each_providers_shape(sim_client: MakeClient) -> None:
    client = await sim_client(require_key="secret")
    assert (await client.get("/health")).status == 200
    chat = {"model": "m", "messages": user("x")}
    response = await client.post("/v1/chat/completions", json=chat, headers={"Authorization": "Bearer nope"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"
    response = await client.post("/v1/chat/completions", json=chat, headers={"Authorization": "Bearer secret"})
    assert response.status == 200

    anthropic = {"model": "c", "max_tokens": 5, "messages": user("x")}
    response = await client.post("/v1/messages", json=anthropic, headers={"anthropic-version": "2023-06-01"})
    assert response.status == 401 and "request-id" in response.headers
    assert (await response.json())["error"]["type"] == "authentication_error"
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "secret"}
    assert (await client.post("/v1/messages", json=anthropic, headers=headers)).status == 200

    gemini = {"contents": [{"parts": [{"text": "x"}]}]}
    response = await client.post("/v1beta/models/g:generateContent", json=gemini)
    assert response.status == 403 and (await response.json())["error"]["status"] == "PERMISSION_DENIED"
    response = await client.post("/v1beta/models/g:generateContent?key=wrong", json=gemini)
    assert response.status == 401 and (await response.json())["error"]["status"] == "UNAUTHENTICATED"
    assert (await client.post("/v1beta/models/g:generateContent?key=secret", json=gemini)).status == 200


async def test_invalid_requests_name_the_field(sim_client: MakeClient) -> None:
    client = await sim_client()
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status == 400
    assert (await response.json())["error"] == {"message": "messages must be a non-empty array",
                                                "type": "invalid_request_error", "param": "messages", "code": None}
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": user("x"), "n": 0})
    assert (await response.json())["error"]["param"] == "n"
    response = await client.post("/v1beta/models/g:generateContent", json={"contents": []})
    assert response.status == 400 and "contents" in (await response.json())["error"]["message"]
    response = await client.post("/v1beta/models/g:countTokens", json={"contents": []})
    assert response.status == 404 and (await response.json())["error"]["status"] == "NOT_FOUND"


# -- faults -----------------------------------------------------------------------------


def test_fault_spec_grammar() -> None:
    spec = parse_fault("status=429, retry_after=2.5")
    assert (spec.error, spec.status, spec.retry_after, spec.text) == ("status", 429, 2.5, "status=429,retry_after=2.5")
    stall = parse_fault("stall_after=2")
    assert (stall.stall_after, stall.stall_ms) == (2, 1000.0)
    for bad, key in [("bogus", "bogus"), ("status=abc", "status"), ("status=200", "status"),
                     ("cut_after=0", "cut_after"), ("reset=1", "reset"), ("rate_limited,auth", "auth"),
                     ("delay_ms=-5", "delay_ms")]:
        with pytest.raises(FaultSpecError) as caught:
            parse_fault(bad)
        assert caught.value.key == key
    texts = ["[[fault@llama3:8b:overloaded]] [[fault:auth]]"]
    assert find_directive(texts, "llama3:8b") == "overloaded"
    assert find_directive(texts, "other") == "auth"
    assert find_directive(["plain text"], "m") is None


ERROR_CASES = [
    # fault, (openai status, type, code), (anthropic status, type), (gemini status, status name)
    ("rate_limited", (429, "requests", "rate_limit_exceeded"), (429, "rate_limit_error"), (429, "RESOURCE_EXHAUSTED")),
    ("overloaded", (503, "server_error", None), (529, "overloaded_error"), (503, "UNAVAILABLE")),
    ("context_length", (400, "invalid_request_error", "context_length_exceeded"),
     (400, "invalid_request_error"), (400, "INVALID_ARGUMENT")),
    ("auth", (401, "invalid_request_error", "invalid_api_key"), (401, "authentication_error"),
     (401, "UNAUTHENTICATED")),
    ("server_error", (500, "server_error", None), (500, "api_error"), (500, "INTERNAL")),
    ("status=404", (404, "invalid_request_error", "model_not_found"), (404, "not_found_error"), (404, "NOT_FOUND")),
]


@pytest.mark.parametrize("fault,openai_error,anthropic_error,gemini_error", ERROR_CASES)
async def test_error_faults_in_each_providers_shape(
    sim_client: MakeClient, fault: str, openai_error: tuple, anthropic_error: tuple, gemini_error: tuple
) -> None:
    client = await sim_client()
    prompt = f"hi [[fault:{fault}]]"
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": user(prompt)})
    data = await response.json()
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert (response.status, data["error"]["type"], data["error"]["code"]) == openai_error

    body = {"model": "c", "max_tokens": 10, "messages": user(prompt)}
    response = await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    data = await response.json()
    assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    assert data["request_id"] == response.headers["request-id"]
    assert (response.status, data["error"]["type"]) == anthropic_error

    response = await client.post("/v1beta/models/g:generateContent", json={"contents": [{"parts": [{"text": prompt}]}]})
    data = await response.json()
    assert set(data["error"]) == {"code", "message", "status"}
    assert (response.status, data["error"]["status"]) == gemini_error and data["error"]["code"] == response.status
    if fault == "context_length":
        assert "token count" in data["error"]["message"]


async def test_retry_after_reaches_the_sdk(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.chat.completions.create(model="m", messages=user("[[fault:status=429,retry_after=7]]"))
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_content_filter_fault(sim_client: MakeClient) -> None:
    client = await sim_client()
    prompt = "[[fault:content_filter]] hi"
    data = await (await client.post("/v1/chat/completions", json={"model": "m", "messages": user(prompt)})).json()
    assert data["choices"][0]["finish_reason"] == "content_filter"
    body = {"model": "c", "max_tokens": 10, "messages": user(prompt)}
    data = await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).json()
    assert data["stop_reason"] == "refusal" and data["content"] == []
    data = await (await client.post("/v1beta/models/g:generateContent",
                                    json={"contents": [{"parts": [{"text": prompt}]}]})).json()
    assert data["candidates"][0]["finishReason"] == "SAFETY"


async def test_reset_fault_is_a_connection_error(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="m", messages=user("[[fault:reset]]"))
    # the server is still serving afterwards
    assert (await oai.chat.completions.create(model="m", messages=user("ok"))).choices


async def test_cut_stream_has_no_done_and_cut_json_is_truncated(sim_client: MakeClient) -> None:
    client = await sim_client()
    body = {"model": "m", "stream": True, "messages": user("[[fault:cut_after=3]] go")}
    response = await client.post("/v1/chat/completions", json=body)
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in response.content.iter_any():
            received += chunk
    events = sse(received)
    assert b"[DONE]" not in received and len(events) == 4  # role chunk + 3 words
    assert all(json.loads(data)["choices"][0]["finish_reason"] is None for _, data in events)

    body = {"model": "m", "messages": user("[[fault:cut_after=3]] go")}
    response = await client.post("/v1/chat/completions", json=body)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["cut_streams"] == 1 and stats["open_streams"] == 0


async def test_stall_and_delay_faults_pause_but_complete(sim_client: MakeClient) -> None:
    client = await sim_client()
    started = time.monotonic()
    body = {"model": "m", "stream": True, "messages": user("[[fault:stall_after=2,stall_ms=200]] go")}
    raw = await (await client.post("/v1/chat/completions", json=body)).read()
    assert time.monotonic() - started >= 0.19
    assert raw.endswith(b"data: [DONE]\n\n")
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": user("[[fault:delay_ms=150]]")})
    assert response.status == 200 and time.monotonic() - started >= 0.14


async def test_malformed_fault(sim_client: MakeClient) -> None:
    client = await sim_client()
    response = await client.post("/v1/chat/completions", json={"model": "m", "messages": user("[[fault:malformed]]")})
    assert response.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(await response.read())
    body = {"model": "c", "max_tokens": 5, "stream": True, "messages": user("[[fault:malformed]]")}
    events = sse(await (await client.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)).read())
    bad = []
    for index, (_, data) in enumerate(events):
        try:
            json.loads(data)
        except json.JSONDecodeError:
            bad.append(index)
    first_delta = [name for name, _ in events].index("content_block_delta")
    assert bad == [first_delta + 1]
    assert events[-1][0] == "message_stop"  # the stream goes on after the bad line


async def test_model_scoped_directive_fails_only_that_model(sim_client: MakeClient) -> None:
    client = await sim_client()
    prompt = "[[fault@primary:status=503]] [[fault@other:auth]] hello"
    failed = await client.post("/v1/chat/completions", json={"model": "primary", "messages": user(prompt)})
    assert failed.status == 503
    fallback = await client.post("/v1/chat/completions", json={"model": "fallback", "messages": user(prompt)})
    assert fallback.status == 200
    content = (await fallback.json())["choices"][0]["message"]["content"]
    assert "fault" not in content and content.startswith("Simulated reply about hello")
    azure = await client.post("/openai/deployments/primary/chat/completions?api-version=2024-10-21",
                              json={"messages": user(prompt)})
    assert azure.status == 503
    gemini = await client.post("/v1beta/models/primary:generateContent",
                               json={"contents": [{"parts": [{"text": prompt}]}]})
    assert gemini.status == 503
    bad = await client.post("/v1/chat/completions", json={"model": "m", "messages": user("[[fault:nonsense]]")})
    assert bad.status == 400 and "nonsense" in (await bad.json())["error"]["message"]


async def test_random_faults_follow_the_seed(sim_client: MakeClient) -> None:
    async def pattern() -> list[int]:
        client = await sim_client(fail_rate=0.5, fail_with=["status=502", "overloaded"], seed=7)
        statuses = []
        for _ in range(12):
            response = await client.post("/v1/chat/completions", json={"model": "m", "messages": user("x")})
            statuses.append(response.status)
        return statuses

    first, second = await pattern(), await pattern()
    assert first == second
    assert {200, 502, 503} <= set(first)


# -- control API and stats --------------------------------------------------------------


async def test_control_api_queues_scoped_faults(sim_client: MakeClient) -> None:
    client = await sim_client()
    response = await client.post("/_sim/faults", json={"fault": "rate_limited", "model": "a", "count": 2})
    assert response.status == 201 and (await response.json())["pending"] == 1
    chat = {"messages": user("x")}
    statuses = [(await client.post("/v1/chat/completions", json={**chat, "model": model})).status
                for model in ("b", "a", "a", "a")]
    assert statuses == [200, 429, 429, 200]

    await client.post("/_sim/faults", json={"fault": "server_error", "count": -1})
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json={**chat, "model": "z"})).status == 500
    assert (await (await client.get("/_sim/faults")).json())["faults"][0]["count"] == -1
    assert (await (await client.delete("/_sim/faults")).json()) == {"cleared": 1}
    assert (await client.post("/v1/chat/completions", json={**chat, "model": "z"})).status == 200

    stats = await (await client.get("/_sim/stats")).json()
    assert stats["requests_total"] == 8
    assert stats["by_model"] == {"b": 1, "a": 3, "z": 4}
    assert stats["by_api"] == {"openai": 8}
    assert stats["faults"] == {"rate_limited": 2, "server_error": 3}
    assert stats["fault_sources"] == {"control": 5}


@pytest.mark.parametrize("body,field", [
    ({}, "fault"),
    ({"fault": "bogus"}, "fault"),
    ({"fault": "auth", "count": 0}, "count"),
    ({"fault": "auth", "count": True}, "count"),
    ({"fault": "auth", "model": 5}, "model"),
    ({"fault": "auth", "extra": 1}, "extra"),
    ([], "body"),
])
async def test_control_api_rejects_bad_bodies(sim_client: MakeClient, body: Any, field: str) -> None:
    client = await sim_client()
    response = await client.post("/_sim/faults", json=body)
    assert response.status == 400
    assert (await response.json())["error"]["field"] == field


async def wait_for_stats(client: TestClient, done: Callable[[dict], bool]) -> dict:
    deadline = time.monotonic() + 3
    while True:
        stats = await (await client.get("/_sim/stats")).json()
        if done(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


async def test_client_disconnect_mid_stream_is_counted(sim_client: MakeClient) -> None:
    # the test server cancels handlers on disconnect (handler_cancellation=True)
    client = await sim_client(token_rate=100, default_completion_tokens=300)
    body = {"model": "m", "stream": True, "messages": user("a long story")}
    response = await client.post("/v1/chat/completions", json=body)
    for _ in range(3):
        await response.content.readline()
    assert (await (await client.get("/_sim/stats")).json())["open_streams"] == 1
    response.close()  # drop the connection mid-stream
    stats = await wait_for_stats(client, lambda s: s["open_streams"] == 0)
    assert stats["open_streams"] == 0
    assert stats["disconnected_streams"] == 1 and stats["completed_streams"] == 0


async def test_disconnect_during_a_stall_without_handler_cancellation() -> None:
    # aiohttp's default runner (what `gateway simulate` uses) never cancels the handler,
    # so only the simulator's own watch can notice the client leaving mid-stall
    runner = web.AppRunner(create_app(SimulatorConfig()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            body = {"model": "m", "stream": True, "messages": user("[[fault:stall_after=1,stall_ms=20000]] go")}
            response = await session.post("/v1/chat/completions", json=body)
            await response.content.readline()
            response.close()
            deadline = time.monotonic() + 3
            while True:
                async with session.get("/_sim/stats") as r:
                    stats = await r.json()
                if stats["open_streams"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            assert stats["open_streams"] == 0 and stats["disconnected_streams"] == 1
    finally:
        await runner.cleanup()


# -- the command -----------------------------------------------------------------------


def test_main_rejects_a_bad_fault_spec(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--fail-rate", "0.5", "--fail-with", "teapot"])
    assert caught.value.code == 2
    assert "teapot" in capsys.readouterr().err


async def test_main_serves_and_exits_cleanly_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulate", "--port", "0", "--token-rate", "0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(process.stderr.readline), 10)
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/health") as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(process.wait), 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_fail_with_takes_multi_key_specs_separated_by_semicolons() -> None:
    from gateway.simulate.cli import _split_specs

    assert _split_specs("rate_limited, overloaded") == ["rate_limited", "overloaded"]
    assert _split_specs("status=429,retry_after=2;reset") == ["status=429,retry_after=2", "reset"]
    specs = SimulatorConfig(fail_rate=1, fail_with=_split_specs("status=429,retry_after=2;reset")).fault_specs()
    assert [(s.status, s.retry_after, s.reset) for s in specs] == [(429, 2.0, False), (None, None, True)]
