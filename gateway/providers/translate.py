"""Helpers shared by the adapters that translate OpenAI chat <-> another wire API.

Reading the unified (OpenAI chat) request, building OpenAI response and chunk dicts,
and the small error utilities every translating adapter needs. No provider knowledge.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from .errors import ErrorKind, UpstreamError

# Provider key shapes that must never travel inside an error message.
_SECRET_PATTERNS = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{20,}|([?&](?:key|api_key)=)[^&\s\"']+"
)
_MAX_MESSAGE = 500


def bad_request(message: str) -> UpstreamError:
    """The request cannot be expressed in the provider's API; `message` names the field."""
    return UpstreamError(ErrorKind.BAD_REQUEST, message)


def malformed(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.MALFORMED_RESPONSE, message)


def scrub(text: str) -> str:
    """Error text as safe to log: key-shaped strings masked, length bounded."""
    cleaned = _SECRET_PATTERNS.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
    return cleaned if len(cleaned) <= _MAX_MESSAGE else cleaned[:_MAX_MESSAGE] + "..."


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts as well as multidicts."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise malformed(f"The upstream sent invalid JSON in {what}.") from None
    if not isinstance(parsed, dict):
        raise malformed(f"The upstream sent {what} that is not a JSON object.")
    return parsed


# ---- reading the unified request -------------------------------------------------------


def messages_of(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{index}] must be an object with a string 'role'.")
    return messages


def text_of(content: Any, where: str) -> str:
    """The text of a system/developer/tool message: a string or an array of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}[{index}] must be a text part.")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{where} must be a string or an array of content parts.")


def system_prompt(messages: list[Mapping[str, Any]]) -> str | None:
    """Every system/developer message, in order, joined by a blank line."""
    texts = [
        text_of(message.get("content"), f"messages[{index}].content")
        for index, message in enumerate(messages)
        if message["role"] in ("system", "developer")
    ]
    texts = [text for text in texts if text]
    return "\n\n".join(texts) if texts else None


@dataclass(frozen=True)
class DataUrl:
    media_type: str
    data: str  # base64, as it came


def parse_data_url(url: str, where: str) -> DataUrl | None:
    """`data:<type>;base64,<payload>` -> its parts; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header_part, comma, payload = url[5:].partition(",")
    if not comma or not header_part.endswith(";base64"):
        raise bad_request(f"{where} must be a base64 data: URL or an http(s) URL.")
    media_type = header_part[: -len(";base64")].split(";")[0] or "application/octet-stream"
    return DataUrl(media_type, payload)


def image_url_of(part: Mapping[str, Any], where: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.image_url.url must be a non-empty string.")
    if not (url.startswith(("http://", "https://", "data:"))):
        raise bad_request(f"{where}.image_url.url must be a data: or http(s) URL.")
    return url


def file_data_of(part: Mapping[str, Any], where: str) -> DataUrl:
    """An OpenAI `file` part with inline `file_data` (a base64 data: URL)."""
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, Mapping) else None
    if not isinstance(file_data, str):
        raise bad_request(f"{where}.file.file_data is required (uploaded file_id references cannot be forwarded).")
    parsed = parse_data_url(file_data, f"{where}.file.file_data")
    if parsed is None:
        raise bad_request(f"{where}.file.file_data must be a base64 data: URL.")
    return parsed


def tool_arguments(raw: Any, where: str) -> dict[str, Any]:
    """An assistant tool call's `function.arguments` (a JSON string) as an object."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise bad_request(f"{where} must be a JSON string.")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(f"{where} is not valid JSON.") from None
    if not isinstance(parsed, dict):
        raise bad_request(f"{where} must encode a JSON object.")
    return parsed


def assistant_texts(message: Mapping[str, Any], where: str) -> list[str]:
    """The non-empty texts of an assistant turn: its content string, or its text and refusal parts."""
    content = message.get("content")
    if not isinstance(content, list):
        text = text_of(content, f"{where}.content")
        return [text] if text else []
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "refusal"):
            raise bad_request(f"{where}.content[{index}] must be a text or refusal part.")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


@dataclass(frozen=True)
class AssistantCall:
    id: str
    name: str
    arguments: dict[str, Any]


def assistant_calls(message: Mapping[str, Any], where: str) -> list[AssistantCall]:
    """An assistant turn's `tool_calls`, checked, with their arguments parsed."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls must be an array.")
    out = []
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(call.get("id"), str) or not isinstance(function.get("name"), str):
            raise bad_request(f"{call_where} must have a string 'id' and a 'function' with a string 'name'.")
        arguments = tool_arguments(function.get("arguments"), f"{call_where}.function.arguments")
        out.append(AssistantCall(call["id"], function["name"], arguments))
    return out


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict[str, Any] | None


def function_tools(body: Mapping[str, Any]) -> list[FunctionTool]:
    """`tools` (or the legacy `functions`) as plain function declarations."""
    raw = body.get("tools")
    if raw is None and body.get("functions") is not None:
        if not isinstance(body["functions"], list):
            raise bad_request("'functions' must be an array.")
        raw = [{"type": "function", "function": function} for function in body["functions"]]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("'tools' must be an array.")
    tools = []
    for index, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise bad_request(f"tools[{index}] must be a function tool with a 'function' object.")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"tools[{index}].function.name must be a non-empty string.")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise bad_request(f"tools[{index}].function.parameters must be a JSON Schema object.")
        description = function.get("description")
        tools.append(FunctionTool(name, description if isinstance(description, str) else None, parameters and dict(parameters)))
    return tools


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "auto" | "none" | "required" | "function"
    name: str | None = None


def tool_choice(body: Mapping[str, Any]) -> ToolChoice | None:
    raw = body.get("tool_choice", body.get("function_call"))
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    if isinstance(raw, Mapping):
        function = raw.get("function") if "function" in raw else raw  # legacy function_call: {"name": ...}
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name:
            return ToolChoice("function", name)
    raise bad_request("'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}.")


def stop_sequences(body: Mapping[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop) or None
    raise bad_request("'stop' must be a string or an array of strings.")


def max_output_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"'{name}' must be a positive integer.")
        return value
    return None


def number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number.")
    return value


def choice_count(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_request("'n' must be a positive integer.")
    return n


@dataclass(frozen=True)
class ResponseFormat:
    kind: str  # "json_object" | "json_schema"
    name: str | None = None
    schema: dict[str, Any] | None = None


def response_format(body: Mapping[str, Any]) -> ResponseFormat | None:
    raw = body.get("response_format")
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise bad_request("'response_format.json_schema.schema' must be a JSON Schema object.")
        name = spec.get("name")
        return ResponseFormat("json_schema", name if isinstance(name, str) else None, dict(schema))
    raise bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'.")


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage"))


# ---- building OpenAI answers -----------------------------------------------------------


def completion_id(upstream_id: Any) -> str:
    if isinstance(upstream_id, str) and upstream_id:
        return f"chatcmpl-{upstream_id}"
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(
    prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0, total: int | None = None
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def message_choice(index: int, text: str, tool_calls: list[dict[str, Any]], finish_reason: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else ""), "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def completion(
    response_id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, Any] | None
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        answer["usage"] = usage_
    return answer


class ChunkFactory:
    """Builds the chunks of one streamed answer: same id, created and model throughout."""

    __slots__ = ("id", "created", "model")

    def __init__(self, model: str, upstream_id: Any = None) -> None:
        self.id = completion_id(upstream_id)
        self.created = now()
        self.model = model

    def delta(self, delta: dict[str, Any], index: int = 0, finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def usage(self, usage_: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_,
        }
