"""Gemini adapter: request translation, responses, streaming, errors.

Pure translation tests on payload shapes recorded from the Gemini API reference
(tests/payloads/gemini); no network.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.providers.base import Deployment, SSEDecoder
from gateway.providers.errors import ErrorKind, UpstreamError
from gateway.providers.gemini import GeminiAdapter

PAYLOADS = Path(__file__).parent / "payloads" / "gemini"
KEY = "AIzaSyD-secretsecretsecretsecret12345"
adapter = GeminiAdapter()


def deployment(**overrides: Any) -> Deployment:
    fields: dict[str, Any] = dict(
        model="gemini-flash",
        provider="google",
        api="gemini",
        base_url="https://generativelanguage.googleapis.com",
        upstream_model="gemini-2.5-flash",
        api_key=KEY,
    )
    fields.update(overrides)
    return Deployment(**fields)


def upstream(body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    return orjson.loads(adapter.build_request(body, deployment(), stream=stream).body)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


# ---- build_request ---------------------------------------------------------------------


def test_minimal_request_url_headers_and_body() -> None:
    request = adapter.build_request({"model": "gemini-flash", "messages": [user("Hi")]}, deployment(), stream=False)
    assert request.method == "POST"
    assert request.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers == {"content-type": "application/json", "accept": "application/json", "x-goog-api-key": KEY}
    assert orjson.loads(request.body) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_streaming_url_never_carries_the_key() -> None:
    request = adapter.build_request(
        {"messages": [user("Hi")]}, deployment(extra_headers={"x-goog-user-project": "p1"}, query={"trace": "1"}), stream=True
    )
    assert request.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&trace=1"
    assert KEY not in request.url
    assert request.headers["x-goog-user-project"] == "p1"
    assert request.headers["accept"] == "text/event-stream"
    assert "stream" not in orjson.loads(request.body)


@pytest.mark.parametrize(
    ("base_url", "prefix"),
    [
        ("https://generativelanguage.googleapis.com/v1beta", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://generativelanguage.googleapis.com/v1beta/", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://gw.example/google/v1", "https://gw.example/google/v1"),
        ("https://gw.example/google", "https://gw.example/google/v1beta"),
    ],
)
def test_base_url_version_is_not_doubled(base_url: str, prefix: str) -> None:
    request = adapter.build_request({"messages": [user("Hi")]}, deployment(base_url=base_url, upstream_model="models/gemini-2.0-flash"), stream=False)
    assert request.url == f"{prefix}/models/gemini-2.0-flash:generateContent"


def test_system_and_developer_messages_become_system_instruction() -> None:
    out = upstream(
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "developer", "content": "Use metric."}, user("Hi")]}
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be terse.\n\nUse metric."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]


def test_multipart_content_images_files_and_audio() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/pics/cat.png?size=large"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ]
    }
    assert upstream(body)["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/pics/cat.png?size=large"}},
        {"fileData": {"fileUri": "https://example.com/render"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": False},
        "strict": True,
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def test_tools_become_function_declarations_with_json_schema() -> None:
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL, TIME_TOOL]})
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "Current weather", "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]},
                {"name": "get_time"},
            ]
        }
    ]
    assert "toolConfig" not in out


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    out = upstream({"messages": [user("x")], "tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": choice, "parallel_tool_calls": False})
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_named_tool_choice_must_exist() -> None:
    with pytest.raises(UpstreamError) as caught:
        upstream({"messages": [user("x")], "tools": [TIME_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert caught.value.kind is ErrorKind.BAD_REQUEST and "'nope'" in caught.value.message


def test_tool_calls_and_results_map_back_by_name() -> None:
    body = {
        "messages": [
            user("Weather in Paris and the time?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            user("Thanks. Summarise."),
        ]
    }
    assert upstream(body)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and the time?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
                {"text": "Thanks. Summarise."},
            ],
        },
    ]


def test_tool_result_for_an_unknown_call_is_rejected() -> None:
    with pytest.raises(UpstreamError) as caught:
        upstream({"messages": [user("x"), {"role": "tool", "tool_call_id": "call_zzz", "content": "r"}]})
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert "messages[1].tool_call_id" in caught.value.message


def test_thought_signature_round_trips_through_the_tool_call_id() -> None:
    answer = adapter.parse_response(payload("response_function_call.json"), deployment())
    calls = answer["choices"][0]["message"]["tool_calls"]
    followup = {
        "messages": [
            user("Weather?"),
            answer["choices"][0]["message"],
            *({"role": "tool", "tool_call_id": call["id"], "content": "ok"} for call in calls),
        ]
    }
    model_turn = upstream(followup)["contents"][1]
    assert model_turn["role"] == "model"
    assert model_turn["parts"] == [
        {"text": "Let me look both up."},
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}}, "thoughtSignature": "CiQB50Kd+FOuCWS/GnXQK4bhPJfyTag="},
        {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]
    results = upstream(followup)["contents"][2]["parts"]
    assert [part["functionResponse"]["name"] for part in results] == ["get_weather", "get_weather", "get_time"]


def test_generation_config() -> None:
    out = upstream(
        {
            "messages": [user("x")],
            "temperature": 1.4,
            "top_p": 0.8,
            "top_k": 40,
            "max_tokens": 50,
            "max_completion_tokens": 200,
            "stop": ["END", "STOP"],
            "n": 3,
            "seed": 11,
            "presence_penalty": 0.2,
            "frequency_penalty": 0.1,
        }
    )
    assert out["generationConfig"] == {
        "temperature": 1.4,
        "topP": 0.8,
        "presencePenalty": 0.2,
        "frequencyPenalty": 0.1,
        "topK": 40,
        "seed": 11,
        "maxOutputTokens": 200,
        "stopSequences": ["END", "STOP"],
        "candidateCount": 3,
    }
    assert upstream({"messages": [user("x")], "stop": "END", "max_tokens": 9, "n": 1})["generationConfig"] == {
        "maxOutputTokens": 9,
        "stopSequences": ["END"],
    }


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    out = upstream({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}})
    assert out["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    out = upstream({"messages": [user("x")], "response_format": {"type": "json_object"}})
    assert out["generationConfig"] == {"responseMimeType": "application/json"}
    assert "generationConfig" not in upstream({"messages": [user("x")], "response_format": {"type": "text"}})


def test_fields_without_a_gemini_equivalent_are_dropped() -> None:
    out = upstream(
        {
            "model": "gemini-flash",
            "messages": [user("x"), {"role": "assistant", "content": [{"type": "text", "text": "y"}]}, user("z")],
            "user": "u-1",
            "logit_bias": {"1": 1},
            "logprobs": True,
            "service_tier": "auto",
            "store": False,
            "metadata": {"a": "b"},
            "stream_options": {"include_usage": True},
            "reasoning_effort": "high",
            "brand_new_field": 1,
        }
    )
    assert out == {
        "contents": [
            {"role": "user", "parts": [{"text": "x"}]},
            {"role": "model", "parts": [{"text": "y"}]},
            {"role": "user", "parts": [{"text": "z"}]},
        ]
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": "hi"}, "'messages'"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "flac"}}]}]}, "messages[0].content[0].input_audio"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, "messages[0].content[0].file.file_data"),
        ({"messages": [user("x")], "n": 0}, "'n'"),
        ({"messages": [user("x")], "temperature": "hot"}, "'temperature'"),
        ({"messages": [user("x")], "stop": [1]}, "'stop'"),
        ({"messages": [user("x")], "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ],
)
def test_untranslatable_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        upstream(body)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert field in caught.value.message


# ---- parse_response --------------------------------------------------------------------


def test_parse_text_response_with_thinking_usage() -> None:
    answer = adapter.parse_response(payload("response_text.json"), deployment())
    assert answer["id"] == "chatcmpl-8I3YaJrCLsTNjMcPvIyWkA4"
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "gemini-flash"
    assert isinstance(answer["created"], int)
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there! How can I help you today?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 8,
        "completion_tokens": 38,
        "total_tokens": 46,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 28},
    }


def test_parse_function_calls() -> None:
    answer = adapter.parse_response(payload("response_function_call.json"), deployment())
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look both up."
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"location": "Paris", "unit": "celsius"}),
        ("function", "get_weather", {"location": "Tokyo"}),
        ("function", "get_time", {}),
    ]
    ids = [c["id"] for c in calls]
    assert len(set(ids)) == 3 and all(i.startswith("call_") for i in ids)
    assert ids == [c["id"] for c in adapter.parse_response(payload("response_function_call.json"), deployment())["choices"][0]["message"]["tool_calls"]]
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
    assert answer["usage"]["prompt_tokens"] == 1200 and answer["usage"]["completion_tokens"] == 40


def test_parse_max_tokens_and_two_candidates() -> None:
    assert adapter.parse_response(payload("response_max_tokens.json"), deployment())["choices"][0]["finish_reason"] == "length"
    choices = adapter.parse_response(payload("response_two_candidates.json"), deployment())["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [(0, "Red.", "stop"), (1, "Blue.", "stop")]


@pytest.mark.parametrize(("name", "code"), [("response_safety.json", "SAFETY"), ("response_prompt_blocked.json", "PROHIBITED_CONTENT")])
def test_parse_blocked_answers_are_content_filter_errors(name: str, code: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter.parse_response(payload(name), deployment())
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert caught.value.provider_code == code


def test_parse_partial_answer_stopped_by_safety_keeps_its_text() -> None:
    data = orjson.loads(payload("response_safety.json"))
    data["candidates"][0]["content"] = {"parts": [{"text": "Step one is"}], "role": "model"}
    choice = adapter.parse_response(orjson.dumps(data), deployment())["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Step one is", "content_filter")


@pytest.mark.parametrize(
    "data",
    [
        b"<html>",
        b"[1, 2]",
        b'{"candidates": []}',
        b'{"candidates": [{"content": {"parts": "text"}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}',
        b'{"candidates": [{"index": {"a": 1}, "content": {"parts": [{"text": "hi"}]}}]}',
        b'{"candidates": [{"index": -1, "content": {"parts": [{"text": "hi"}]}}]}',
        b'{"candidates": [{"finishReason": {"a": 1}, "content": {"parts": [{"text": "hi"}]}}]}',
    ],
)
def test_parse_malformed_response(data: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter.parse_response(data, deployment())
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


# ---- streaming -------------------------------------------------------------------------


def stream(name: str, *, seed: int, include_usage: bool = True, lf_only: bool = False) -> tuple[list[dict[str, Any]], Any]:
    """Feed a recorded transcript through SSEDecoder in random byte splits."""
    raw = payload(name)
    if lf_only:
        raw = raw.replace(b"\r\n", b"\n")
    body: dict[str, Any] = {"messages": [user("x")], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    translator = adapter.stream_translator(deployment(), body)
    decoder, chunks, rng, position = SSEDecoder(), [], random.Random(seed), 0
    while position < len(raw):
        step = rng.randint(1, 64)
        for event, data in decoder.feed(raw[position : position + step]):
            chunks.extend(translator.feed(data, event))
        position += step
    for event, data in decoder.flush():
        chunks.extend(translator.feed(data, event))
    return chunks, translator


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    content, calls, finish, usage, roles = "", [], None, None, []
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gemini-flash"
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
            assert call["index"] == len(calls), "each Gemini call is one whole delta"
            calls.append(call)
        if choice["finish_reason"]:
            assert finish is None
            finish = choice["finish_reason"]
    return {"content": content, "calls": calls, "finish": finish, "usage": usage, "roles": roles}


@pytest.mark.parametrize("seed", range(5))
def test_stream_text(seed: int) -> None:
    chunks, translator = stream("stream_text.sse", seed=seed, lf_only=seed % 2 == 1)
    result = assemble(chunks)
    assert translator.done
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["id"] == "chatcmpl-streamText00000001"
    assert result["roles"] == ["assistant"]
    assert result["content"] == "The quick brown fox jumps über the lazy dog. 🦊"
    assert result["finish"] == "stop"
    assert chunks[-1]["choices"] == []
    assert result["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 42,
        "total_tokens": 51,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 28},
    }


@pytest.mark.parametrize("seed", range(5))
def test_stream_function_calls(seed: int) -> None:
    chunks, translator = stream("stream_function_call.sse", seed=seed)
    result = assemble(chunks)
    assert translator.done
    assert result["content"] == "Checking both cities."
    assert [(c["type"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in result["calls"]] == [
        ("function", "get_weather", {"location": "Paris", "unit": "celsius"}),
        ("function", "get_weather", {"location": "Tokyo"}),
        ("function", "get_time", {}),
    ]
    assert result["finish"] == "tool_calls"
    assert result["usage"]["completion_tokens"] == 31


def test_streamed_and_unary_answers_get_the_same_tool_call_ids() -> None:
    chunks, _ = stream("stream_function_call.sse", seed=0)
    streamed_ids = [c["id"] for c in assemble(chunks)["calls"]]
    unary = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Checking both cities."},
                        {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}}, "thoughtSignature": "CiQB50Kd+FOuCWS/GnXQK4bhPJfyTag="},
                        {"functionCall": {"name": "get_weather", "args": {"location": "Tokyo"}}},
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "responseId": "streamTools0000001",
    }
    unary_ids = [c["id"] for c in adapter.parse_response(orjson.dumps(unary), deployment())["choices"][0]["message"]["tool_calls"]]
    assert streamed_ids == unary_ids


def test_stream_without_include_usage_tracks_usage_silently() -> None:
    chunks, translator = stream("stream_text.sse", seed=3, include_usage=False)
    assert all(chunk["choices"] for chunk in chunks)
    assert translator.usage["total_tokens"] == 51


def test_stream_in_band_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        stream("stream_error.sse", seed=1)
    assert caught.value.kind is ErrorKind.OVERLOADED
    assert caught.value.status == 503 and caught.value.provider_code == "UNAVAILABLE"


def test_stream_prompt_blocked() -> None:
    with pytest.raises(UpstreamError) as caught:
        stream("stream_prompt_blocked.sse", seed=1)
    assert caught.value.kind is ErrorKind.CONTENT_FILTER


def test_stream_cut_before_finish_is_not_done() -> None:
    raw = payload("stream_text.sse")
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    for event, data in SSEDecoder().feed(raw[: raw.index(b"finishReason")]):
        translator.feed(data, event)
    assert not translator.done


@pytest.mark.parametrize("data", [b"{oops", b"[]", b'{"candidates": {}}', b'{"candidates": [{"content": {"parts": [1]}}]}',
                                  b'{"candidates": [{"index": {"a": 1}, "content": {"parts": [{"text": "hi"}]}}]}',
                                  b'{"candidates": [{"index": true, "content": {"parts": [{"text": "hi"}]}}]}',
                                  b'{"candidates": [{"finishReason": ["STOP"], "content": {"parts": [{"text": "hi"}]}}]}'])
def test_stream_malformed_events(data: bytes) -> None:
    translator = adapter.stream_translator(deployment(), {"messages": [user("x")]})
    with pytest.raises(UpstreamError) as caught:
        translator.feed(data)
    assert caught.value.kind is ErrorKind.MALFORMED_RESPONSE


# ---- map_error -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "kind", "code"),
    [
        ("error_400_invalid_argument.json", 400, ErrorKind.BAD_REQUEST, "INVALID_ARGUMENT"),
        ("error_400_token_count.json", 400, ErrorKind.CONTEXT_LENGTH, "INVALID_ARGUMENT"),
        ("error_400_api_key_invalid.json", 400, ErrorKind.AUTH, "INVALID_ARGUMENT"),
        ("error_400_failed_precondition.json", 400, ErrorKind.AUTH, "FAILED_PRECONDITION"),
        ("error_401_unauthenticated.json", 401, ErrorKind.AUTH, "UNAUTHENTICATED"),
        ("error_403_permission_denied.json", 403, ErrorKind.AUTH, "PERMISSION_DENIED"),
        ("error_404_not_found.json", 404, ErrorKind.NOT_FOUND, "NOT_FOUND"),
        ("error_429_resource_exhausted.json", 429, ErrorKind.RATE_LIMITED, "RESOURCE_EXHAUSTED"),
        ("error_500_internal.json", 500, ErrorKind.SERVER_ERROR, "INTERNAL"),
        ("error_503_unavailable.json", 503, ErrorKind.OVERLOADED, "UNAVAILABLE"),
        ("error_504_deadline_exceeded.json", 504, ErrorKind.TIMEOUT, "DEADLINE_EXCEEDED"),
    ],
)
def test_map_error(name: str, status: int, kind: ErrorKind, code: str) -> None:
    error = adapter.map_error(status, {}, payload(name))
    assert error.kind is kind
    assert error.status == status
    assert error.provider_code == code
    assert code in error.message


def test_map_error_retry_delay_from_body_and_header() -> None:
    assert adapter.map_error(429, {}, payload("error_429_resource_exhausted.json")).retry_after == 12.0
    assert adapter.map_error(429, {"Retry-After": "30"}, payload("error_429_resource_exhausted.json")).retry_after == 30.0
    assert adapter.map_error(503, {}, payload("error_503_unavailable.json")).retry_after is None
    fractional = orjson.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}]}})
    assert adapter.map_error(429, {}, fractional).retry_after == 0.25


@pytest.mark.parametrize(("status", "kind"), [(502, ErrorKind.SERVER_ERROR), (503, ErrorKind.OVERLOADED), (429, ErrorKind.RATE_LIMITED), (401, ErrorKind.AUTH)])
def test_map_error_non_json_body_maps_by_status(status: int, kind: ErrorKind) -> None:
    error = adapter.map_error(status, {"retry-after": "4"}, b"<!DOCTYPE html><title>Error</title>")
    assert error.kind is kind and error.retry_after == 4.0 and str(status) in error.message


def test_error_messages_never_carry_a_key() -> None:
    body = orjson.dumps({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": f"API key {KEY} not valid."}})
    error = adapter.map_error(400, {}, body)
    assert error.kind is ErrorKind.AUTH
    assert KEY not in error.message
    raw = adapter.map_error(502, {}, f"GET /v1beta/models?key={KEY} failed".encode())
    assert KEY not in raw.message


# ---- what the official SDK sees ----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["response_text.json", "response_function_call.json", "response_max_tokens.json", "response_two_candidates.json"]
)
def test_answers_validate_as_openai_sdk_models(name: str) -> None:
    from openai.types.chat import ChatCompletion

    parsed = ChatCompletion.model_validate(adapter.parse_response(payload(name), deployment()))
    assert parsed.choices[0].message.role == "assistant"


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_function_call.sse"])
def test_chunks_validate_as_openai_sdk_models(name: str) -> None:
    from openai.types.chat import ChatCompletionChunk

    chunks, _ = stream(name, seed=7)
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert parsed[-1].usage is not None and parsed[-1].choices == []
