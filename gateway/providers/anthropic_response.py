"""Anthropic Messages answers -> OpenAI shapes: the message, finish reasons, usage, errors."""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from .anthropic_request import JSON_TOOL
from .errors import ErrorKind, UpstreamError, kind_from_status, parse_retry_after
from .translate import (
    completion,
    completion_id,
    header,
    load_json_object,
    malformed,
    message_choice,
    now,
    scrub,
    tool_call,
    usage,
)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_KIND_BY_ERROR_TYPE = {
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.CONTEXT_LENGTH,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "api_error": ErrorKind.SERVER_ERROR,
    "overloaded_error": ErrorKind.OVERLOADED,
    "timeout_error": ErrorKind.TIMEOUT,
}
_CONTEXT_PHRASES = ("prompt is too long", "exceed context limit", "context window", "too many total text bytes")
# A drained account is the deployment's problem, not the client's: another deployment can serve.
_ACCOUNT_PHRASES = ("credit balance is too low",)


def finish_reason(stop_reason: Any, *, real_tool_calls: bool) -> str:
    reason = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if reason == "tool_calls" and not real_tool_calls:
        return "stop"  # only the JSON-mode tool was called: to the client that is plain content
    return reason


def openai_usage(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's input_tokens excludes cached input; OpenAI's prompt_tokens includes it."""
    cache_read = _count(raw.get("cache_read_input_tokens"))
    cache_write = _count(raw.get("cache_creation_input_tokens"))
    prompt = _count(raw.get("input_tokens")) + cache_read + cache_write
    return usage(prompt, _count(raw.get("output_tokens")), cached=cache_read)


def parse_message(data: bytes, model: str) -> dict[str, Any]:
    message = load_json_object(data, "the response")
    if message.get("type") == "error":
        raise error_from_body(message, status=None)
    blocks = message.get("content")
    if not isinstance(blocks, list):
        raise malformed("The Anthropic response has no 'content' array.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise malformed("The Anthropic response has a content block that is not an object.")
        kind = block.get("type")
        if kind == "text":
            texts.append(_string(block.get("text"), "text block"))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            name = _string(block.get("name"), "tool_use name")
            if name == JSON_TOOL:
                texts.append(arguments)
            else:
                calls.append(tool_call(_string(block.get("id"), "tool_use id"), name, arguments))
        # thinking, redacted_thinking and server-tool blocks have no OpenAI equivalent
    text = "".join(texts)
    reason = finish_reason(message.get("stop_reason"), real_tool_calls=bool(calls))
    if reason == "content_filter" and not text and not calls:
        raise UpstreamError(ErrorKind.CONTENT_FILTER, "Anthropic refused to answer.", status=200, provider_code="refusal")
    raw_usage = message.get("usage")
    return completion(
        completion_id(message.get("id")),
        now(),
        model,
        [message_choice(0, text, calls, reason)],
        openai_usage(raw_usage) if isinstance(raw_usage, dict) else None,
    )


def map_error(status: int, headers: Mapping[str, str], data: bytes) -> UpstreamError:
    retry_after = parse_retry_after(header(headers, "retry-after"))
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        snippet = scrub(data[:200].decode("utf-8", "replace").strip())
        return UpstreamError(
            kind_from_status(status),
            f"Anthropic answered HTTP {status}" + (f": {snippet}" if snippet else "."),
            status=status,
            retry_after=retry_after,
        )
    error = error_from_body(body, status=status)
    error.retry_after = retry_after
    return error


def error_from_body(body: Mapping[str, Any], *, status: int | None) -> UpstreamError:
    """`{"type": "error", "error": {"type", "message"}}`, from an HTTP error or an `error` event."""
    error = body.get("error")
    if not isinstance(error, Mapping):
        raise malformed("The Anthropic error event has no 'error' object.")
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    message = str(error.get("message") or "")
    kind = _KIND_BY_ERROR_TYPE.get(error_type or "")
    if kind is None:
        kind = kind_from_status(status) if status else ErrorKind.SERVER_ERROR
    lowered = message.lower()
    if any(phrase in lowered for phrase in _CONTEXT_PHRASES):
        kind = ErrorKind.CONTEXT_LENGTH
    elif any(phrase in lowered for phrase in _ACCOUNT_PHRASES):
        kind = ErrorKind.AUTH
    prefix = f"Anthropic {error_type or 'error'}"
    return UpstreamError(
        kind,
        f"{prefix}: {scrub(message)}" if message else f"{prefix}.",
        status=status,
        provider_code=error_type,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise malformed(f"The Anthropic response has a {what} that is not a string.")
    return value
