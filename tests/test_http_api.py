"""Every handler and every bad input, over real HTTP against the gateway in front of the simulator."""

from __future__ import annotations

import gzip

import aiohttp
import orjson
import pytest

from gateway.catalog import default_catalog_path
from gateway.middleware import MAX_BODY_BYTES
from tests.servers import UPSTREAM_KEY, Running, read_sse, start_gateway

CHAT = "/v1/chat/completions"


def body(**overrides: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], **overrides}


async def post(gw: Running, payload: object, headers: dict[str, str], *, raw: bytes | None = None,
               path: str = CHAT) -> tuple[int, dict, dict]:
    data = raw if raw is not None else orjson.dumps(payload)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + path, data=data, headers={**headers, "Content-Type": "application/json"}) as r:
            text = await r.read()
            return r.status, orjson.loads(text), r.headers.copy()


def assert_error_shape(payload: dict) -> dict:
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


async def test_plain_completion_with_routing_headers(gw: Running, auth: dict) -> None:
    status, payload, headers = await post(gw, body(), {**auth, "x-request-id": "my-trace-1"})
    assert status == 200
    assert payload["object"] == "chat.completion"
    assert payload["model"] == "gpt-4o-mini"
    assert payload["choices"][0]["message"]["content"]
    assert headers["x-request-id"] == "my-trace-1"
    assert headers["x-gateway-model"] == "gpt-4o-mini"
    assert headers["x-gateway-provider"] == "openai"
    assert headers["x-gateway-attempts"].startswith("openai/gpt-4o-mini:ok:")
    for name in ("x-gateway-task-class", "x-gateway-route-reason", "x-gateway-policy-version"):
        assert headers[name]
    assert "x-gateway-degraded" not in headers


