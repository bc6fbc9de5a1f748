"""Conformance through the official `openai` SDK (sync and async) against gateway + simulator."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.servers import CLIENT_KEY, Running

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tides"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def async_client(gw: Running, **options: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, **options)


def sync_client(gw: Running, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, **options)


async def test_plain_completion_async(gw: Running, sim: Running) -> None:
    client = async_client(gw)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    direct = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    upstream = await direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == upstream.choices[0].message.content
    assert completion.model == "gpt-4o-mini"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


async def test_plain_completion_sync(gw: Running) -> None:
    def call() -> str:
        with sync_client(gw) as client:
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
            assert raw.headers["x-gateway-model"] == "gpt-4o-mini"
            return raw.parse().choices[0].message.content

    assert await asyncio.to_thread(call)


async def test_streaming_reassembles_to_upstream_content(gw: Running, sim: Running) -> None:
    client = async_client(gw)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    direct = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    upstream = await direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "".join(parts) == upstream.choices[0].message.content
    assert usage is not None and usage.completion_tokens == upstream.usage.completion_tokens


async def test_streaming_sync(gw: Running) -> None:
    def call() -> str:
        with sync_client(gw) as client:
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert len(await asyncio.to_thread(call)) > 10


async def test_tool_calls(gw: Running) -> None:
    client = async_client(gw)
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)


async def test_tool_call_streaming(gw: Running) -> None:
    client = async_client(gw)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], stream=True
    )
    name, arguments, finish = None, "", None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            name = name or delta.function.name
            arguments += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and "city" in json.loads(arguments) and finish == "tool_calls"


async def test_response_format_json_schema(gw: Running) -> None:
    client = async_client(gw)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Extract: Ann is 31."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    parsed = json.loads(completion.choices[0].message.content)
    assert isinstance(parsed["name"], str) and isinstance(parsed["age"], int)


async def test_n_choices(gw: Running) -> None:
    completion = await async_client(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]


async def test_models_list_and_retrieve(gw: Running) -> None:
    client = async_client(gw)
    ids = [m.id async for m in client.models.list()]
    assert ids[:4] == ["auto", "auto:cost", "auto:balanced", "auto:quality"] and "gpt-4o-mini" in ids
    for name in ("gpt-4o-mini", "openai/gpt-4o-mini", "auto:quality"):
        assert (await client.models.retrieve(name)).id == name
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("openai/no-such-model")


def fault(spec: str) -> list[dict]:
    return [{"role": "user", "content": f"[[fault:{spec}]] hello"}]


# The shipped policy answers easy chat with a static completion when every model fails;
# the `code` route (chosen here by hint) ends its ladder with an explicit error instead.
ERROR_MODE_ROUTE = {"x-gateway-task": "code"}


@pytest.mark.parametrize(
    ("kwargs", "exception"),
    [
        ({"model": "gpt-4o-mini", "messages": []}, openai.BadRequestError),
        ({"model": "no-such-model", "messages": MESSAGES}, openai.NotFoundError),
        ({"model": "gpt-4o-mini", "messages": fault("status=500")}, openai.InternalServerError),
    ],
)
async def test_error_classes(gw: Running, kwargs: dict, exception: type) -> None:
    with pytest.raises(exception):
        await async_client(gw).chat.completions.create(**kwargs, extra_headers=ERROR_MODE_ROUTE)


async def test_authentication_error(gw: Running) -> None:
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_rate_limit_error_carries_retry_after(gw: Running) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await async_client(gw).chat.completions.create(
            model="gpt-4o-mini", messages=fault("status=429,retry_after=30"), extra_headers=ERROR_MODE_ROUTE
        )
    assert caught.value.response.headers["retry-after"] == "30"


async def test_timeout_error(gw: Running) -> None:
    client = async_client(gw, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=fault("delay_ms=3000"))


async def test_sync_client_error_classes(gw: Running) -> None:
    def call() -> None:
        with sync_client(gw) as client:
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=-1)
            assert caught.value.body["param"] == "max_tokens"

    await asyncio.to_thread(call)
