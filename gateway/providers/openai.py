"""OpenAI-compatible upstreams: OpenAI itself, Azure-style deployments, vLLM, Ollama, ...

The wire format is already ours, so the body passes through untouched apart from the
model name; unknown fields reach the upstream as the client sent them.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlencode

import orjson

from .base import Deployment, UpstreamRequest
from .errors import ErrorKind, UpstreamError, kind_from_status, parse_retry_after

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


class OpenAIAdapter:
    api = "openai"

    def build_request(self, body: Mapping[str, Any], deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        payload = dict(body)
        payload["model"] = deployment.upstream_model
        if stream:
            payload["stream"] = True
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        if deployment.api_key:
            if "api-version" in deployment.query:
                headers["api-key"] = deployment.api_key  # Azure OpenAI's header
            else:
                headers["authorization"] = f"Bearer {deployment.api_key}"
        headers.update(deployment.extra_headers)
        url = f"{deployment.base_url}/chat/completions"
        if deployment.query:
            url += "?" + urlencode(dict(deployment.query))
        return UpstreamRequest("POST", url, headers, orjson.dumps(payload))

    def parse_response(self, data: bytes, deployment: Deployment) -> dict[str, Any]:
        try:
            response = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream answered with invalid JSON.") from None
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
            raise UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream's answer has no 'choices' array.")
        for choice in response["choices"]:
            if isinstance(choice, dict) and choice.get("finish_reason") == "content_filter":
                if not (choice.get("message") or {}).get("content"):
                    raise UpstreamError(
                        ErrorKind.CONTENT_FILTER, "The upstream's content filter refused the request.", status=200
                    )
        return response

    def stream_translator(self, deployment: Deployment, body: Mapping[str, Any]) -> "OpenAIStreamTranslator":
        return OpenAIStreamTranslator(deployment.model)

    def map_error(self, status: int, headers: Mapping[str, str], data: bytes) -> UpstreamError:
        message, code, error_type = _error_fields(data)
        kind = kind_from_status(status)
        if code in _CONTEXT_CODES or "maximum context length" in message.lower():
            kind = ErrorKind.CONTEXT_LENGTH
        elif code in _CONTENT_FILTER_CODES:
            kind = ErrorKind.CONTENT_FILTER
        elif status == 429 and code == "insufficient_quota":
            kind = ErrorKind.AUTH  # the account is out of credit: no point retrying this key
        elif status == 500 and error_type == "server_error" and "overloaded" in message.lower():
            kind = ErrorKind.OVERLOADED
        if kind is ErrorKind.AUTH:
            # Provider auth messages can quote a masked key; never pass them on.
            message = f"The upstream rejected the gateway's credentials (HTTP {status})."
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None and headers.get("retry-after-ms"):
            ms = parse_retry_after(headers.get("retry-after-ms"))
            retry_after = ms / 1000 if ms is not None else None
        return UpstreamError(
            kind, message or f"The upstream answered HTTP {status}.", status=status, retry_after=retry_after, provider_code=code
        )


class OpenAIStreamTranslator:
    """Chunks are already OpenAI chunks: parse them (for usage, finish and failover) and pass
    them on, naming the catalog model as a JSON answer does (not the upstream's name for it,
    e.g. a dated snapshot or a served path, which would also change mid-stream after a
    failover to another deployment)."""

    __slots__ = ("done", "_model")

    def __init__(self, model: str) -> None:
        self.done = False
        self._model = model

    def feed(self, data: bytes, event: str | None = None) -> list[dict[str, Any]]:
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream sent an invalid stream event.") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream sent a stream event that is not an object.")
        if "error" in chunk and "choices" not in chunk:
            message, code, _ = _error_fields(data)
            kind = ErrorKind.CONTEXT_LENGTH if code in _CONTEXT_CODES else ErrorKind.SERVER_ERROR
            raise UpstreamError(kind, message or "The upstream reported an error mid-stream.", provider_code=code)
        # The parts of a chunk the gateway reads must have the types the API gives them: an
        # upstream that sends anything else is broken, and failing over beats a TypeError.
        # (Inline, not a helper: it runs for every chunk of every stream.)
        choices = chunk.get("choices")
        if choices:
            if type(choices) is not list:
                raise _malformed_chunk()
            for choice in choices:
                if type(choice) is not dict:
                    raise _malformed_chunk()
                delta = choice.get("delta")
                if delta:
                    if type(delta) is not dict:
                        raise _malformed_chunk()
                    content = delta.get("content")
                    if content and type(content) is not str:
                        raise _malformed_chunk()
                if (finish := choice.get("finish_reason")) and type(finish) is not str:
                    raise _malformed_chunk()
        if (usage := chunk.get("usage")) and type(usage) is not dict:
            raise _malformed_chunk()
        if chunk.get("model") != self._model:
            chunk["model"] = self._model
        return [chunk]


def _malformed_chunk() -> UpstreamError:
    return UpstreamError(ErrorKind.MALFORMED_RESPONSE, "The upstream sent a stream event that is not a chat.completion.chunk.")


def _error_fields(data: bytes) -> tuple[str, str | None, str | None]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "", None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict):
        return "", None, None
    code = error.get("code")
    return str(error.get("message") or ""), (str(code) if code is not None else None), error.get("type")
