"""The OpenAI chat-completions wire format (and Azure's deployment-style path)."""

from __future__ import annotations

import time
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

_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}
_FINGERPRINT = "fp_simulated"
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_CONTEXT_WINDOW = 128000
_DONE = SSEEvent(b"data: [DONE]\n\n", False)

# status -> (message, type, code) for a bare status=CODE fault
_BY_STATUS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to make this request.", "invalid_request_error", "request_forbidden"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout", None),
    409: ("The request conflicts with another request.", "invalid_request_error", None),
    413: ("Request too large.", "invalid_request_error", "request_too_large"),
    422: ("The request could not be processed.", "invalid_request_error", None),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("That model is currently overloaded with other requests. You can retry your request.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}
_KIND_STATUS = {"rate_limited": 429, "overloaded": 503, "context_length": 400, "auth": 401, "server_error": 500}


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> ErrorReply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return ErrorReply(status, body, headers or {})


class OpenAIWire:
    malformed_frame = b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [{\n\n'

    def __init__(self, azure: bool = False) -> None:
        self.azure = azure
        self.name = "azure" if azure else "openai"

    def api_key(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return request.headers.get("api-key") if self.azure else None

    def auth_error(self, missing: bool) -> ErrorReply:
        if missing:
            return _error(401, "You didn't provide an API key. Send it in an Authorization header "
                          "using Bearer auth (Authorization: Bearer YOUR_KEY).", "invalid_request_error")
        return _error(401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")

    def bad_request(self, error: BadRequest) -> ErrorReply:
        type_ = "invalid_request_error" if error.status < 500 else "server_error"
        return _error(error.status, error.message, type_, error.field)

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{new_id()}"}

    def fault_error(self, fault: FaultSpec, request: SimRequest) -> ErrorReply:
        headers = retry_after_headers(fault)
        status = fault.status or _KIND_STATUS.get(fault.error or "", 500)
        if fault.error == "context_length":
            tokens = _CONTEXT_WINDOW + sum(len(t.split()) for t in request.texts)
            message = (f"This model's maximum context length is {_CONTEXT_WINDOW} tokens. However, your "
                       f"messages resulted in {tokens} tokens. Please reduce the length of the messages.")
            return _error(status, message, "invalid_request_error", "messages", "context_length_exceeded", headers)
        # a named kind keeps its own body even when status= overrides the code
        shape = _KIND_STATUS.get(fault.error or "", status)
        message, type_, code = _BY_STATUS.get(shape) or _BY_STATUS[500 if shape >= 500 else 400]
        return _error(status, message, type_, None, code, headers)

    # -- request -------------------------------------------------------------------

    def parse(self, request: web.Request, body: dict[str, Any]) -> SimRequest:
        if self.azure:
            if not request.query.get("api-version"):
                raise BadRequest("the api-version query parameter is required", "api-version")
            model = request.match_info["deployment"]
        else:
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise BadRequest("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty array", "messages")

        texts: list[str] = []
        topic, last_role = "", ""
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise BadRequest(f"messages[{index}].role must be one of {', '.join(sorted(_ROLES))}",
                                 f"messages[{index}].role")
            role = message["role"]
            text = text_of(message.get("content"))
            texts.append(text)
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    texts.append(str(call["function"].get("arguments", "")))
            if role in ("user", "tool", "function"):
                topic = text
            last_role = role
        last = messages[-1]
        partial = None
        if last_role == "assistant" and not last.get("tool_calls"):
            partial = text_of(last.get("content"))

        tools, tool_mode, tool_name = self._tools(body)
        json_mode, json_schema = self._response_format(body.get("response_format"))
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        max_tokens = positive_int(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = positive_int(body, "max_tokens")
        return SimRequest(
            wire="openai",
            model=model,
            texts=texts,
            topic_text=strip_directives(topic),
            partial_assistant=partial,
            after_tool_result=last_role in ("tool", "function"),
            max_tokens=max_tokens,
            n=positive_int(body, "n", 128) or 1,
            stop=string_list(body.get("stop"), "stop", 4),
            tools=tools,
            tool_mode=tool_mode,
            tool_name=tool_name,
            parallel_tools=body.get("parallel_tool_calls") is not False,
            json_mode=json_mode,
            json_schema=json_schema,
            stream=stream,
            include_usage=bool(stream and options and options.get("include_usage")),
        )

    def _tools(self, body: dict[str, Any]) -> tuple[list[ToolSpec], str, str | None]:
        raw = body.get("tools") or []
        if not isinstance(raw, list):
            raise BadRequest("tools must be an array", "tools")
        tools = []
        for index, tool in enumerate(raw):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise BadRequest(f"tools[{index}].function.name is required", f"tools[{index}].function.name")
            parameters = function.get("parameters")
            tools.append(ToolSpec(function["name"], parameters if isinstance(parameters, dict) else {}))
        choice = body.get("tool_choice", "auto")
        if choice in ("auto", "none", "required"):
            return tools, choice, None
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(name, str):
            raise BadRequest("tool_choice must be none, auto, required or a named function", "tool_choice")
        if name not in {tool.name for tool in tools}:
            raise BadRequest(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        return tools, "required", name

    @staticmethod
    def _response_format(value: Any) -> tuple[bool, dict[str, Any] | None]:
        if value is None:
            return False, None
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return False, None
        if kind == "json_object":
            return True, None
        if kind == "json_schema":
            schema = value.get("json_schema", {}).get("schema") if isinstance(value.get("json_schema"), dict) else None
            if not isinstance(schema, dict):
                raise BadRequest("response_format.json_schema.schema must be an object",
                                 "response_format.json_schema.schema")
            return True, schema
        raise BadRequest("response_format.type must be text, json_object or json_schema", "response_format.type")

    # -- response ------------------------------------------------------------------

    def render(self, request: SimRequest, answer: Answer) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{call.id}", "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments_json}}
                for call in answer.tool_calls
            ]
        elif answer.finish != "content_filter":
            message["content"] = answer.text
        finish = _FINISH[answer.finish]
        return {
            "id": f"chatcmpl-{new_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": _FINGERPRINT,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                for i in range(request.n)
            ],
            "usage": _usage(request, answer),
        }

    def stream(self, request: SimRequest, answer: Answer) -> Iterator[SSEEvent]:
        head: dict[str, Any] = {
            "id": f"chatcmpl-{new_id()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": _FINGERPRINT,
        }
        if request.include_usage:
            head["usage"] = None  # OpenAI sends null usage on every chunk but the last

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

        first_content = None if answer.tool_calls else ""
        for i in range(request.n):
            yield SSEEvent(chunk(i, {"role": "assistant", "content": first_content, "refusal": None}), False)
        if answer.tool_calls:
            for i in range(request.n):
                for k, call in enumerate(answer.tool_calls):
                    start = {"index": k, "id": f"call_{call.id}", "type": "function",
                             "function": {"name": call.name, "arguments": ""}}
                    yield SSEEvent(chunk(i, {"tool_calls": [start]}), False)
                    for fragment in split_pieces(call.arguments_json):
                        delta = {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}
                        yield SSEEvent(chunk(i, delta), True)
        else:
            for piece in answer.pieces:
                for i in range(request.n):
                    yield SSEEvent(chunk(i, {"content": piece}), True)
        finish = _FINISH[answer.finish]
        for i in range(request.n):
            yield SSEEvent(chunk(i, {}, finish), False)
        if request.include_usage:
            final = {**head, "choices": [], "usage": _usage(request, answer)}
            yield SSEEvent(b"data: " + orjson.dumps(final) + b"\n\n", False)
        yield _DONE


def _usage(request: SimRequest, answer: Answer) -> dict[str, Any]:
    completion = answer.completion_tokens * request.n
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }

