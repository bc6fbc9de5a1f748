"""Bad input never becomes a 500: every value of every JSON type, put at every place of a
full request body, is either refused by validation (a 400 naming the field) or goes through
classification, routing and each provider's request translation without an unexpected
exception (a translator may refuse it too, with its own client error)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from gateway.app import ADAPTERS
from gateway.config import load_config
from gateway.decide import decide
from gateway.errors import GatewayError
from gateway.providers.errors import UpstreamError
from gateway.runtime import RoutingSnapshot, Runtime
from gateway.validation import validate_chat_request

ENV = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk", "ANTHROPIC_API_KEY": "sk",
       "GEMINI_API_KEY": "sk"}
VALUES: list[Any] = [None, 0, 1, -1, 1.5, "", "s", "auto", [], [1], ["x"], [{}], {}, {"a": 1},
                     {"type": "function"}, True, False]
FULL_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "http://x"}}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "response_format": {"type": "json_object"}, "max_tokens": 10, "stream": False,
    "stream_options": {"include_usage": True}, "metadata": {"k": "v"}, "service_tier": "flex",
    "functions": [{"name": "g"}], "function_call": {"name": "g"}, "n": 1, "stop": ["x"], "user": "u",
}
# The legacy `functions` and `function_call` are read only when `tools` and `tool_choice`
# are absent: their places are tried in a body without those too.
LEGACY_BODY = {k: v for k, v in FULL_BODY.items() if k not in ("tools", "tool_choice")}
PLACES: list[tuple[Any, ...]] = [
    ("model",), ("messages",), ("tools",), ("tool_choice",), ("response_format",), ("max_tokens",), ("stream",),
    ("stream_options",), ("metadata",), ("service_tier",), ("functions",), ("n",), ("stop",), ("user",),
    ("max_completion_tokens",), ("temperature",), ("response_format", "type"), ("response_format", "json_schema"),
    ("stream_options", "include_usage"), ("tools", 0), ("tools", 0, "function"), ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"), ("messages", 0), ("messages", 0, "content"), ("messages", 0, "role"),
    ("messages", 0, "name"), ("messages", 1, "content"), ("messages", 2, "tool_calls"), ("messages", 2, "content"),
    ("messages", 2, "tool_calls", 0), ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"), ("messages", 2, "tool_calls", 0, "function", "name"),
    ("messages", 3, "tool_call_id"), ("messages", 3, "content"), ("messages", 4, "content"),
    ("messages", 4, "content", 0), ("messages", 4, "content", 0, "text"), ("messages", 4, "content", 1, "image_url"),
    ("messages", 4, "content", 0, "type"), ("metadata", "k"), ("metadata", "gateway_task"),
    ("metadata", "gateway_risk"), ("metadata", "gateway_objective"), ("metadata", "gateway_latency_budget_ms"),
    ("function_call",), ("functions", 0), ("functions", 0, "name"), ("function_call", "name"),
]
LEGACY_PLACES = [place for place in PLACES if place[0] in ("functions", "function_call")]


@pytest.fixture(scope="module")
def snapshot() -> RoutingSnapshot:
    env = dict(os.environ, **ENV)
    return Runtime(load_config(None, env), env).current


def with_value(place: tuple[Any, ...], value: Any, stream: bool, base: dict[str, Any] = FULL_BODY) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["stream"] = stream
    target: Any = body
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = value
    return body


@pytest.mark.parametrize(("place", "base"), [(place, FULL_BODY) for place in PLACES]
                         + [(place, LEGACY_BODY) for place in LEGACY_PLACES],
                         ids=lambda item: ".".join(map(str, item)) if isinstance(item, tuple) else
                         ("legacy" if "tools" not in item else "full"))
def test_any_value_anywhere_is_refused_or_handled(place: tuple[Any, ...], base: dict[str, Any],
                                                  snapshot: RoutingSnapshot) -> None:
    deployments = {}
    for deployment in snapshot.deployments.values():
        deployments.setdefault(deployment.api, deployment)
    assert set(deployments) == {"openai", "anthropic", "gemini"}
    unexpected = []
    for value in VALUES:
        for stream in (False, True):
            body = with_value(place, value, stream, base)
            try:
                validate_chat_request(body)
                decide(body, {}, "default", snapshot)
            except GatewayError as refused:
                assert 400 <= refused.status < 500
                continue
            except Exception as error:  # noqa: BLE001 - the point: nothing else may escape
                unexpected.append((value, stream, "decide", repr(error)))
                continue
            for api, deployment in deployments.items():
                try:
                    ADAPTERS[api].build_request(body, deployment, stream=stream)
                except UpstreamError as refused:  # the translator's own refusal: a client error
                    assert 400 <= refused.client_status < 500, (api, value, refused)
                except Exception as error:  # noqa: BLE001
                    unexpected.append((value, stream, api, repr(error)))
    assert unexpected == []
