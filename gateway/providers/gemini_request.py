"""OpenAI chat request -> Gemini `generateContent` request body.

Choices where the two APIs differ:
- `system`/`developer` messages, wherever they sit, become `systemInstruction`, joined by
  a blank line. Assistant turns have role `model`; consecutive same-role turns merge.
- Gemini has no tool-call ids. Ids we hand out (see gemini_response.py) are derived from
  the answer, and a `tool` message is mapped back to its function by looking its
  `tool_call_id` up among the earlier assistant tool calls. Consecutive tool results
  become one user turn of `functionResponse` parts. A result that is a JSON object is
  sent as the response object; anything else is wrapped as `{"result": <text>}`.
- Gemini 3 attaches a `thoughtSignature` to function calls and requires it back on the
  next turn. A stateless gateway has nowhere to keep it, so it rides inside the tool-call
  id (`<id>__ts__<signature, base64url>`), which clients echo verbatim; it is unpacked here.
- Function parameters and json_schema go as JSON Schema (`parametersJsonSchema`,
  `responseJsonSchema`), not as Gemini's OpenAPI-subset `Schema`, so schemas pass unchanged.
- `tool_choice`: auto -> AUTO, none -> NONE, required -> ANY, a named function -> ANY with
  allowedFunctionNames. `n` -> candidateCount (only sent when > 1).
- Dropped, no Gemini equivalent: parallel_tool_calls, user, logit_bias, logprobs,
  top_logprobs, service_tier, store, modalities, audio, prediction, reasoning_effort,
  web_search_options, OpenAI `metadata`. `stream_options` is read by the stream translator.
"""

from __future__ import annotations

import mimetypes
from typing import Any, Mapping
from urllib.parse import urlparse

import orjson

from .translate import (
    ToolChoice,
    assistant_calls,
    assistant_texts,
    bad_request,
    choice_count,
    file_data_of,
    function_tools,
    image_url_of,
    max_output_tokens,
    messages_of,
    number,
    parse_data_url,
    response_format,
    stop_sequences,
    system_prompt,
    text_of,
    tool_choice,
)

SIGNATURE_MARK = "__ts__"
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


def gemini_body(body: Mapping[str, Any]) -> dict[str, Any]:
    messages = messages_of(body)
    out: dict[str, Any] = {"contents": _contents(messages)}
    system = system_prompt(messages)
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    tools = function_tools(body)
    if tools:
        declarations = []
        for tool in tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parametersJsonSchema"] = tool.parameters
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
        config = _calling_config(tool_choice(body), {tool.name for tool in tools})
        if config:
            out["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(body)
    if generation:
        out["generationConfig"] = generation
    return out


def split_signature(call_id: str) -> tuple[str, str | None]:
    """A tool-call id we issued -> (base id, thoughtSignature in standard base64 or None)."""
    base, mark, packed = call_id.partition(SIGNATURE_MARK)
    if not mark or not packed:
        return call_id, None
    standard = packed.replace("-", "+").replace("_", "/")
    return base, standard + "=" * (-len(standard) % 4)


def pack_signature(base_id: str, signature: Any) -> str:
    if not isinstance(signature, str) or not signature:
        return base_id
    return base_id + SIGNATURE_MARK + signature.replace("+", "-").replace("/", "_").rstrip("=")


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for openai_name, gemini_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = number(body, openai_name)
        if value is not None:
            config[gemini_name] = value
    for openai_name, gemini_name in (("top_k", "topK"), ("seed", "seed")):
        value = body.get(openai_name)
        if isinstance(value, int) and not isinstance(value, bool):
            config[gemini_name] = value
    limit = max_output_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stops = stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    n = choice_count(body)
    if n > 1:
        config["candidateCount"] = n
    fmt = response_format(body)
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.schema is not None:
            config["responseJsonSchema"] = fmt.schema
    return config


def _calling_config(choice: ToolChoice | None, names: set[str]) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode == "function":
        if choice.name not in names:
            raise bad_request(f"'tool_choice' names the function '{choice.name}', which is not in 'tools'.")
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _contents(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for index, message in enumerate(messages):
        role, where = message["role"], f"messages[{index}]"
        if role in ("system", "developer"):
            continue
        if role == "user":
            parts = _user_parts(message.get("content"), f"{where}.content")
        elif role == "assistant":
            role, parts = "model", _model_parts(message, where, call_names)
        elif role == "tool":
            role, parts = "user", [_function_response(message, where, call_names)]
        else:
            raise bad_request(f"{where}.role '{role}' is not supported (use system, developer, user, assistant or tool).")
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or an array of content parts.")
    parts = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{part_where}.text must be a string.")
            if part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            url = image_url_of(part, part_where)
            inline = parse_data_url(url, f"{part_where}.image_url.url")
            parts.append({"inlineData": {"mimeType": inline.media_type, "data": inline.data}} if inline else _file_data(url))
        elif kind == "file":
            inline = file_data_of(part, part_where)
            parts.append({"inlineData": {"mimeType": inline.media_type, "data": inline.data}})
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str) or audio.get("format") not in _AUDIO_TYPES:
                raise bad_request(f"{part_where}.input_audio needs base64 'data' and a 'format' of wav or mp3.")
            parts.append({"inlineData": {"mimeType": _AUDIO_TYPES[audio["format"]], "data": audio["data"]}})
        else:
            raise bad_request(f"{part_where}.type '{kind}' is not supported by Gemini (use text, image_url, file or input_audio).")
    return parts


def _file_data(url: str) -> dict[str, Any]:
    file_data = {"fileUri": url}
    guessed, _ = mimetypes.guess_type(urlparse(url).path)
    if guessed:
        file_data = {"mimeType": guessed, "fileUri": url}
    return {"fileData": file_data}


def _model_parts(message: Mapping[str, Any], where: str, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": text} for text in assistant_texts(message, where)]
    for call in assistant_calls(message, where):
        call_names[call.id] = call.name
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
        _, signature = split_signature(call.id)
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(message: Mapping[str, Any], where: str, call_names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        name = message.get("name")  # the legacy field some clients still send
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.tool_call_id {call_id!r} matches no tool call of an earlier assistant message.")
    text = text_of(message.get("content"), f"{where}.content")
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}