async def test_unknown_fields_pass_through_and_upstream_key_stays_secret(gw: Running, auth: dict) -> None:
    status, payload, headers = await post(gw, body(my_vendor_flag={"x": 1}, seed=7), auth)
    assert status == 200
    assert UPSTREAM_KEY not in orjson.dumps(payload).decode() + str(headers)


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
        (body(model=42), "model", "invalid_type"),
        (body(model=""), "model", "invalid_type"),
        (body(messages=[]), "messages", "empty_array"),
        (body(messages="hi"), "messages", "invalid_type"),
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "invalid_value"),
        (body(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role", "invalid_value"),
        (body(service_tier=["flex"]), "service_tier", "invalid_type"),
        (body(messages=[{"role": "assistant", "content": None, "tool_calls": 5}, {"role": "user", "content": "x"}]),
         "messages[0].tool_calls", "invalid_type"),
        (body(messages=[{"content": "x"}]), "messages[0].role", "missing_required_parameter"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_type"),
        (body(messages=[{"role": "user", "content": [{"type": "sound"}]}]), "messages[0].content[0].type", "invalid_value"),
        (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id", "missing_required_parameter"),
        (body(max_tokens=-5), "max_tokens", "invalid_value"),
        (body(max_tokens="10"), "max_tokens", "invalid_type"),
        (body(max_completion_tokens=0), "max_completion_tokens", "invalid_value"),
        (body(temperature=3), "temperature", "invalid_value"),
        (body(temperature="hot"), "temperature", "invalid_type"),
        (body(n=0), "n", "invalid_value"),
        (body(stream="yes"), "stream", "invalid_type"),
        (body(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
        (body(stop=[1, 2]), "stop", "invalid_type"),
        (body(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", "missing_required_parameter"),
        (body(tool_choice="sometimes"), "tool_choice", "invalid_value"),
        (body(response_format={"type": "xml"}), "response_format.type", "invalid_value"),
        (body(response_format={"type": "json_schema", "json_schema": {}}), "response_format.json_schema.name", "missing_required_parameter"),
        (body(metadata="tag"), "metadata", "invalid_type"),
        ([1, 2, 3], None, "invalid_json"),
    ],
)
async def test_bad_input_is_a_precise_400(gw: Running, auth: dict, payload: object, param: str | None, code: str) -> None:
    status, response, headers = await post(gw, payload, auth)
    assert status == 400, response
    error = assert_error_shape(response)
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert headers.get("x-request-id")


async def test_malformed_json_is_400(gw: Running, auth: dict) -> None:
    status, response, _ = await post(gw, None, auth, raw=b'{"model": "gpt-4o-mini", "messages": [')
    assert status == 400
    assert assert_error_shape(response)["code"] == "invalid_json"


async def test_unknown_model_is_404_naming_model(gw: Running, auth: dict) -> None:
    status, response, _ = await post(gw, body(model="gpt-nonexistent"), auth)
    assert status == 404
    error = assert_error_shape(response)
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"


async def test_body_over_limit_is_413(sim: Running, auth: dict) -> None:
    from tests.servers import start_gateway

    gw = await start_gateway(sim.url)
    try:
        huge = "x" * (gw.app[MAX_BODY_BYTES] + 10)
        status, response, _ = await post(gw, body(messages=[{"role": "user", "content": huge}]), auth)
        assert status == 413
        assert assert_error_shape(response)["code"] == "request_too_large"
    finally:
        await gw.stop()


async def test_a_compressed_body_is_read_and_an_undecodable_one_is_a_400(gw: Running, auth: dict) -> None:
    compressed = gzip.compress(orjson.dumps(body()))
    for path in (CHAT, "/v1/route"):
        status, response, _ = await post(gw, None, {**auth, "Content-Encoding": "gzip"}, raw=compressed, path=path)
        assert status == 200, response
        status, response, headers = await post(gw, None, {**auth, "Content-Encoding": "gzip"}, raw=b"not gzip", path=path)
        assert status == 400 and headers["x-request-id"]
        error = assert_error_shape(response)
        assert error["code"] == "invalid_body" and "Content-Encoding: gzip" in error["message"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"), ({"Authorization": "Basic abc"}, "invalid_authorization_header")],
)
async def test_auth_failures_are_401(gw: Running, headers: dict, code: str) -> None:
    status, response, _ = await post(gw, body(), headers)
    assert status == 401
    error = assert_error_shape(response)
    assert error["code"] == code
    assert error["type"] == "authentication_error"


async def test_unknown_path_and_wrong_method(gw: Running, auth: dict) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/v1/nothing-here", headers=auth) as r:
            assert r.status == 404
            assert assert_error_shape(await r.json())["code"] == "unknown_url"
        async with session.get(gw.url + CHAT, headers=auth) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"
            assert assert_error_shape(await r.json())["code"] == "method_not_allowed"
            assert r.headers["x-request-id"]
        async with session.post(gw.url + "/v1/models/gpt-4o-mini", headers=auth) as r:  # a path with a parameter
            assert r.status == 405
            assert r.headers["Allow"] == "GET, HEAD"
        async with session.delete(gw.url + "/admin/nothing-here") as r:
            assert r.status == 404
            assert assert_error_shape(await r.json())["code"] == "unknown_url"
        async with session.head(gw.url + "/health/live") as r:  # GET routes answer HEAD too
            assert r.status == 200


async def test_models_list_and_get(gw: Running, auth: dict) -> None:
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.get(gw.url + "/v1/models") as r:
            payload = await r.json()
        assert payload["object"] == "list"
        ids = [m["id"] for m in payload["data"]]
        assert {"auto", "auto:cost", "auto:balanced", "auto:quality", "gpt-4o-mini"} <= set(ids)
        async with session.get(gw.url + "/v1/models/gpt-4o-mini") as r:
            assert (await r.json())["id"] == "gpt-4o-mini"
        # a provider-qualified name, as chat completions accept it
        async with session.get(gw.url + "/v1/models/openai/gpt-4o-mini") as r:
            assert r.status == 200 and (await r.json())["id"] == "openai/gpt-4o-mini"
        for unknown in ("nope", "openai/nope", "nope/gpt-4o-mini"):
            async with session.get(gw.url + f"/v1/models/{unknown}") as r:
                assert r.status == 404 and assert_error_shape(await r.json())["code"] == "model_not_found"
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/v1/models") as r:
            assert r.status == 401


async def test_health(gw: Running) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/health/live") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with session.get(gw.url + "/health/ready") as r:
            payload = await r.json()
            assert r.status == 200 and payload["checks"]["policy"]


async def test_streaming_chunks_end_with_done(gw: Running, auth: dict) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + CHAT, json=body(stream=True, stream_options={"include_usage": True}), headers=auth) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["x-gateway-model"] == "gpt-4o-mini"
            events = await read_sse(r)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert any(c["choices"] and c["choices"][0].get("finish_reason") == "stop" for c in chunks)


async def test_stream_without_include_usage_has_no_usage_chunk(gw: Running, auth: dict) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + CHAT, json=body(stream=True), headers=auth) as r:
            events = await read_sse(r)
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_upstream_error_keeps_status_and_openai_shape(gw: Running, auth: dict) -> None:
    payload = body(messages=[{"role": "user", "content": "[[fault:status=418]] hi"}])
    status, response, headers = await post(gw, payload, auth)
    assert status == 418
    assert_error_shape(response)
    assert "x-gateway-attempts" in headers


async def test_upstream_auth_failure_degrades_explicitly_without_leaking_key(gw: Running, auth: dict) -> None:
    # "hi" routes to the shipped policy's `quick` route, whose last ladder step is a static completion.
    payload = body(messages=[{"role": "user", "content": "[[fault:auth]] hi"}])
    status, response, headers = await post(gw, payload, auth)
    assert status == 200
    assert headers["x-gateway-degraded"] == "static"
    assert response["model"] == "gateway-static"
    assert "try again" in response["choices"][0]["message"]["content"]
    assert all(":auth" in token for token in headers["x-gateway-attempts"].split(","))
    assert UPSTREAM_KEY not in orjson.dumps(response).decode() + str(headers)


async def test_everything_failing_on_an_error_mode_route_is_503_with_guidance(gw: Running, auth: dict) -> None:
    # The `code` route (chosen by hint) ends its ladder with the policy's explicit 503.
    payload = body(messages=[{"role": "user", "content": "[[fault:status=500]] hi"}])
    status, response, headers = await post(gw, payload, {**auth, "x-gateway-task": "code"})
    assert status == 503
    assert headers["x-gateway-degraded"] == "static"
    assert int(headers["retry-after"]) >= 1
    assert "temporarily unavailable" in assert_error_shape(response)["message"]


async def test_the_answer_names_the_catalog_model_not_the_upstreams_name_for_it(sim: Running, auth: dict, tmp_path) -> None:
    """A self-hosted server that knows the model by another name (a served path): the JSON
    answer and every stream chunk name the catalog model, as x-gateway-model does."""
    served = "meta-llama/Llama-3.1-8B-Instruct"
    text = default_catalog_path().read_text()
    assert "  - id: local-llm\n    provider: local\n" in text
    catalog = tmp_path / "models.yaml"
    catalog.write_text(text.replace("  - id: local-llm\n    provider: local\n",
                                    f"  - id: local-llm\n    provider: local\n    upstream_model: {served}\n"))
    gateway = await start_gateway(sim.url, f"catalog: {catalog}\n")
    try:
        async with aiohttp.ClientSession() as session:
            request = {"model": "local-llm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
            async with session.post(gateway.url + CHAT, json=request, headers=auth) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-gateway-model"] == "local-llm"
                assert (await r.json())["model"] == "local-llm"
            async with session.post(gateway.url + CHAT, json={**request, "stream": True}, headers=auth) as r:
                assert r.status == 200
                events = await read_sse(r)
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks and {c["model"] for c in chunks} == {"local-llm"}
    finally:
        await gateway.stop()
