"""Anthropic Messages adapter: request translation, responses, streaming, errors.

Pure translation tests on payload shapes recorded from the Messages API reference
(tests/payloads/anthropic); no network.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.providers.anthropic import AnthropicAdapter
from gateway.providers.base import Deployment, SSEDecoder
from gateway.providers.errors import ErrorKind, UpstreamError

PAYLOADS = Path(__file__).parent / "payloads" / "anthropic"
KEY = "sk-ant-api03-secretsecretsecret"
adapter = AnthropicAdapter()


def deployment(**overrides: Any) -> Deployment:
    fields: dict[str, Any] = dict(
        model="claude-sonnet",
        provider="anthropic",
        api="anthropic",
        base_url="https://api.anthropic.com",
        upstream_model="claude-sonnet-4-5-20250929",
        api_key=KEY,
    )
    fields.update(overrides)
    return Deployment(**fields)


def upstream(body: dict[str, Any], *, stream: bool = False, **overrides: Any) -> dict[str, Any]:
    return orjson.loads(adapter.build_request(body, deployment(**overrides), stream=stream).body)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


# ---- build_request ---------------------------------------------------------------------


def test_minimal_request_url_headers_and_body() -> None:
    request = adapter.build_request({"model": "claude-sonnet", "messages": [user("Hi")]}, deployment(), stream=False)
    assert request.method == "POST"
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers == {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": KEY,
    }
    assert orjson.loads(request.body) == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert KEY not in request.url


@pytest.mark.parametrize(
    "base_url", ["https://proxy.example/anthropic/v1", "https://proxy.example/anthropic/v1/", "https://proxy.example/anthropic"]
)
def test_base_url_with_or_without_version_is_not_doubled(base_url: str) -> None:
    request = adapter.build_request({"messages": [user("Hi")]}, deployment(base_url=base_url), stream=False)
    assert request.url == "https://proxy.example/anthropic/v1/messages"


def test_streaming_extra_headers_and_query() -> None:
    request = adapter.build_request(
        {"messages": [user("Hi")]},
        deployment(extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"}, query={"tenant": "a b"}),
        stream=True,
    )
    assert request.url == "https://api.anthropic.com/v1/messages?tenant=a+b"
    assert request.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert request.headers["accept"] == "text/event-stream"
    assert orjson.loads(request.body)["stream"] is True


def test_no_api_key_sends_no_key_header() -> None:
    request = adapter.build_request({"messages": [user("Hi")]}, deployment(api_key=None), stream=False)
    assert "x-api-key" not in request.headers


def test_system_and_developer_messages_become_one_top_level_system() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            user("Hi"),
            {"role": "system", "content": "Never apologise."},
        ]
    }
    out = upstream(body)
    assert out["system"] == "You are terse.\n\nAnswer in French.\n\nNever apologise."
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_multipart_content_images_and_pdf() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                ],
            }
        ]
    }
    assert upstream(body)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
            ],
        }
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        "strict": True,
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def test_tools_translate_to_input_schema() -> None:
    out = upstream({"messages": [user("Weather?")], "tools": [WEATHER_TOOL, TIME_TOOL]})
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": choice})
    assert out["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL], "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL], "parallel_tool_calls": True})
    assert "tool_choice" not in out


def test_tool_choice_without_tools_is_dropped_and_unknown_name_rejected() -> None:
    assert "tool_choice" not in upstream({"messages": [user("x")], "tool_choice": "required"})
    with pytest.raises(UpstreamError) as caught:
        upstream({"messages": [user("x")], "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert "tool_choice" in caught.value.message and "nope" in caught.value.message


def test_legacy_functions_and_function_call() -> None:
    out = upstream({"messages": [user("x")], "functions": [TIME_TOOL["function"]], "function_call": {"name": "get_time"}})
    assert out["tools"] == [{"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "tool", "name": "get_time"}


def test_tool_calls_and_results_merge_into_alternating_turns() -> None:
    body = {
        "messages": [
            user("Weather in SF and Paris?"),
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "SF"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            user("And tomorrow?"),
        ]
    }
    assert upstream(body)["messages"] == [
        {"role": "user", "content": "Weather in SF and Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "SF"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_foreign_tool_call_ids_are_rewritten_consistently() -> None:
    foreign = "call_abc/def+ghi==" + "x" * 80  # e.g. a Gemini id carrying a thought signature
    body = {
        "messages": [
            user("x"),
            {"role": "assistant", "content": None, "tool_calls": [{"id": foreign, "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": foreign, "content": "noon"},
        ]
    }
    messages = upstream(body)["messages"]
    use, result = messages[1]["content"][0], messages[2]["content"][0]
    assert use["id"] == result["tool_use_id"]
    assert use["id"].startswith("toolu_") and len(use["id"]) <= 64 and use["id"].replace("_", "").isalnum()
    assert use["input"] == {}
    assert messages[1]["content"] == [use]  # null content adds no empty text block


def test_consecutive_same_role_messages_merge_and_empty_ones_drop() -> None:
    body = {"messages": [user("a"), user("b"), {"role": "assistant", "content": ""}, user("c")]}
    assert upstream(body)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"}]}
    ]


def test_json_object_adds_a_system_instruction() -> None:
    out = upstream({"messages": [{"role": "system", "content": "Be brief."}, user("x")], "response_format": {"type": "json_object"}})
    assert out["system"].startswith("Be brief.\n\nRespond with a single valid JSON object")
    assert "tools" not in out


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}}, "required": ["name", "born"]}


def test_json_schema_forces_the_json_tool() -> None:
    out = upstream({"messages": [user("Who wrote the first program?")], "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}})
    assert out["tools"] == [{"name": "json_response", "description": "Return the final answer as this JSON object.", "input_schema": SCHEMA}]
    assert out["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert "json_response tool" in out["system"]


def test_json_schema_with_client_tools_goes_into_the_instruction() -> None:
    out = upstream({"messages": [user("x")], "tools": [TIME_TOOL], "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}})
    assert [tool["name"] for tool in out["tools"]] == ["get_time"]
    assert "tool_choice" not in out
    assert orjson.dumps(SCHEMA).decode() in out["system"]


def test_sampling_limits_stop_and_user() -> None:
    out = upstream(
        {
            "messages": [user("x")],
            "temperature": 1.7,
            "top_p": 0.9,
            "stop": "END",
            "max_tokens": 100,
            "max_completion_tokens": 300,
            "user": "user-42",
        }
    )
    assert out["temperature"] == 1.0
    assert "top_p" not in out  # recent Claude models reject temperature and top_p together
    assert upstream({"messages": [user("x")], "top_p": 0.9})["top_p"] == 0.9
    assert upstream({"messages": [user("x")], "temperature": -1})["temperature"] == 0.0
    assert out["stop_sequences"] == ["END"]
    assert out["max_tokens"] == 300
    assert out["metadata"] == {"user_id": "user-42"}
    assert upstream({"messages": [user("x")], "stop": ["a", "b"], "max_tokens": 7})["stop_sequences"] == ["a", "b"]
    assert upstream({"messages": [user("x")], "max_tokens": 7})["max_tokens"] == 7
    assert orjson.loads(AnthropicAdapter(default_max_tokens=1000).build_request({"messages": [user("x")]}, deployment(), stream=False).body)["max_tokens"] == 1000


def test_fields_without_an_anthropic_equivalent_are_dropped() -> None:
    out = upstream(
        {
            "model": "claude-sonnet",
            "messages": [user("x")],
            "frequency_penalty": 0.5,
            "presence_penalty": 0.5,
            "logit_bias": {"1": 2},
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 7,
            "service_tier": "auto",
            "store": True,
            "metadata": {"task": "chat"},
            "stream_options": {"include_usage": True},
            "reasoning_effort": "low",
            "n": 1,
            "something_new": {"x": 1},
        }
    )
    assert out == {"model": "claude-sonnet-4-5-20250929", "max_tokens": 4096, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [user("x")], "n": 2}, "'n'"),
        ({"messages": []}, "'messages'"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}, "messages[0].content[0].image_url.url"),
        (
            {"messages": [user("x"), {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [user("x"), {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id"),
        ({"messages": [user("x")], "max_tokens": 0}, "'max_tokens'"),
        ({"messages": [user("x")], "response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_untranslatable_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        upstream(body)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert field in caught.value.message


# ---- parse_response --------------------------------------------------------------------


def test_parse_text_response() -> None:
    answer = adapter.parse_response(payload("response_text.json"), deployment())
    assert answer["id"] == "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL"
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["created"], int) and answer["created"] > 1_600_000_000
    assert answer["model"] == "claude-sonnet"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 10,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_parse_tool_use_response_with_cached_usage() -> None:
    answer = adapter.parse_response(payload("response_tool_use.json"), deployment())
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather in both cities."
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "function", "get_weather"),
        ("toolu_01B8a7c6d5e4f3g2h1i0j9k8", "function", "get_weather"),
    ]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert answer["usage"]["prompt_tokens"] == 384 + 2048 + 120
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 2048
    assert answer["usage"]["total_tokens"] == 384 + 2048 + 120 + 96


def test_parse_json_tool_response_becomes_content() -> None:
    choice = adapter.parse_response(payload("response_json_tool.json"), deployment())["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"name": "Ada Lovelace", "born": 1815}
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("name", "finish", "content"),
    [
        ("response_thinking_max_tokens.json", "length", "Chapter one: it was a dark and"),
        ("response_stop_sequence.json", "stop", "1, 2, 3, 4"),
    ],
)
def test_parse_finish_reasons(name: str, finish: str, content: str) -> None:
    choice = adapter.parse_response(payload(name), deployment())["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == (finish, content)


def test_parse_empty_refusal_is_a_content_filter_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter.parse_response(payload("response_refusal.json"), deployment())
    assert caught.value.kind is ErrorKind.CONTENT_FILTER


def test_parse_refusal_with_partial_text_keeps_it() -> None:
    data = orjson.loads(payload("response_refusal.json"))
    data["content"] = [{"type": "text", "text": "I started, but"}]
    choice = adapter.parse_response(orjson.dumps(data), deployment())["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", "I started, but")


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"id": "msg_1", "content": "text"}', b'{"content": [{"type": "text", "text": 3}]}'])
def test_parse_malformed_response(data: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter.parse_response(data, deployment())
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


# ---- streaming -------------------------------------------------------------------------


def stream(name: str, *, seed: int, include_usage: bool = True, crlf: bool = False) -> tuple[list[dict[str, Any]], Any]:
    """Feed a recorded transcript through SSEDecoder in random byte splits."""
    raw = payload(name)
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    body = {"messages": [user("x")], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    translator = adapter.stream_translator(deployment(), body)
    decoder, chunks, rng, position = SSEDecoder(), [], random.Random(seed), 0
    while position < len(raw):
        step = rng.randint(1, 40)
        for event, data in decoder.feed(raw[position : position + step]):
            chunks.extend(translator.feed(data, event))
        position += step
    for event, data in decoder.flush():
        chunks.extend(translator.feed(data, event))
    return chunks, translator


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    content, calls, finish, usage, roles = "", {}, None, None, []
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "claude-sonnet"
        assert chunk["id"] == chunks[0]["id"] and chunk["created"] == chunks[0]["created"]
        if not chunk["choices"]:
            usage = chunk["usage"]
            continue
        choice = chunk["choices"][0]
        delta = choice["delta"]
        if "role" in delta:
            roles.append(delta["role"])
        content += delta.get("content") or ""
        for call in delta.get("tool_calls", []):
            slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in call:
                assert slot["id"] is None, "id is sent once, on the first delta"
                slot["id"], slot["name"] = call["id"], call["function"]["name"]
                assert call["type"] == "function"
            slot["arguments"] += call["function"].get("arguments", "")
        if choice["finish_reason"]:
            assert finish is None
            finish = choice["finish_reason"]
    return {"content": content, "calls": [calls[i] for i in sorted(calls)], "finish": finish, "usage": usage, "roles": roles}


@pytest.mark.parametrize("seed", range(5))
def test_stream_text(seed: int) -> None:
    chunks, translator = stream("stream_text.sse", seed=seed, crlf=seed % 2 == 1)
    result = assemble(chunks)
    assert translator.done
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert result["roles"] == ["assistant"]
    assert result["content"] == "Hello, wörld! 👋"
    assert result["finish"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["id"] == "chatcmpl-msg_01StreamText000000000001"
    assert result["usage"]["prompt_tokens"] == 25 + 1024
    assert result["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
    assert result["usage"]["completion_tokens"] == 15


@pytest.mark.parametrize("seed", range(5))
def test_stream_tool_use(seed: int) -> None:
    chunks, translator = stream("stream_tool_use.sse", seed=seed)
    result = assemble(chunks)
    assert translator.done
    assert result["content"] == "Okay, let's check the weather."
    assert result["calls"] == [
        {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "arguments": '{"location": "San Francisco, CA", "unit": "fahrenheit"}'},
        {"id": "toolu_01NoArgs0000000000000001", "name": "get_time", "arguments": "{}"},
    ]
    first_call_delta = next(c for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"])
    assert first_call_delta["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert result["finish"] == "tool_calls"
    assert result["usage"]["completion_tokens"] == 89 and result["usage"]["prompt_tokens"] == 472


@pytest.mark.parametrize("seed", range(3))
def test_stream_json_tool_streams_as_content_and_skips_thinking(seed: int) -> None:
    chunks, _ = stream("stream_thinking_json_tool.sse", seed=seed)
    result = assemble(chunks)
    assert orjson.loads(result["content"]) == {"name": "Ada Lovelace", "born": 1815}
    assert result["calls"] == []
    assert result["finish"] == "stop"
    assert result["usage"]["prompt_tokens"] == 310 + 2000
    assert result["usage"]["completion_tokens"] == 42


def test_stream_without_include_usage_has_no_usage_chunk_but_tracks_usage() -> None:
    chunks, translator = stream("stream_text.sse", seed=1, include_usage=False)
    assert all(chunk["choices"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert translator.usage["completion_tokens"] == 15


def test_stream_in_band_overloaded_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        stream("stream_overloaded.sse", seed=0)
    assert caught.value.kind is ErrorKind.OVERLOADED
    assert caught.value.provider_code == "overloaded_error"


def test_stream_cut_before_message_stop_is_not_done() -> None:
    raw = payload("stream_text.sse")
    cut = raw[: raw.index(b"event: message_delta")]
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    decoder = SSEDecoder()
    for event, data in decoder.feed(cut):
        translator.feed(data, event)
    assert not translator.done


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b'"a string"',
        b'{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',  # before message_start
    ],
)
def test_stream_malformed_events(data: bytes) -> None:
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    with pytest.raises(UpstreamError) as caught:
        translator.feed(data, None)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


def test_stream_delta_for_unknown_block_is_malformed() -> None:
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    translator.feed(b'{"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 1}}}')
    with pytest.raises(UpstreamError) as caught:
        translator.feed(b'{"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": "x"}}')
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


# ---- map_error -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "kind", "code"),
    [
        ("error_400_invalid_request.json", 400, ErrorKind.BAD_REQUEST, "invalid_request_error"),
        ("error_400_prompt_too_long.json", 400, ErrorKind.CONTEXT_LENGTH, "invalid_request_error"),
        ("error_400_context_limit.json", 400, ErrorKind.CONTEXT_LENGTH, "invalid_request_error"),
        ("error_400_credit_balance.json", 400, ErrorKind.AUTH, "invalid_request_error"),
        ("error_401_authentication.json", 401, ErrorKind.AUTH, "authentication_error"),
        ("error_403_permission.json", 403, ErrorKind.AUTH, "permission_error"),
        ("error_404_not_found.json", 404, ErrorKind.NOT_FOUND, "not_found_error"),
        ("error_413_request_too_large.json", 413, ErrorKind.CONTEXT_LENGTH, "request_too_large"),
        ("error_429_rate_limit.json", 429, ErrorKind.RATE_LIMITED, "rate_limit_error"),
        ("error_500_api_error.json", 500, ErrorKind.SERVER_ERROR, "api_error"),
        ("error_529_overloaded.json", 529, ErrorKind.OVERLOADED, "overloaded_error"),
    ],
)
def test_map_error(name: str, status: int, kind: ErrorKind, code: str) -> None:
    error = adapter.map_error(status, {}, payload(name))
    assert error.kind is kind
    assert error.status == status
    assert error.provider_code == code
    assert orjson.loads(payload(name))["error"]["message"][:40] in error.message


def test_map_error_retry_after_header_any_case() -> None:
    assert adapter.map_error(429, {"Retry-After": "17"}, payload("error_429_rate_limit.json")).retry_after == 17.0
    assert adapter.map_error(529, {"retry-after": "2.5"}, payload("error_529_overloaded.json")).retry_after == 2.5
    assert adapter.map_error(429, {}, payload("error_429_rate_limit.json")).retry_after is None


@pytest.mark.parametrize(
    ("status", "kind"), [(502, ErrorKind.SERVER_ERROR), (503, ErrorKind.OVERLOADED), (429, ErrorKind.RATE_LIMITED), (504, ErrorKind.TIMEOUT)]
)
def test_map_error_non_json_body_maps_by_status(status: int, kind: ErrorKind) -> None:
    error = adapter.map_error(status, {"retry-after": "3"}, b"<html><body>Bad Gateway</body></html>")
    assert error.kind is kind
    assert error.retry_after == 3.0
    assert str(status) in error.message


def test_error_messages_never_carry_a_key() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"}})
    error = adapter.map_error(401, {}, body)
    assert KEY not in error.message and "[redacted]" in error.message
    raw = adapter.map_error(500, {}, f"upstream died, key={KEY}".encode())
    assert KEY not in raw.message


def test_stream_block_index_of_the_wrong_type_is_malformed() -> None:
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    translator.feed(b'{"type": "message_start", "message": {"id": "msg_1"}}')
    with pytest.raises(UpstreamError) as caught:
        translator.feed(b'{"type": "content_block_stop", "index": [0]}')
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


# ---- what the official SDK sees ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["response_text.json", "response_tool_use.json", "response_json_tool.json", "response_thinking_max_tokens.json", "response_stop_sequence.json"],
)
def test_answers_validate_as_openai_sdk_models(name: str) -> None:
    from openai.types.chat import ChatCompletion

    parsed = ChatCompletion.model_validate(adapter.parse_response(payload(name), deployment()))
    assert parsed.choices[0].message.role == "assistant"


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_tool_use.sse", "stream_thinking_json_tool.sse"])
def test_chunks_validate_as_openai_sdk_models(name: str) -> None:
    from openai.types.chat import ChatCompletionChunk

    chunks, _ = stream(name, seed=7)
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert parsed[-1].usage is not None and parsed[-1].choices == []
