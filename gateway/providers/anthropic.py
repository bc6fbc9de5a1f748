"""The Anthropic Messages API adapter: `POST {root}/v1/messages`.

Translation rules live beside it: anthropic_request.py (OpenAI request -> Messages body,
with the choices where the APIs differ), anthropic_response.py (answers, usage and
errors back) and anthropic_stream.py (SSE events -> chunks).
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlencode

import orjson

from .anthropic_request import anthropic_body
from .anthropic_response import map_error, parse_message
from .anthropic_stream import AnthropicStreamTranslator
from .base import Deployment, UpstreamRequest
from .errors import UpstreamError
from .translate import include_usage

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


class AnthropicAdapter:
    api = "anthropic"

    def __init__(self, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        # Anthropic requires max_tokens; this applies when the client sent neither
        # max_tokens nor max_completion_tokens.
        self.default_max_tokens = default_max_tokens

    def build_request(self, body: Mapping[str, Any], deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        payload = anthropic_body(body, deployment, stream=stream, default_max_tokens=self.default_max_tokens)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        headers.update(deployment.extra_headers)
        return UpstreamRequest("POST", messages_url(deployment), headers, orjson.dumps(payload))

    def parse_response(self, data: bytes, deployment: Deployment) -> dict[str, Any]:
        return parse_message(data, deployment.model)

    def stream_translator(self, deployment: Deployment, body: Mapping[str, Any]) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(deployment.model, include_usage=include_usage(body))

    def map_error(self, status: int, headers: Mapping[str, str], data: bytes) -> UpstreamError:
        return map_error(status, headers, data)


def messages_url(deployment: Deployment) -> str:
    root = deployment.base_url.rstrip("/")
    url = f"{root}/messages" if root.endswith("/v1") else f"{root}/v1/messages"
    if deployment.query:
        url += "?" + urlencode(dict(deployment.query))
    return url
