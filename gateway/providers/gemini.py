"""The Google Gemini API adapter: `POST {root}/v1beta/models/{model}:generateContent`.

Streaming uses `:streamGenerateContent?alt=sse`. The key goes in the `x-goog-api-key`
header, never in the URL (URLs end up in logs). Translation rules live beside it:
gemini_request.py (with the choices where the APIs differ), gemini_response.py and
gemini_stream.py.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote, urlencode

import orjson

from .base import Deployment, UpstreamRequest
from .errors import UpstreamError
from .gemini_request import gemini_body
from .gemini_response import map_error, parse_generate_response
from .gemini_stream import GeminiStreamTranslator
from .translate import include_usage


class GeminiAdapter:
    api = "gemini"

    def build_request(self, body: Mapping[str, Any], deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        if deployment.api_key:
            headers["x-goog-api-key"] = deployment.api_key
        headers.update(deployment.extra_headers)
        return UpstreamRequest("POST", generate_url(deployment, stream=stream), headers, orjson.dumps(gemini_body(body)))

    def parse_response(self, data: bytes, deployment: Deployment) -> dict[str, Any]:
        return parse_generate_response(data, deployment.model)

    def stream_translator(self, deployment: Deployment, body: Mapping[str, Any]) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(deployment.model, include_usage=include_usage(body))

    def map_error(self, status: int, headers: Mapping[str, str], data: bytes) -> UpstreamError:
        return map_error(status, headers, data)


def generate_url(deployment: Deployment, *, stream: bool) -> str:
    root = deployment.base_url.rstrip("/")
    if not root.endswith(("/v1beta", "/v1", "/v1alpha")):
        root += "/v1beta"
    model = deployment.upstream_model.removeprefix("models/")
    method = "streamGenerateContent" if stream else "generateContent"
    query = {"alt": "sse"} if stream else {}
    query.update(deployment.query)
    url = f"{root}/models/{quote(model, safe='.-_')}:{method}"
    return f"{url}?{urlencode(query)}" if query else url
