"""Validation of a chat-completions body: precise 400s that name the offending field.

Only the fields the gateway reads or that would make every provider fail are checked;
everything else passes through to the upstream untouched.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from .errors import GatewayError, bad_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
RESPONSE_FORMAT_TYPES = frozenset({"text", "json_object", "json_schema"})

Check = Callable[[dict[str, Any]], None]  # raises the GatewayError of a body's bad field


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(
            f"The request body must be a JSON object, got {_type_name(body)}.", code="invalid_json"
        )
    return body


def validate_chat_request(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model or model.isspace():  # empty once stripped
        raise bad_request(
            f"Invalid type for 'model': expected a non-empty string, got {_type_name(model)}.",
            "model",
            "invalid_type",
        )
    _validate_messages(body.get("messages"))
    _validate_optional_fields(body)


def _validate_optional_fields(body: dict[str, Any]) -> None:
    """Each optional field the body has, checked by its entry in _OPTIONAL_CHECKS (every check
    accepts null, so an absent field needs none)."""
    try:
        for name in body:  # a body carries few of them: its keys are the shorter list to walk
            check = _OPTIONAL_CHECKS.get(name)
            if check is not None:
                check(body)
        return
    except Exception:  # noqa: BLE001 - raised again below, from the check that reports it
        pass
    # Of two bad fields, the one reported must not depend on the body's key order: the
    # checks run again in the table's order, and the first one to fail raises.
    for check in _OPTIONAL_CHECKS.values():
        check(body)


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise bad_request("'messages' must contain at least one message.", "messages", "empty_array")
    for i, message in enumerate(messages):
        # The field's path ("messages[i]") is only formatted for an error.
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not _one_of(role, ROLES):
            raise _role_error(f"messages[{i}]", role)
        if not isinstance(message.get("content"), str):  # a string is the common case, and valid
            _validate_content(message, f"messages[{i}]", role)
        if role == "assistant" and not isinstance(message.get("tool_calls") or [], list):  # null is fine
            raise _type_error(f"messages[{i}].tool_calls", "an array", message["tool_calls"])
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            where = f"messages[{i}]"
            raise bad_request(
                f"Missing required parameter: '{where}.tool_call_id' (a string) for a tool message.",
                f"{where}.tool_call_id",
                "missing_required_parameter",
            )


def _role_error(where: str, role: Any) -> GatewayError:
    if role is None:
        return bad_request(f"Missing required parameter: '{where}.role'.", f"{where}.role", "missing_required_parameter")
    return bad_request(
        f"Invalid value for '{where}.role': {_short(role)}. Supported values are: "
        "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
        f"{where}.role",
        "invalid_value",
    )


def _validate_content(message: dict[str, Any], where: str, role: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        if role == "assistant" and "content" in message:
            return
        raise bad_request(
            f"Missing required parameter: '{where}.content'.", f"{where}.content", "missing_required_parameter"
        )
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _type_error(f"{where}.content", "a string or an array of content parts", content)
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _type_error(part_where, "an object", part)
        part_type = part.get("type")
        if not _one_of(part_type, CONTENT_PART_TYPES):
            raise bad_request(
                f"Invalid value for '{part_where}.type': {_short(part_type)}. Supported values are: "
                "'text', 'image_url', 'input_audio', 'file' and 'refusal'.",
                f"{part_where}.type",
                "invalid_value",
            )
        if part_type == "text" and not isinstance(part.get("text"), str):
            raise _type_error(f"{part_where}.text", "a string", part.get("text"))
        if part_type == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise _type_error(f"{part_where}.image_url.url", "a string", (image or {}).get("url") if isinstance(image, dict) else image)


def _validate_stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    if not body.get("stream"):
        raise bad_request(
            "'stream_options' is only allowed when 'stream' is true.", "stream_options", "invalid_value"
        )
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _type_error("stream_options.include_usage", "a boolean", include_usage)


def _validate_stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _type_error("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        raise bad_request("'stop' accepts at most 4 sequences.", "stop", "invalid_value")


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _type_error(where, "an object", tool)
        if tool.get("type", "function") == "function":
            function = tool.get("function")
            if not isinstance(function, dict):
                raise _type_error(f"{where}.function", "an object", function)
            _require_name(function, f"{where}.function")


def _require_name(declaration: dict[str, Any], where: str) -> None:
    """A function declaration (or choice) at `where` names its function."""
    if not isinstance(declaration.get("name"), str) or not declaration["name"]:
        raise bad_request(f"Missing required parameter: '{where}.name'.", f"{where}.name", "missing_required_parameter")


def _validate_functions(body: dict[str, Any]) -> None:
    """The legacy `functions`: an array of function declarations, each with a name."""
    functions = body.get("functions")
    if functions is None:
        return
    if not isinstance(functions, list):
        raise _type_error("functions", "an array", functions)
    for i, function in enumerate(functions):
        if not isinstance(function, dict):
            raise _type_error(f"functions[{i}]", "an object", function)
        _require_name(function, f"functions[{i}]")


def _validate_function_call(body: dict[str, Any]) -> None:
    """The legacy `function_call`: 'none', 'auto' or {"name": ...}."""
    call = body.get("function_call")
    if call is None:
        return
    if isinstance(call, str):
        if call not in ("none", "auto"):
            raise bad_request(
                f"Invalid value for 'function_call': {_short(call)}. Supported values are: 'none', 'auto' or an "
                "object naming a function.",
                "function_call",
                "invalid_value",
            )
        return
    if not isinstance(call, dict):
        raise _type_error("function_call", "a string or an object", call)
    _require_name(call, "function_call")


def _validate_tool_choice(body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE_MODES:
            raise bad_request(
                f"Invalid value for 'tool_choice': {_short(choice)}. Supported values are: 'none', 'auto', "
                "'required' or an object naming a function.",
                "tool_choice",
                "invalid_value",
            )
        return
    if not isinstance(choice, dict):
        raise _type_error("tool_choice", "a string or an object", choice)
    function = choice.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(
            "Missing required parameter: 'tool_choice.function.name'.",
            "tool_choice.function.name",
            "missing_required_parameter",
        )


def _validate_response_format(body: dict[str, Any]) -> None:
    response_format = body.get("response_format")
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise _type_error("response_format", "an object", response_format)
    kind = response_format.get("type")
    if not _one_of(kind, RESPONSE_FORMAT_TYPES):
        raise bad_request(
            f"Invalid value for 'response_format.type': {_short(kind)}. Supported values are: "
            "'text', 'json_object' and 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _type_error("response_format.json_schema", "an object", spec)
        if not isinstance(spec.get("name"), str):
            raise bad_request(
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )


def _int_field(name: str, *, minimum: int, maximum: int | None = None) -> Check:
    def check(body: dict[str, Any]) -> None:
        value = body.get(name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name, "an integer", value)
        if value < minimum:
            raise bad_request(
                f"Invalid value for '{name}': {value}. It must be at least {minimum}.", name, "invalid_value"
            )
        if maximum is not None and value > maximum:
            raise bad_request(
                f"Invalid value for '{name}': {value}. It must be at most {maximum}.", name, "invalid_value"
            )

    return check


def _number_field(name: str, low: float, high: float) -> Check:
    def check(body: dict[str, Any]) -> None:
        value = body.get(name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(name, "a number", value)
        if not low <= value <= high:
            raise bad_request(
                f"Invalid value for '{name}': {value}. It must be between {low:g} and {high:g}.",
                name,
                "invalid_value",
            )

    return check


def _typed_field(name: str, kind: type, expected: str) -> Check:
    """A field that, when present and not null, must be of `kind` (`expected` names it)."""
    def check(body: dict[str, Any]) -> None:
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise _type_error(name, expected, value)

    return check


def _one_of(value: Any, names: frozenset[str]) -> bool:
    # the type first: a list or an object as the value is not hashable, so not a set member
    return type(value) is str and value in names


def _type_error(name: str, expected: str, value: Any) -> GatewayError:
    return bad_request(
        f"Invalid type for '{name}': expected {expected}, got {_type_name(value)}.", name, "invalid_type"
    )


# The optional fields checked, in the order their problems are reported.
_OPTIONAL_CHECKS: dict[str, Check] = {
    "max_tokens": _int_field("max_tokens", minimum=1),
    "max_completion_tokens": _int_field("max_completion_tokens", minimum=1),
    "n": _int_field("n", minimum=1, maximum=128),
    "temperature": _number_field("temperature", 0.0, 2.0),
    "top_p": _number_field("top_p", 0.0, 1.0),
    "presence_penalty": _number_field("presence_penalty", -2.0, 2.0),
    "frequency_penalty": _number_field("frequency_penalty", -2.0, 2.0),
    "stream": _typed_field("stream", bool, "a boolean"),
    "stream_options": _validate_stream_options,
    "stop": _validate_stop,
    "tools": _validate_tools,
    "tool_choice": _validate_tool_choice,
    "functions": _validate_functions,
    "function_call": _validate_function_call,
    "response_format": _validate_response_format,
    "metadata": _typed_field("metadata", dict, "an object"),
    # read by the classifier (a batch tier makes the request batch); its values are the
    # provider's to judge, so only the type is checked
    "service_tier": _typed_field("service_tier", str, "a string"),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
