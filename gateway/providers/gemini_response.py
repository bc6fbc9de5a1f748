"""Gemini `GenerateContentResponse` -> OpenAI shapes: choices, tool calls, usage, errors."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import orjson

from .errors import ErrorKind, UpstreamError, kind_from_status, parse_retry_after
from .gemini_request import pack_signature
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

_CONTENT_FILTER_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
_KIND_BY_STATUS = {
    "INVALID_ARGUMENT": ErrorKind.BAD_REQUEST,
    "OUT_OF_RANGE": ErrorKind.BAD_REQUEST,
    # e.g. "User location is not supported", free tier unavailable: this deployment cannot serve
    "FAILED_PRECONDITION": ErrorKind.AUTH,
    "UNAUTHENTICATED": ErrorKind.AUTH,
    "PERMISSION_DENIED": ErrorKind.AUTH,
    "NOT_FOUND": ErrorKind.NOT_FOUND,
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
    "UNAVAILABLE": ErrorKind.OVERLOADED,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "INTERNAL": ErrorKind.SERVER_ERROR,
    "UNKNOWN": ErrorKind.SERVER_ERROR,
    "ABORTED": ErrorKind.SERVER_ERROR,
    "CANCELLED": ErrorKind.SERVER_ERROR,
}
_CONTEXT_PHRASES = ("input token count", "exceeds the maximum number of tokens", "context length", "context window")
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})


def finish_reason(reason: Any, *, has_tool_calls: bool) -> str:
    if reason is not None and type(reason) is not str:
        raise malformed("Gemini sent a 'finishReason' that is not a string.")
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER_REASONS:
        return "content_filter"
    return "tool_calls" if has_tool_calls else "stop"


def openai_usage(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Gemini counts thinking apart from the answer; OpenAI bills both as completion tokens."""
    thoughts = _count(raw.get("thoughtsTokenCount"))
    prompt = _count(raw.get("promptTokenCount")) + _count(raw.get("toolUsePromptTokenCount"))
    completion_tokens = _count(raw.get("candidatesTokenCount")) + thoughts
    return usage(prompt, completion_tokens, cached=_count(raw.get("cachedContentTokenCount")), reasoning=thoughts)


def tool_call_id(response_id: Any, candidate: int, ordinal: int, part: Mapping[str, Any]) -> str:
    """A stable id for a Gemini function call: the same answer, streamed or not, gets the same id."""
    call = part["functionCall"]
    own = call.get("id")
    if isinstance(own, str) and own:
        base = own
    else:
        seed = f"{response_id}|{candidate}|{ordinal}|{call.get('name')}"
        base = "call_" + hashlib.sha256(seed.encode()).hexdigest()[:24]
    return pack_signature(base, part.get("thoughtSignature"))


