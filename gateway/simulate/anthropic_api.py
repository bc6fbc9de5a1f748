"""The Anthropic Messages wire format."""

from __future__ import annotations

import json
from typing import Any, Iterator

import orjson
from aiohttp import web

from .faults import FaultSpec, strip_directives
from .shapes import Answer, BadRequest, SimRequest, ToolSpec, new_id
from .text import split_pieces
from .wire import (
    ErrorReply,
    SSEEvent,
    positive_int,
    retry_after_headers,
    string_list,
    text_of,
)

_STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_CONTEXT_WINDOW = 200000
_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    "invalid_request_error": "Invalid request.",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit. Please try again later.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out.",
    "overloaded_error": "Overloaded",
}
_KIND_STATUS = {"rate_limited": 429, "overloaded": 529, "context_length": 400, "auth": 401, "server_error": 500}
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _error(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> ErrorReply:
    request_id = f"req_{new_id()}"
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    return ErrorReply(status, body, {**(headers or {}), "request-id": request_id})


def _type_for(status: int) -> str:
    return _ERROR_TYPE.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def _frame(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicWire:
    name = "anthropic"
    malformed_frame = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {\n\n'

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key")

    def auth_error(self, missing: bool) -> ErrorReply:
        return _error(401, "authentication_error", "x-api-key header is required" if missing else "invalid x-api-key")

    def bad_request(self, error: BadRequest) -> ErrorReply:
        return _error(error.status, _type_for(error.status), error.message)

    def response_headers(self) -> dict[str, str]:
        return {"request-id": f"req_{new_id()}"}

    def fault_error(self, fault: FaultSpec, request: SimRequest) -> ErrorReply:
        headers = retry_after_headers(fault)
        status = fault.status or _KIND_STATUS.get(fault.error or "", 500)
        if fault.error == "context_length":
            tokens = _CONTEXT_WINDOW + sum(len(t.split()) for t in request.texts)
            return _error(status, "invalid_request_error",
                          f"prompt is too long: {tokens} tokens > {_CONTEXT_WINDOW} maximum", headers)
        type_ = _type_for(_KIND_STATUS.get(fault.error or "", status))
        return _error(status, type_, _MESSAGES[type_], headers)

    # -- request -------------------------------------------------------------------

    def parse(self, request: web.Request, body: dict[str, Any]) -> SimRequest:
        if not request.headers.get("anthropic-version"):
            raise BadRequest("anthropic-version: header is required", "anthropic-version")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required", "model")
        if body.get("max_tokens") is None:
            raise BadRequest("max_tokens: Field required", "max_tokens")
        max_tokens = positive_int(body, "max_tokens")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required", "messages")

        system = body.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise BadRequest("system: must be a string or a list of text blocks", "system")
        texts = [text_of(system)] if system else []
        topic, after_tool_result, partial = "", False, None
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                raise BadRequest(f"messages.{index}.role: must be user or assistant", f"messages.{index}.role")
            content = message.get("content")
            if not isinstance(content, (str, list)):
                raise BadRequest(f"messages.{index}.content: Field required", f"messages.{index}.content")
            text, tool_result = _block_texts(content)
            texts.append(text)
            if role == "user":
                topic, after_tool_result, partial = text, tool_result, None
            else:
                partial = text_of(content) if index == len(messages) - 1 else None
        if partial is not None:
            after_tool_result = False

        tools, tool_mode, tool_name, parallel = self._tools(body)
        return SimRequest(
            wire="anthropic",
            model=model,
            texts=texts,
            topic_text=strip_directives(topic),
            partial_assistant=partial,
            after_tool_result=after_tool_result,
            max_tokens=max_tokens,
            stop=string_list(body.get("stop_sequences"), "stop_sequences", 8192),
            tools=tools,
            tool_mode=tool_mode,
            tool_name=tool_name,
            parallel_tools=parallel,
            json_schema=_output_schema(body.get("output_format")),
            stream=body.get("stream") is True,
        )

    @staticmethod
    def _tools(body: dict[str, Any]) -> tuple[list[ToolSpec], str, str | None, bool]:
        raw = body.get("tools") or []
        if not isinstance(raw, list):
            raise BadRequest("tools: must be a list", "tools")
        tools = []
        for index, tool in enumerate(raw):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise BadRequest(f"tools.{index}.name: Field required", f"tools.{index}.name")
            schema = tool.get("input_schema")
            if schema is None and tool.get("type") not in (None, "custom"):
                continue  # a server tool (web search...): nothing for the client to call
            if not isinstance(schema, dict):
                raise BadRequest(f"tools.{index}.input_schema: Field required", f"tools.{index}.input_schema")
            tools.append(ToolSpec(tool["name"], schema))
        choice = body.get("tool_choice") or {"type": "auto"}
        kind = choice.get("type") if isinstance(choice, dict) else None
        parallel = not (isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True)
        if kind in ("auto", "none"):
            return tools, kind, None, parallel
        if kind == "any":
            return tools, "required", None, parallel
        if kind == "tool":
            name = choice.get("name")
            if not isinstance(name, str) or name not in {tool.name for tool in tools}:
                raise BadRequest("tool_choice.name: must name one of the tools", "tool_choice.name")
            return tools, "required", name, parallel
        raise BadRequest("tool_choice.type: must be auto, any, tool or none", "tool_choice.type")

    # -- response ------------------------------------------------------------------

    def render(self, request: SimRequest, answer: Answer) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": call.arguments}
            for call in answer.tool_calls
        ]
        if answer.pieces:
            content.insert(0, {"type": "text", "text": answer.text})
        return {
            "id": f"msg_{new_id()}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": content,
            "stop_reason": _STOP_REASON[answer.finish],
            "stop_sequence": answer.stop_sequence,
            "usage": _usage(answer.prompt_tokens, answer.completion_tokens),
        }

    def stream(self, request: SimRequest, answer: Answer) -> Iterator[SSEEvent]:
        message = {
            "id": f"msg_{new_id()}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(answer.prompt_tokens, 1),
        }
        yield SSEEvent(_frame("message_start", {"type": "message_start", "message": message}), False)
        pinged = False
        blocks: list[tuple[dict[str, Any], str, list[str]]] = []
        if answer.pieces:
            blocks.append(({"type": "text", "text": ""}, "text_delta", answer.pieces))
        for call in answer.tool_calls:
            start = {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": {}}
            blocks.append((start, "input_json_delta", split_pieces(call.arguments_json)))
        for index, (start, delta_type, fragments) in enumerate(blocks):
            yield SSEEvent(_frame("content_block_start",
                                  {"type": "content_block_start", "index": index, "content_block": start}), False)
            if not pinged:
                yield SSEEvent(_PING, False)
                pinged = True
            field_name = "text" if delta_type == "text_delta" else "partial_json"
            for fragment in fragments:
                delta = {"type": delta_type, field_name: fragment}
                yield SSEEvent(_frame("content_block_delta",
                                      {"type": "content_block_delta", "index": index, "delta": delta}), True)
            yield SSEEvent(_frame("content_block_stop", {"type": "content_block_stop", "index": index}), False)
        if not pinged:
            yield SSEEvent(_PING, False)
        final = {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASON[answer.finish], "stop_sequence": answer.stop_sequence},
            "usage": {"output_tokens": answer.completion_tokens},
        }
        yield SSEEvent(_frame("message_delta", final), False)
        yield SSEEvent(_frame("message_stop", {"type": "message_stop"}), False)


def _block_texts(content: str | list[Any]) -> tuple[str, bool]:
    """The text of a message's content, and whether it hands back a tool result."""
    if isinstance(content, str):
        return content, False
    texts, tool_result = [], False
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result":
            tool_result = True
            texts.append(text_of(block.get("content")))
        elif kind == "tool_use":
            texts.append(json.dumps(block.get("input", {})))
    return " ".join(texts), tool_result


def _output_schema(value: Any) -> dict[str, Any] | None:
    """Structured outputs: output_format {"type": "json_schema", "schema": {...}}."""
    if value is None:
        return None
    schema = value.get("schema") if isinstance(value, dict) and value.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        raise BadRequest("output_format: must be {\"type\": \"json_schema\", \"schema\": {...}}", "output_format")
    return schema


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
