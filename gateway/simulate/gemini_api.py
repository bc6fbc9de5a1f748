"""The Gemini generateContent / streamGenerateContent wire format.

The REST API accepts both camelCase and snake_case field names, so both are read.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import orjson
from aiohttp import web

from .faults import FaultSpec, strip_directives
from .shapes import Answer, BadRequest, SimRequest, ToolSpec, new_id
from .wire import ErrorReply, SSEEvent, retry_after_headers, string_list

_FINISH = {
    "stop": "STOP",
    "stop_sequence": "STOP",
    "tool_calls": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
_CONTEXT_WINDOW = 1048576
_STATUS_NAME = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
    "UNAUTHENTICATED": "Request had invalid authentication credentials.",
    "PERMISSION_DENIED": "The caller does not have permission.",
    "NOT_FOUND": "Requested entity was not found.",
    "ABORTED": "The operation was aborted.",
    "RESOURCE_EXHAUSTED": "Resource has been exhausted (e.g. check quota).",
    "CANCELLED": "The operation was cancelled.",
    "INTERNAL": "An internal error has occurred. Please retry or report the problem.",
    "UNIMPLEMENTED": "Method not implemented.",
    "UNAVAILABLE": "The model is overloaded. Please try again later.",
    "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
}
_KIND_STATUS = {"rate_limited": 429, "overloaded": 503, "context_length": 400, "auth": 401, "server_error": 500}
_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           details: list[dict[str, Any]] | None = None) -> ErrorReply:
    name = _STATUS_NAME.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if details:
        error["details"] = details
    return ErrorReply(status, {"error": error}, headers or {})


def _get(mapping: dict[str, Any], camel: str, snake: str) -> Any:
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


class GeminiWire:
    name = "gemini"
    malformed_frame = b'data: {"candidates": [{"content": {"parts": [{"text": \r\n\r\n'

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def auth_error(self, missing: bool) -> ErrorReply:
        if missing:
            return _error(403, "Method doesn't allow unregistered callers (callers without established "
                          "identity). Please use API Key or other form of API consumer identity to call this API.")
        return _error(401, "API key not valid. Please pass a valid API key.")

    def bad_request(self, error: BadRequest) -> ErrorReply:
        message = f"Invalid value at '{error.field}': {error.message}" if error.field else error.message
        return _error(error.status, message)

    def response_headers(self) -> dict[str, str]:
        return {}

    def fault_error(self, fault: FaultSpec, request: SimRequest) -> ErrorReply:
        headers = retry_after_headers(fault)
        status = fault.status or _KIND_STATUS.get(fault.error or "", 500)
        details = None
        if fault.retry_after is not None:
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{fault.retry_after:g}s"}]
        if fault.error == "context_length":
            tokens = _CONTEXT_WINDOW + sum(len(t.split()) for t in request.texts)
            return _error(status, f"The input token count ({tokens}) exceeds the maximum number of tokens "
                          f"allowed ({_CONTEXT_WINDOW}).", headers, details)
        shape = _KIND_STATUS.get(fault.error or "", status)
        name = _STATUS_NAME.get(shape) or ("INTERNAL" if shape >= 500 else "INVALID_ARGUMENT")
        return _error(status, _MESSAGES[name], headers, details)

    # -- request -------------------------------------------------------------------

    def parse(self, request: web.Request, body: dict[str, Any]) -> SimRequest:
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            raise BadRequest(f"Method {method or '(none)'} not found for models/{model}.", status=404)
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            raise BadRequest("the simulator streams only server-sent events: add ?alt=sse", "alt")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("contents is not specified", "contents")

        system = _get(body, "systemInstruction", "system_instruction")
        texts = [_parts_text(system.get("parts"))[0]] if isinstance(system, dict) else []
        topic, after_tool_result, partial = "", False, None
        for index, content in enumerate(contents):
            role = content.get("role", "user") if isinstance(content, dict) else None
            if role not in ("user", "model", "function"):
                raise BadRequest("role must be user or model", f"contents[{index}].role")
            parts = content.get("parts")
            if not isinstance(parts, list):
                raise BadRequest("parts is required", f"contents[{index}].parts")
            text, function_response = _parts_text(parts)
            texts.append(text)
            if role == "model":
                partial = text if index == len(contents) - 1 else None
            else:
                topic, after_tool_result, partial = text, function_response, None

        config = _get(body, "generationConfig", "generation_config") or {}
        if not isinstance(config, dict):
            raise BadRequest("generationConfig must be an object", "generation_config")
        json_schema = _get(config, "responseJsonSchema", "response_json_schema")
        if json_schema is None:
            json_schema = _get(config, "responseSchema", "response_schema")
        if json_schema is not None and not isinstance(json_schema, dict):
            raise BadRequest("responseSchema must be an object", "generation_config.response_schema")
        mime = _get(config, "responseMimeType", "response_mime_type")
        tools, tool_mode, tool_name = self._tools(body)
        return SimRequest(
            wire="gemini",
            model=model,
            texts=texts,
            topic_text=strip_directives(topic),
            partial_assistant=partial,
            after_tool_result=after_tool_result and partial is None,
            max_tokens=_positive(config, "maxOutputTokens", "max_output_tokens"),
            n=_positive(config, "candidateCount", "candidate_count", 8) or 1,
            stop=string_list(_get(config, "stopSequences", "stop_sequences"), "generation_config.stop_sequences", 5),
            tools=tools,
            tool_mode=tool_mode,
            tool_name=tool_name,
            json_mode=mime == "application/json",
            json_schema=json_schema,
            stream=stream,
        )

    @staticmethod
    def _tools(body: dict[str, Any]) -> tuple[list[ToolSpec], str, str | None]:
        raw = body.get("tools") or []
        if not isinstance(raw, list):
            raise BadRequest("tools must be a list", "tools")
        tools = []
        for index, tool in enumerate(raw):
            declarations = _get(tool, "functionDeclarations", "function_declarations") if isinstance(tool, dict) else None
            for j, declaration in enumerate(declarations or ()):
                if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                    raise BadRequest("name is required", f"tools[{index}].function_declarations[{j}].name")
                schema = _get(declaration, "parametersJsonSchema", "parameters_json_schema")
                if schema is None:
                    schema = declaration.get("parameters")
                tools.append(ToolSpec(declaration["name"], schema if isinstance(schema, dict) else {}))
        tool_config = _get(body, "toolConfig", "tool_config") or {}
        calling = _get(tool_config, "functionCallingConfig", "function_calling_config") if isinstance(tool_config, dict) else None
        if not isinstance(calling or {}, dict):
            raise BadRequest("function_calling_config must be an object", "tool_config.function_calling_config")
        calling = calling or {}
        mode = str(calling.get("mode", "AUTO")).upper()
        if mode == "NONE":
            return tools, "none", None
        if mode not in ("AUTO", "ANY", "VALIDATED", "MODE_UNSPECIFIED"):
            raise BadRequest("mode must be AUTO, ANY, NONE or VALIDATED",
                             "tool_config.function_calling_config.mode")
        allowed = _get(calling, "allowedFunctionNames", "allowed_function_names")
        if mode == "ANY" and allowed:
            tools = [tool for tool in tools if tool.name in allowed]
            if not tools:
                raise BadRequest("allowed_function_names names no declared function",
                                 "tool_config.function_calling_config.allowed_function_names")
            return tools, "required", tools[0].name if len(tools) == 1 else None
        return tools, "required" if mode == "ANY" else "auto", None

    # -- response ------------------------------------------------------------------

    def render(self, request: SimRequest, answer: Answer) -> dict[str, Any]:
        return {
            "candidates": [self._candidate(i, answer, _parts(answer)) for i in range(request.n)],
            "usageMetadata": _usage(request, answer),
            "modelVersion": request.model,
            "responseId": new_id(),
        }

    def stream(self, request: SimRequest, answer: Answer) -> Iterator[SSEEvent]:
        response_id = new_id()

        def frame(candidates: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {"candidates": candidates}
            if usage is not None:
                payload["usageMetadata"] = usage
            payload["modelVersion"] = request.model
            payload["responseId"] = response_id
            # Gemini separates its events with CRLF blank lines
            return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"

        if answer.tool_calls:
            parts = _parts(answer)  # function calls arrive whole, in one event
            content = {"parts": parts, "role": "model"}
            yield SSEEvent(frame([{"content": content, "index": i} for i in range(request.n)]), True)
        else:
            for piece in answer.pieces:
                content = {"parts": [{"text": piece}], "role": "model"}
                yield SSEEvent(frame([{"content": content, "index": i} for i in range(request.n)]), True)
        last = [self._candidate(i, answer, [{"text": ""}]) for i in range(request.n)]
        yield SSEEvent(frame(last, _usage(request, answer)), False)

    @staticmethod
    def _candidate(index: int, answer: Answer, parts: list[dict[str, Any]]) -> dict[str, Any]:
        if answer.finish == "content_filter":
            return {"finishReason": "SAFETY", "index": index, "safetyRatings": _SAFETY_RATINGS}
        return {"content": {"parts": parts, "role": "model"}, "finishReason": _FINISH[answer.finish], "index": index}


def _parts(answer: Answer) -> list[dict[str, Any]]:
    if answer.tool_calls:
        return [{"functionCall": {"name": call.name, "args": call.arguments}} for call in answer.tool_calls]
    return [{"text": answer.text}]


def _parts_text(parts: Any) -> tuple[str, bool]:
    """The text of a content's parts, and whether it hands back a function response."""
    texts, function_response = [], False
    for part in parts or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif "functionCall" in part or "function_call" in part:
            call = _get(part, "functionCall", "function_call") or {}
            texts.append(json.dumps(call.get("args", {})))
        elif "functionResponse" in part or "function_response" in part:
            function_response = True
            response = _get(part, "functionResponse", "function_response") or {}
            texts.append(json.dumps(response.get("response", {})))
    return " ".join(texts), function_response


def _positive(config: dict[str, Any], camel: str, snake: str, upper: int | None = None) -> int | None:
    value = _get(config, camel, snake)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (upper and value > upper):
        limit = f" no greater than {upper}" if upper else ""
        raise BadRequest(f"must be a positive integer{limit}", f"generation_config.{snake}")
    return value


def _usage(request: SimRequest, answer: Answer) -> dict[str, Any]:
    completion = answer.completion_tokens * request.n
    return {
        "promptTokenCount": answer.prompt_tokens,
        "candidatesTokenCount": completion,
        "totalTokenCount": answer.prompt_tokens + completion,
        "cachedContentTokenCount": 0,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": answer.prompt_tokens}],
    }