def function_call(response_id: Any, candidate: int, ordinal: int, part: Mapping[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    name = call.get("name") if isinstance(call, Mapping) else None
    if not isinstance(name, str) or not name:
        raise malformed("Gemini sent a functionCall without a name.")
    args = call.get("args") or {}
    if not isinstance(args, Mapping):
        raise malformed("Gemini sent a functionCall whose 'args' is not an object.")
    return tool_call(tool_call_id(response_id, candidate, ordinal, part), name, orjson.dumps(args).decode())


def candidate_index(candidate: Mapping[str, Any], position: int) -> int:
    """The candidate's index (its place in the list when absent): the OpenAI choice index."""
    index = candidate.get("index", position)
    if type(index) is not int or index < 0:
        raise malformed("Gemini sent a candidate whose 'index' is not a non-negative integer.")
    return index


def candidate_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = candidate.get("content")
    if content is None:
        return []  # e.g. blocked by a safety filter
    parts = content.get("parts", []) if isinstance(content, Mapping) else None
    if not isinstance(parts, list) or not all(isinstance(part, Mapping) for part in parts):
        raise malformed("Gemini sent a candidate whose content.parts is not an array of objects.")
    return parts


def check_prompt_blocked(response: Mapping[str, Any]) -> None:
    feedback = response.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, Mapping) else None
    if reason and not response.get("candidates"):
        raise UpstreamError(
            ErrorKind.CONTENT_FILTER, f"Gemini blocked the prompt ({reason}).", status=200, provider_code=str(reason)
        )


def parse_generate_response(data: bytes, model: str) -> dict[str, Any]:
    response = load_json_object(data, "the response")
    if "error" in response:
        raise error_from_body(response, status=None)
    check_prompt_blocked(response)
    candidates = response.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise malformed("The Gemini response has no candidates.")
    response_id = response.get("responseId")
    choices = []
    for position, candidate in enumerate(candidates):
        if not isinstance(candidate, Mapping):
            raise malformed("The Gemini response has a candidate that is not an object.")
        index = candidate_index(candidate, position)
        texts, calls = [], []
        for part in candidate_parts(candidate):
            if part.get("thought"):
                continue  # thought summaries have no OpenAI equivalent
            if "functionCall" in part:
                calls.append(function_call(response_id, index, len(calls), part))
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
        reason = finish_reason(candidate.get("finishReason"), has_tool_calls=bool(calls))
        choices.append(message_choice(index, "".join(texts), calls, reason))
    if all(c["finish_reason"] == "content_filter" and not c["message"]["content"] and "tool_calls" not in c["message"] for c in choices):
        reason = candidates[0].get("finishReason")
        raise UpstreamError(ErrorKind.CONTENT_FILTER, f"Gemini withheld the answer ({reason}).", status=200, provider_code=reason)
    raw_usage = response.get("usageMetadata")
    return completion(
        completion_id(response_id),
        now(),
        model,
        choices,
        openai_usage(raw_usage) if isinstance(raw_usage, Mapping) else None,
    )


def map_error(status: int, headers: Mapping[str, str], data: bytes) -> UpstreamError:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # streamGenerateContent without alt=sse wraps errors in an array
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        snippet = scrub(data[:200].decode("utf-8", "replace").strip())
        error = UpstreamError(kind_from_status(status), f"Gemini answered HTTP {status}" + (f": {snippet}" if snippet else "."), status=status)
    else:
        error = error_from_body(body, status=status)
    header_delay = parse_retry_after(header(headers, "retry-after"))
    if header_delay is not None:
        error.retry_after = header_delay
    return error


def error_from_body(body: Mapping[str, Any], *, status: int | None) -> UpstreamError:
    """`{"error": {"code", "message", "status", "details"}}`, from an HTTP error or a stream event."""
    error = body.get("error")
    if not isinstance(error, Mapping):
        raise malformed("The Gemini error has no 'error' object.")
    code = error.get("status") if isinstance(error.get("status"), str) else None
    if status is None and isinstance(error.get("code"), int):
        status = error["code"]
    message = str(error.get("message") or "")
    details = error.get("details") if isinstance(error.get("details"), list) else []
    kind = _KIND_BY_STATUS.get(code or "") or (kind_from_status(status) if status else ErrorKind.SERVER_ERROR)
    lowered = message.lower()
    if kind is ErrorKind.BAD_REQUEST:
        if any(phrase in lowered for phrase in _CONTEXT_PHRASES):
            kind = ErrorKind.CONTEXT_LENGTH
        elif "api key" in lowered or _detail_reasons(details) & _KEY_REASONS:
            kind = ErrorKind.AUTH
    prefix = f"Gemini {code or 'error'}"
    return UpstreamError(
        kind,
        f"{prefix}: {scrub(message)}" if message else f"{prefix}.",
        status=status,
        retry_after=_retry_delay(details),
        provider_code=code,
    )


def _detail_reasons(details: list[Any]) -> set[str]:
    return {d["reason"] for d in details if isinstance(d, Mapping) and isinstance(d.get("reason"), str)}


def _retry_delay(details: list[Any]) -> float | None:
    """google.rpc.RetryInfo's retryDelay, a Duration in JSON form like "12s" or "0.5s"."""
    for detail in details:
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return parse_retry_after(delay[:-1])
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
